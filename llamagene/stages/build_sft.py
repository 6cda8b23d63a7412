"""Stage ``build_sft``: benchmark tasks -> instruction data, through editable prompt templates.

Reads   an instruction recipe (``data_recipes/sft_*.yaml``: tasks, templates, weights, caps,
        English share, length and leak rules; :mod:`llamagene.sft.recipe`), the task files it
        names, the prompt templates it uses (with their includes and ``templates.lock.json``),
        and ``merge_vocab``'s tokenizer (lengths).
Writes  ``<run_dir>/build_sft/``:
          ``train.jsonl``, ``dev.jsonl``, ``test.jsonl``   one row each: the rendered ``prompt``,
              the ``answer``, the ``choices`` (classification), ``task``, ``index`` and ``copy``,
              ``template_id``, ``template_version``, ``markup`` (whether ``<dna>`` spans are
              sequence markup: false for English rows), the row's ``fields``, its length in
              ``tokens`` and ``trimmed`` (per trimmed field: original length and span kept)
          ``summary.json``, ``summary.md``   rows per task, split and template; rows trimmed,
              dropped as too long, and dropped as leaks of a test sequence, by kind
          ``tasks.json``   each task's type, classes, sequence fields and headline metric, and
              the templates its rows were rendered with (what ``evaluate`` reads)
Run     ``llamagene run PIPELINE.yaml --only build_sft``

Test rows are written as the benchmark has them: never dropped for leaks, and never trimmed
unless the recipe says ``length.eval_overflow: trim`` (default: a dev or test row over
``max_tokens`` stops the build). Train and dev rows related to any test sequence of any task in
the recipe are dropped (:mod:`llamagene.sft.leaks`). How rows are picked, rendered, counted and
trimmed: :mod:`llamagene.sft.rows`. Before rendering, every template used must match its entry
in ``templates.lock.json``, so a version number always names one text; the templates used (and
their includes and the lock) are the stage's inputs, so editing one makes ``build_sft`` stale
and editing a template no recipe task uses does not.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import multiprocessing
import os
import random
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from llamagene import faults
from llamagene.config import InputPath, StrictModel
from llamagene.errors import ConfigError, LlamageneError, StageError
from llamagene.machine import usable_cpus
from llamagene.manifest import write_text_atomic
from llamagene.stages import StageContext

if TYPE_CHECKING:
    from llamagene.sft.leaks import LeakIndex
    from llamagene.sft.recipe import SftRecipe, TaskEntry
    from llamagene.sft.rows import RowBuilder, SplitCounts
    from llamagene.tasks import Split, Task, TaskInfo
    from llamagene.templates import PromptTemplate

log = logging.getLogger("llamagene")


def _default_templates_dir() -> Path:
    from llamagene.templates import shipped_templates_dir

    return shipped_templates_dir()


class BuildSftConfig(StrictModel):
    """Config of ``build_sft``."""

    recipe: InputPath
    """The instruction recipe (see ``llamagene/sft/recipe.py`` and ``data_recipes/README.md``)."""
    templates_dir: InputPath = Field(default_factory=_default_templates_dir)
    """Where the prompt templates live; default: the repository's ``prompt_templates/``."""
    workers: int = Field(0, ge=0)
    """Processes that render and count rows (one task split each at a time); 0 = one per CPU
    core, at most 8. The output does not depend on it."""


class BuildSft:
    name = "build_sft"

    def upstream(self, cfg: BuildSftConfig) -> tuple[str, ...]:
        return ("merge_vocab",)

    def inputs(self, cfg: BuildSftConfig) -> dict[str, Path]:
        from llamagene.sft.recipe import load_sft_recipe
        from llamagene.tasks.registry import source_files

        named: dict[str, Path] = {"recipe": cfg.recipe}
        try:
            recipe = load_sft_recipe(cfg.recipe)
        except ConfigError:
            return named  # check() reports it
        for i, entry in enumerate(recipe.tasks):
            named.update({f"tasks[{i}].{k}": p for k, p in source_files(entry.data).items()})
        named.update({f"english[{i}]": e.path for i, e in enumerate(recipe.english)})
        named.update({f"templates/{k}": p for k, p in _template_inputs(cfg, recipe).items()})
        return named

    def check(self, cfg: BuildSftConfig) -> list[str]:
        from llamagene.sft.recipe import load_sft_recipe
        from llamagene.templates import TemplateError, load_templates
        from llamagene.templates.lock import LOCK_NAME, check_locked

        problems: list[str] = []
        recipe = None
        try:
            recipe = load_sft_recipe(cfg.recipe)
        except ConfigError as err:
            problems += [f"recipe ({err.source}): {p}" for p in err.problems]
        if not cfg.templates_dir.is_dir():
            problems.append(f"templates_dir: {cfg.templates_dir} is not a folder")
            return problems
        try:
            load_templates(cfg.templates_dir)
            if recipe is not None:  # the templates the tasks use must match the lock
                check_locked(_used_templates(cfg, recipe), cfg.templates_dir / LOCK_NAME)
        except TemplateError as err:
            problems.append(f"templates_dir: {err}")
        except LlamageneError as err:
            problems.append(str(err))
        return problems

    def run(self, cfg: BuildSftConfig, ctx: StageContext) -> None:
        from llamagene.sft.lengths import TokenCounter
        from llamagene.sft.recipe import load_sft_recipe
        from llamagene.sft.rows import RowBuilder
        from llamagene.sft.summary import english_rows, markdown, summary
        from llamagene.tasks.registry import load_tasks
        from llamagene.templates import TemplateError, load_templates
        from llamagene.templates.lock import LOCK_NAME, check_locked

        recipe = load_sft_recipe(cfg.recipe)
        templates = load_templates(cfg.templates_dir)
        loaded = [(entry, load_tasks([entry.data])) for entry in recipe.tasks]
        jobs: list[_Job] = []
        for entry, tasks in loaded:
            for task in tasks:
                chosen = _choose_templates(task.info, templates, entry.templates)
                jobs += [_Job(entry, task, split, chosen) for split in task.splits()]
        used = {t.id: t for job in jobs for t in job.templates}
        try:
            check_locked(list(used.values()), cfg.templates_dir / LOCK_NAME)
        except TemplateError as err:
            raise StageError(str(err)) from None
        leaks = _leak_index(recipe, [t for _, tasks in loaded for t in tasks])
        counter = TokenCounter(ctx.upstream("merge_vocab") / "tokenizer")
        builder = RowBuilder(recipe.seed, recipe.length, counter, leaks, recipe.eval_templates)
        shard_dir = ctx.out_dir / ".shards"
        shard_dir.mkdir()
        state = _WorkerState(builder, jobs, shard_dir)
        counts: dict[tuple[str, str], SplitCounts] = {}
        written = {"train": 0, "dev": 0, "test": 0}
        workers = min(cfg.workers or min(8, usable_cpus()), len(jobs))
        for job, tally in zip(jobs, _run_jobs(state, workers), strict=True):
            counts[(job.task.info.id, job.split)] = tally
            written[job.split] += tally.written
        lines, english = english_rows(recipe, counter, written["train"])
        (shard_dir / "english.jsonl").write_text("".join(lines), encoding="utf-8")
        written["train"] += len(lines)
        shards = {name: [shard_dir / f"{i}.jsonl" for i, j in enumerate(jobs) if j.split == name]
                  for name in written}  # fmt: skip
        shards["train"].append(shard_dir / "english.jsonl")
        _write_shuffled(shards["train"], ctx.out_dir / "train.jsonl", recipe.seed)
        for name in ("dev", "test"):
            _concatenate(shards[name], ctx.out_dir / f"{name}.jsonl")
        shutil.rmtree(shard_dir)
        report = summary(counts, english, recipe)
        write_text_atomic(ctx.out_dir / "tasks.json", _tasks_json(jobs))
        write_text_atomic(ctx.out_dir / "summary.json", json.dumps(report, indent=2) + "\n")
        text = markdown(report)
        write_text_atomic(ctx.out_dir / "summary.md", text)
        print(text)
        ctx.report.update({f"{name}_rows": n for name, n in written.items()})
        totals = report["totals"]
        ctx.report.update({k: totals[k] for k in ("trimmed", "dropped_too_long", "dropped_leaks")})


def _tasks_json(jobs: Sequence[_Job]) -> str:
    """Each task's info and the templates it was rendered with, for ``evaluate``."""
    tasks: dict[str, dict[str, object]] = {}
    for job in jobs:
        info = job.task.info
        templates = {
            t.id: {"version": t.version, "task_type": t.task_type, "choices": t.answer_choices}
            for t in job.templates
        }
        tasks[info.id] = info.to_json() | {"templates": templates}
    return json.dumps(tasks, indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class _Job:
    """One task's split: rendered, counted and written by one worker."""

    entry: TaskEntry
    task: Task
    split: Split
    templates: list[PromptTemplate]


@dataclass
class _WorkerState:
    builder: RowBuilder
    jobs: list[_Job]
    shard_dir: Path


#: Set in the parent before the pool forks, so workers inherit the tasks and the leak index.
_STATE: _WorkerState | None = None


def _run_job(index: int) -> SplitCounts:
    """Render one job's rows into ``<shard_dir>/<index>.jsonl``; return its counts."""
    from llamagene.sft.rows import SplitCounts

    assert _STATE is not None
    faults.reached("build_sft.render")
    job = _STATE.jobs[index]
    tally = SplitCounts()
    rows = _STATE.builder.rows(job.task, job.split, job.templates, job.entry, tally)
    try:
        with (_STATE.shard_dir / f"{index}.jsonl").open("w", encoding="utf-8") as out:
            out.writelines(rows)
    except LlamageneError as err:  # loader errors take extra init args and do not unpickle
        kind = StageError if isinstance(err, StageError) else LlamageneError
        raise kind(str(err)) from None
    return tally


def _run_jobs(state: _WorkerState, workers: int) -> list[SplitCounts]:
    """The jobs' counts in job order, from ``workers`` forked processes (or this one). The
    biggest jobs start first, so one large split (GUE's covid training rows) does not run alone
    at the end while the other workers wait."""
    global _STATE
    _STATE = state
    try:
        if workers <= 1:
            return list(map(_run_job, range(len(state.jobs))))
        order = sorted(range(len(state.jobs)), key=lambda i: -_job_size(state.jobs[i]))
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            tallies = dict(zip(order, pool.map(_run_job, order), strict=True))
        return [tallies[i] for i in range(len(state.jobs))]
    finally:
        _STATE = None


def _job_size(job: _Job) -> int:
    """Bytes of the split's file (a guide to its cost; 0 when it is not one file)."""
    path = job.task.files().get(f"{job.task.info.id}/{job.split}")
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:
        return 0


def _leak_index(recipe: SftRecipe, tasks: Sequence[Task]) -> LeakIndex | None:
    """Every test sequence of every task, indexed for the leak check (None when it is off)."""
    from llamagene.sft.leaks import LeakIndex

    rule = recipe.leak_check
    if not rule.enabled:
        return None
    index = LeakIndex({"dna": rule.min_overlap_bp, "protein": rule.min_overlap_aa})
    for task in tasks:
        if "test" not in task.splits():
            continue
        for example in task.examples("test"):
            for name, kind in task.info.sequence_fields.items():
                value = example.fields.get(name)
                if isinstance(value, str):
                    index.add(kind, value)
    index.freeze()
    return index


def _write_shuffled(shards: Sequence[Path], out_path: Path, seed: int) -> None:
    """All lines of ``shards`` in a seeded random order, holding only line offsets in memory
    (lines are read back with ``pread``, so the shards never sit in this process's memory)."""
    refs: list[tuple[int, int, int]] = []
    with contextlib.ExitStack() as stack:
        handles = [stack.enter_context(shard.open("rb")) for shard in shards]
        for shard_no, handle in enumerate(handles):
            start = 0
            for line in handle:
                refs.append((shard_no, start, len(line)))
                start += len(line)
        random.Random(seed).shuffle(refs)
        with out_path.open("wb") as out:
            for shard_no, start, size in refs:
                out.write(os.pread(handles[shard_no].fileno(), size, start))


def _concatenate(shards: Sequence[Path], out_path: Path) -> None:
    with out_path.open("wb") as out:
        for shard in shards:
            with shard.open("rb") as handle:
                shutil.copyfileobj(handle, out)


def _choose_templates(
    info: TaskInfo, templates: Sequence[PromptTemplate], wanted: Sequence[str] | str
) -> list[PromptTemplate]:
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


def _used_templates(cfg: BuildSftConfig, recipe: SftRecipe) -> list[PromptTemplate]:
    """The templates the recipe's tasks use (reads the tasks' headers, not their rows)."""
    from llamagene.tasks.registry import load_tasks
    from llamagene.templates import load_templates

    templates = load_templates(cfg.templates_dir)
    used: dict[str, PromptTemplate] = {}
    for entry in recipe.tasks:
        for task in load_tasks([entry.data]):
            for tpl in _choose_templates(task.info, templates, entry.templates):
                used.setdefault(tpl.id, tpl)
    return list(used.values())


def _template_inputs(cfg: BuildSftConfig, recipe: SftRecipe) -> dict[str, Path]:
    """The template files the recipe's tasks use (with includes) and the lock, by their path
    under ``templates_dir``; every template file when the tasks cannot be read yet (the run
    reports why)."""
    from llamagene.templates.lock import LOCK_NAME

    root = cfg.templates_dir
    if not root.is_dir():
        return {}
    try:
        files = {root / LOCK_NAME, *(f for t in _used_templates(cfg, recipe) for f in t.files)}
    except (LlamageneError, OSError):
        files = {p for p in root.rglob("*") if p.suffix == ".yaml" or p.name == LOCK_NAME}
    return {
        p.resolve().relative_to(root.resolve()).as_posix(): p for p in sorted(files) if p.is_file()
    }


STAGE = BuildSft()
