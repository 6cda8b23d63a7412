"""Stage ``build_sft``: benchmark tasks -> instruction data, through editable prompt templates.

Reads   an instruction recipe (``data_recipes/sft_*.yaml``: tasks, templates, weights, caps,
        English share, length rule), the task files it names, the templates under
        ``templates_dir`` (``prompt_templates/``), and ``merge_vocab``'s tokenizer (lengths).
Writes  ``<run_dir>/build_sft/``:
          ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``   one row each: the rendered ``prompt``,
              the ``answer``, the ``choices`` (classification), ``task``, ``template_id``,
              ``template_version``, the row's ``fields`` and its length in ``tokens``
          ``summary.json``, ``summary.md``   rows per task, template and split; rows dropped
              (too long, or sharing a sequence with a test split) and trimmed
Run     ``llamagene run PIPELINE.yaml --only build_sft``

Each row gets one template, drawn by weight from a generator seeded by (seed, task, split,
row), so a row keeps its template when other tasks change. The answer is never cut: a row over
``length.max_tokens`` has its prompt sequences trimmed by the declared rule, or is dropped, and
both are counted. Training rows whose sequence appears in any test split, of any task, are
dropped. Every template file is an input of the stage: edit one, and ``llamagene status`` shows
``build_sft`` (and what follows it) as stale.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import multiprocessing
import os
import random
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from llamagene.config import InputPath, StrictModel
from llamagene.errors import ConfigError, LlamageneError, StageError
from llamagene.manifest import write_text_atomic
from llamagene.stages import StageContext

log = logging.getLogger("llamagene")


def _default_templates_dir() -> Path:
    from llamagene.templates import PROMPT_TEMPLATES_DIR

    return PROMPT_TEMPLATES_DIR


class BuildSftConfig(StrictModel):
    """Config of ``build_sft``."""

    recipe: InputPath
    """The instruction recipe (see ``llamagene/sft_recipe.py`` and ``data_recipes/README.md``)."""
    templates_dir: InputPath = Field(default_factory=_default_templates_dir)
    """Where the prompt templates live; default: the repository's ``prompt_templates/``."""
    workers: int = Field(0, ge=0)
    """Processes that render and count rows (one task split each at a time); 0 = one per CPU
    core, at most 8. The output does not depend on it."""


@dataclass
class SplitCounts:
    """What happened to the rows of one task's split."""

    rows_read: int = 0
    written: int = 0
    trimmed: int = 0
    dropped_too_long: int = 0
    dropped_test_overlap: int = 0
    reverse_complements: int = 0
    templates: Counter[str] = field(default_factory=Counter)


class BuildSft:
    name = "build_sft"
    upstream: tuple[str, ...] = ("merge_vocab",)

    def inputs(self, cfg: BuildSftConfig) -> dict[str, Path]:
        from llamagene.sft_recipe import load_sft_recipe
        from llamagene.tasks.registry import source_files

        named: dict[str, Path] = {"recipe": cfg.recipe}
        named.update(
            {f"templates/{p.relative_to(cfg.templates_dir)}": p for p in _template_files(cfg)}
        )
        try:
            recipe = load_sft_recipe(cfg.recipe)
        except ConfigError:
            return named  # check() reports it
        for i, entry in enumerate(recipe.tasks):
            named.update({f"tasks[{i}].{k}": p for k, p in source_files(entry.data).items()})
        named.update({f"english[{i}]": e.path for i, e in enumerate(recipe.english)})
        return named

    def check(self, cfg: BuildSftConfig) -> list[str]:
        from llamagene.sft_recipe import load_sft_recipe
        from llamagene.templates import TemplateError, load_templates

        problems: list[str] = []
        try:
            load_sft_recipe(cfg.recipe)
        except ConfigError as err:
            problems += [f"recipe ({err.source}): {p}" for p in err.problems]
        if not cfg.templates_dir.is_dir():
            problems.append(f"templates_dir: {cfg.templates_dir} is not a folder")
        else:
            try:
                load_templates(cfg.templates_dir)
            except TemplateError as err:
                problems.append(f"templates_dir: {err}")
        return problems

    def run(self, cfg: BuildSftConfig, ctx: StageContext) -> None:
        from llamagene.sft_recipe import load_sft_recipe
        from llamagene.tasks.registry import load_tasks
        from llamagene.templates import load_templates

        recipe = load_sft_recipe(cfg.recipe)
        templates = load_templates(cfg.templates_dir)
        tokenizer_dir = ctx.upstream("merge_vocab") / "tokenizer"
        loaded = [(entry, load_tasks([entry.data])) for entry in recipe.tasks]
        test_sequences = (
            _test_sequences([t for _, tasks in loaded for t in tasks])
            if recipe.dedupe_against_test
            else set()
        )
        jobs: list[_Job] = []
        for entry, tasks in loaded:
            for task in tasks:
                chosen = _choose_templates(task.info, templates, entry.templates)
                jobs += [_Job(entry, task, split, chosen) for split in task.splits()]
        shard_dir = ctx.out_dir / ".shards"
        shard_dir.mkdir()
        state = _WorkerState(recipe, tokenizer_dir, test_sequences, jobs, shard_dir)
        counts: dict[tuple[str, str], SplitCounts] = {}
        written = {"train": 0, "dev": 0, "test": 0}
        workers = min(cfg.workers or min(8, os.cpu_count() or 1), len(jobs))
        for job, tally in zip(jobs, _run_jobs(state, workers), strict=True):
            counts[(job.task.info.id, job.split)] = tally
            written[job.split] += tally.written
        english = _english_rows(recipe, _builder(state), written["train"])
        (shard_dir / "english.jsonl").write_text("".join(english), encoding="utf-8")
        written["train"] += len(english)
        shards = {name: [shard_dir / f"{i}.jsonl" for i, j in enumerate(jobs) if j.split == name]
                  for name in written}  # fmt: skip
        shards["train"].append(shard_dir / "english.jsonl")
        _write_shuffled(shards["train"], ctx.out_dir / "train.jsonl", recipe.seed)
        for name in ("dev", "test"):
            _concatenate(shards[name], ctx.out_dir / f"{name}.jsonl")
        shutil.rmtree(shard_dir)
        summary = _summary(counts, len(english), recipe)
        write_text_atomic(ctx.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        markdown = _markdown(summary)
        write_text_atomic(ctx.out_dir / "summary.md", markdown)
        print(markdown)
        ctx.report.update({f"{name}_rows": n for name, n in written.items()})
        ctx.report.update({k: summary["totals"][k] for k in ("trimmed", "dropped_too_long",
                                                              "dropped_test_overlap")})  # fmt: skip


@dataclass(frozen=True)
class _Job:
    """One task's split: rendered, counted and written by one worker."""

    entry: Any
    task: Any
    split: str
    templates: list[Any]


@dataclass
class _WorkerState:
    recipe: Any
    tokenizer_dir: Path
    test_sequences: set[bytes]
    jobs: list[_Job]
    shard_dir: Path
    builder: RowBuilder | None = None


#: Set in the parent before the pool forks, so workers inherit the loaded tasks unpickled.
_STATE: _WorkerState | None = None


def _builder(state: _WorkerState) -> RowBuilder:
    if state.builder is None:
        lengths = LengthChecker(state.tokenizer_dir, state.recipe.length.max_tokens)
        state.builder = RowBuilder(
            state.recipe.seed, state.recipe.length, lengths, state.test_sequences
        )
    return state.builder


def _run_job(index: int) -> SplitCounts:
    """Render one job's rows into ``<shard_dir>/<index>.jsonl``; return its counts."""
    assert _STATE is not None
    job = _STATE.jobs[index]
    tally = SplitCounts()
    rows = _builder(_STATE).rows(job.task, job.split, job.templates, job.entry, tally)
    try:
        with (_STATE.shard_dir / f"{index}.jsonl").open("w", encoding="utf-8") as out:
            out.writelines(rows)
    except LlamageneError as err:  # loader errors take extra init args and do not unpickle
        kind = StageError if isinstance(err, StageError) else LlamageneError
        raise kind(str(err)) from None
    return tally


def _write_shuffled(shards: Sequence[Path], out_path: Path, seed: int) -> None:
    """All lines of ``shards`` in a seeded random order, holding only line offsets in memory."""
    import mmap

    maps: dict[int, mmap.mmap] = {}
    refs: list[tuple[int, int, int]] = []
    with contextlib.ExitStack() as stack:
        for shard_no, shard in enumerate(shards):
            if shard.stat().st_size == 0:  # mmap refuses empty files
                continue
            handle = stack.enter_context(shard.open("rb"))
            data = stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
            maps[shard_no] = data
            start = 0
            while start < len(data):
                end = data.find(b"\n", start) + 1
                refs.append((shard_no, start, end))
                start = end
        random.Random(seed).shuffle(refs)
        with out_path.open("wb") as out:
            for shard_no, start, end in refs:
                out.write(maps[shard_no][start:end])


def _concatenate(shards: Sequence[Path], out_path: Path) -> None:
    with out_path.open("wb") as out:
        for shard in shards:
            with shard.open("rb") as handle:
                shutil.copyfileobj(handle, out)


def _run_jobs(state: _WorkerState, workers: int) -> Iterator[SplitCounts]:
    """The jobs' counts in job order, from ``workers`` forked processes (or this one)."""
    global _STATE
    _STATE = state
    try:
        if workers <= 1:
            yield from map(_run_job, range(len(state.jobs)))
            return
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            yield from pool.map(_run_job, range(len(state.jobs)))
    finally:
        _STATE = None


class LengthChecker:
    """Counts a row's tokens as the fine-tuning stage will see them: BOS + prompt + answer + EOS,
    prompt and answer encoded separately (so the loss mask is exact), markup mapped first.

    It counts by parts, exactly: no merged piece mixes a sequence alphabet with text (see
    :mod:`llamagene.alphabets`), so BPE never merges across the edge of a ``<dna>``/``<protein>``
    span and a text's token count is the sum of its parts' counts. Text parts (mostly the
    templates' fixed wording) are counted once and cached; sequences go through SentencePiece on
    the merged ``tokenizer.model``, twice as fast as the fast tokenizer on long sequences. The
    parts rule is checked against whole-text encoding on a sample of rows, and the stage falls
    back to whole-text counting if it ever disagrees."""

    #: A private-use character that is one token and merges with no text (a DNA "A").
    _SENTINEL = "\ue000"

    def __init__(self, tokenizer_dir: Path, max_tokens: int) -> None:
        import sentencepiece as spm
        from tokenizers import Tokenizer

        self.fast = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.slow = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
        self.max_tokens = max_tokens
        self._text: dict[tuple[str, bool], int] = {}
        self._calls = 0
        self.by_parts = True

    def count(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        texts = [t for pair in pairs for t in pair]
        counts = self._by_parts(texts) if self.by_parts else self._whole(texts)
        if self.by_parts and (self._calls == 0 or self._calls % 25 == 0):
            sample = texts[:64]
            if counts[: len(sample)] != self._whole(sample):
                log.warning("build_sft: counting by parts disagrees; counting whole texts")
                self.by_parts = False
                counts = self._whole(texts)
        self._calls += 1
        return [counts[2 * i] + counts[2 * i + 1] + 2 for i in range(len(pairs))]

    def _whole(self, texts: Sequence[str]) -> list[int]:
        from llamagene.alphabets import encode_markup

        encoded = self.fast.encode_batch_fast(
            [encode_markup(t) for t in texts], add_special_tokens=False
        )
        return [len(e) for e in encoded]

    def _by_parts(self, texts: Sequence[str]) -> list[int]:
        from llamagene.alphabets import split_markup, to_model_text

        parts = [split_markup(t) for t in texts]
        sequences = [to_model_text(seq, kind) for p in parts for kind, seq in p.sequences]
        seq_counts = iter(len(ids) - 1 for ids in self.slow.encode(sequences))  # minus the lone ▁
        counts = []
        for p in parts:
            n = sum(self._text_count(text, i == 0) for i, text in enumerate(p.texts))
            n += sum(next(seq_counts) for _ in p.sequences)
            counts.append(n)
        return counts

    def _text_count(self, text: str, at_start: bool) -> int:
        key = (text, at_start)
        if key not in self._text:
            if at_start:
                n = len(self.fast.encode(text, add_special_tokens=False)) if text else 0
            else:  # after a sequence: no dummy prefix; the sentinel stands in for the sequence
                n = len(self.fast.encode(self._SENTINEL + text, add_special_tokens=False)) - 2
            self._text[key] = n
        return self._text[key]


@dataclass
class RowBuilder:
    seed: int
    policy: Any  # LengthPolicy
    lengths: LengthChecker
    test_sequences: set[bytes]

    def rows(
        self, task: Any, split: str, templates: Sequence[Any], entry: Any, tally: SplitCounts
    ) -> Iterator[str]:
        """The JSONL lines of one task's split, with ``tally`` updated."""
        from llamagene.sequences import reverse_complement

        info = task.info
        if entry.reverse_complement and not info.strand_symmetric:
            raise StageError(
                f"task {info.id}: reverse_complement is on, but its labels depend on the strand "
                f"(strand_symmetric: false); turn it off for this task"
            )
        examples = list(task.examples(split))
        tally.rows_read = len(examples)
        picked = _subsample(examples, split, entry, self.seed, info.id)
        jobs: list[tuple[Any, str, dict[str, Any]]] = []
        for example, tag in picked:
            fields = dict(example.fields)
            if split == "train" and self.test_sequences and self._in_test(info, fields):
                tally.dropped_test_overlap += 1
                continue
            jobs.append((example, tag, fields))
            if split == "train" and entry.reverse_complement:
                rc = {k: reverse_complement(v) if info.sequence_fields.get(k) == "dna" else v
                      for k, v in fields.items()}  # fmt: skip
                jobs.append((example, f"{tag}rc", rc))
                tally.reverse_complements += 1
        for batch_start in range(0, len(jobs), 512):
            batch = jobs[batch_start : batch_start + 512]
            rendered = [self._render(templates, info, split, ex, tag, f) for ex, tag, f in batch]
            tokens = self.lengths.count([(r.prompt, r.answer) for _, r in rendered])
            for (example, tag, fields), (template, out), n in zip(
                batch, rendered, tokens, strict=True
            ):
                if n > self.lengths.max_tokens:
                    fitted = self._fit(template, info, fields)
                    if fitted is None:
                        tally.dropped_too_long += 1
                        continue
                    fields, out, n = fitted
                    tally.trimmed += 1
                tally.written += 1
                tally.templates[template.id] += 1
                yield _line(info.id, split, example.index, tag, template, out, fields, n)

    def _in_test(self, info: Any, fields: Mapping[str, Any]) -> bool:
        return any(_digest(str(fields[k])) in self.test_sequences for k in info.sequence_fields)

    def _render(
        self, templates: Sequence[Any], info: Any, split: str, example: Any, tag: str,
        fields: Mapping[str, Any],
    ) -> tuple[Any, Any]:  # fmt: skip
        from llamagene.templates import TemplateError, render

        rng = random.Random(f"{self.seed}/{info.id}/{split}/{example.index}/{tag}")
        template = rng.choices(templates, weights=[t.weight for t in templates])[0]
        try:
            return template, render(template, fields, where=example.where)
        except TemplateError as err:
            raise StageError(str(err)) from None

    def _fit(
        self, template: Any, info: Any, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], Any, int] | None:
        """Trim the prompt's longest sequence until the row fits (binary search on its kept
        length); None when the policy drops, or it would go below min_sequence_chars."""
        from llamagene.templates import answer_fields, render

        if self.policy.overflow == "drop":
            return None
        answer_vars = answer_fields(template)
        trimmable = [k for k in info.sequence_fields if k not in answer_vars and k in fields]
        if not trimmable:
            return None
        name = max(trimmable, key=lambda k: len(str(fields[k])))
        seq = str(fields[name])
        low, high, best = self.policy.min_sequence_chars, len(seq) - 1, None
        while low <= high:
            keep = (low + high) // 2
            trial = {**fields, name: _trim(seq, keep, self.policy.trim_from)}
            out = render(template, trial)
            n = self.lengths.count([(out.prompt, out.answer)])[0]
            if n <= self.lengths.max_tokens:
                best, low = (trial, out, n), keep + 1
            else:
                high = keep - 1
        return best


def _trim(seq: str, keep: int, trim_from: str) -> str:
    if trim_from == "end":
        return seq[:keep]
    if trim_from == "start":
        return seq[len(seq) - keep :]
    start = (len(seq) - keep) // 2
    return seq[start : start + keep]


def _subsample(
    examples: Sequence[Any], split: str, entry: Any, seed: int, task_id: str
) -> list[tuple[Any, str]]:
    """Rows to use, each with a tag (repeat number) that seeds its template draw."""
    rng = random.Random(f"{seed}/{task_id}/{split}/subsample")
    if split == "train":
        whole, part = divmod(entry.weight, 1.0)
        picked = [(ex, f"r{r}") for r in range(int(whole)) for ex in examples]
        extra = rng.sample(list(examples), round(part * len(examples)))
        picked += [(ex, f"r{int(whole)}") for ex in extra]
        cap = entry.max_train_examples
    else:
        picked = [(ex, "r0") for ex in examples]
        cap = entry.max_eval_examples
    if cap is not None and len(picked) > cap:
        picked = rng.sample(picked, cap)
        picked.sort(key=lambda p: (p[0].index, p[1]))
    return picked


def _test_sequences(tasks: Sequence[Any]) -> set[bytes]:
    seen: set[bytes] = set()
    for task in tasks:
        if "test" in task.splits():
            for example in task.examples("test"):
                seen.update(_digest(str(example.fields[k])) for k in task.info.sequence_fields)
    return seen


def _digest(sequence: str) -> bytes:
    return hashlib.blake2b(sequence.upper().encode(), digest_size=16).digest()


def _choose_templates(info: Any, templates: Sequence[Any], wanted: Any) -> list[Any]:
    from llamagene.templates import templates_for

    candidates = templates_for(info, templates)
    if wanted != "all":
        candidates = [t for t in candidates if any(fnmatch.fnmatch(t.id, w) for w in wanted)]
    if not candidates:
        raise StageError(
            f"task {info.id}: no prompt template matches "
            f"({'any' if wanted == 'all' else wanted}); write one with "
            f"`llamagene templates new {info.id} --type {info.task_type}`"
        )
    return candidates


def _english_rows(recipe: Any, builder: RowBuilder, task_rows: int) -> list[str]:
    from llamagene.tasks.instructions import load_instructions

    if recipe.english_share <= 0 or not recipe.english:
        return []
    wanted = round(recipe.english_share / (1 - recipe.english_share) * task_rows)
    pool = [ex for e in recipe.english for ex in load_instructions(e.path, e.format)]
    rng = random.Random(f"{recipe.seed}/english")
    chosen = rng.sample(pool, min(wanted, len(pool)))
    if len(chosen) < wanted:
        log.warning("build_sft: english: %d rows wanted, %d available", wanted, len(pool))
    tokens = builder.lengths.count([(ex.fields["prompt"], ex.fields["answer"]) for ex in chosen])
    lines = []
    for ex, n in zip(chosen, tokens, strict=True):
        if n > builder.lengths.max_tokens:
            continue
        record = {"task": ex.task, "split": "train", "index": ex.index,
                  "template_id": None, "template_version": None,
                  "prompt": ex.fields["prompt"], "answer": ex.fields["answer"],
                  "choices": None, "fields": {}, "tokens": n}  # fmt: skip
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return lines


def _line(
    task: str, split: str, index: int, tag: str, template: Any, out: Any,
    fields: Mapping[str, Any], tokens: int,
) -> str:  # fmt: skip
    record = {
        "task": task, "split": split, "index": index, "copy": tag,
        "template_id": template.id, "template_version": template.version,
        "prompt": out.prompt, "answer": out.answer, "choices": out.choices,
        "fields": dict(fields), "tokens": tokens,
    }  # fmt: skip
    return json.dumps(record, ensure_ascii=False) + "\n"


def _summary(
    counts: Mapping[tuple[str, str], SplitCounts], english: int, recipe: Any
) -> dict[str, Any]:
    per_task: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    for (task, split), c in sorted(counts.items()):
        entry = {k: v for k, v in vars(c).items() if k != "templates"}
        entry["templates"] = dict(sorted(c.templates.items()))
        per_task.setdefault(task, {})[split] = entry
        totals.update({k: v for k, v in entry.items() if isinstance(v, int)})
    totals["english_rows"] = english
    return {"max_tokens": recipe.length.max_tokens, "overflow": recipe.length.overflow,
            "tasks": per_task, "totals": dict(totals)}  # fmt: skip


def _markdown(summary: Mapping[str, Any]) -> str:
    lines = [
        f"# build_sft summary (max {summary['max_tokens']} tokens, overflow: "
        f"{summary['overflow']})", "",
        "| task | split | read | written | trimmed | too long | test overlap | templates |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for task, splits in summary["tasks"].items():
        for split, c in splits.items():
            used = ", ".join(f"{t.rsplit('/', 1)[-1]} {n}" for t, n in c["templates"].items())
            lines.append(
                f"| {task} | {split} | {c['rows_read']} | {c['written']} | {c['trimmed']} | "
                f"{c['dropped_too_long']} | {c['dropped_test_overlap']} | {used} |"
            )
    t = summary["totals"]
    lines += ["", f"English instruction rows (train): {t.get('english_rows', 0)}", ""]
    return "\n".join(lines)


def _template_files(cfg: BuildSftConfig) -> list[Path]:
    if not cfg.templates_dir.is_dir():
        return []
    return sorted(p for p in cfg.templates_dir.rglob("*.yaml") if p.is_file())


STAGE = BuildSft()
