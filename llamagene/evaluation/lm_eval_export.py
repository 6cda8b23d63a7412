"""build_sft's test rows as lm-evaluation-harness tasks, so lm-eval can score the same rows.

    names = export_lm_eval(run_dir / "build_sft" / "test.jsonl", task_types,
                           run_dir / "merge_vocab" / "tokenizer", Path("lm_eval_tasks"))

(``llamagene evaluate --export-lm-eval DIR``.) Then, with lm-eval 0.4.9 or newer installed
(``pip install lm-eval``; llamagene never imports it), run the command in ``DIR/README.md``::

    lm_eval --model hf --model_args pretrained=RUN_DIR/finetune/merged,max_length=N \\
        --include_path DIR --tasks llamagene --batch_size 8 --output_path DIR/results

**What is written.** One task per (llamagene task, template): binary and multiclass become
``multiple_choice`` tasks scored ``acc`` (and ``acc_norm``); multilabel, regression, token and
generation become ``generate_until`` (greedy, until EOS) scored ``exact_match``. A group per
llamagene task gathers its templates (size-weighted mean); the group ``llamagene`` gathers all.
The rows go to ``DIR/data/``; the task functions to ``DIR/llamagene_tasks.py``, self-contained
(it embeds :mod:`llamagene.alphabets`' letter maps) so the folder runs where only lm-eval is
installed. It loads the rows relative to itself (``custom_dataset``, lm-eval 0.4.9 on), so the
folder may move: lm-eval resolves a relative ``data_files`` against the working directory.

**Same ids as llamagene.** The context is ``BOS + mapped(prompt) + CUE``, the BOS written as
text (``<s>``): the tokenizer reads it as the BOS token, and lm-eval adds no second one (0.4.9.2
on it sees the BOS; before, it adds none unless ``add_bos_token`` is set: leave that unset). The
context already is the format: no ``--apply_chat_template``. A choice is the continuation
``" " + choice``; lm-eval encodes context and choice together and keeps the ids after the
context's, which are ``text_ids([choice])`` as no merge crosses that seam
(:func:`llamagene.prompt_format.seam_problem`). So ``acc`` is llamagene's choice scoring (sum of
the choice tokens' log-probabilities, no EOS; the best choice wins), as the tests check.

**Differences.** lm-eval cuts a request longer than ``max_length`` from the left, silently: the
export measures every request (context + longest choice, or context + ``max_gen_toks``) and
puts the longest in the command as ``max_length``, so nothing is cut if the model has that many
positions. For classification lm-eval gives accuracy only (llamagene adds MCC, F1, intervals);
``exact_match`` compares the trimmed generated text with the answer (llamagene parses numbers
and label sets first), generating at most the longest answer + 1 tokens. Conversation rows
(``messages``) have no single context: they are left out, and counted in the README.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llamagene.alphabets import LETTERS, encode_markup, model_code
from llamagene.errors import StageError
from llamagene.prompt_format import CUE, FORMAT_VERSION, PromptFormat

log = logging.getLogger("llamagene")

#: Bump when the exported files change meaning.
EXPORT_VERSION = 1
GROUP = "llamagene"
MODULE = "llamagene_tasks"
CHOICE_TYPES = frozenset({"binary", "multiclass"})
GENERATE_TYPES = frozenset({"multilabel", "regression", "token", "generation"})


@dataclass(frozen=True)
class _Row:
    line: int
    task: str
    template_id: str | None
    template_version: int | None
    doc: dict[str, Any]
    """The row as lm-eval reads it (a line of ``data/<task>.jsonl``)."""


@dataclass
class _Task:
    """One exported lm-eval task: the rows of one llamagene task and template."""

    name: str
    group: str
    task: str
    template_id: str | None
    task_type: str
    rows: list[_Row] = field(default_factory=list)
    max_gen_toks: int = 0
    longest: int = 0

    @property
    def choice(self) -> bool:
        return self.task_type in CHOICE_TYPES


def export_lm_eval(
    rows_path: Path, task_types: Mapping[str, str], tokenizer_dir: Path, out_dir: Path
) -> list[str]:
    """Write the rows of ``rows_path`` as lm-eval tasks into ``out_dir``; return the task names.

    ``out_dir`` is made, or replaced whole when it holds a previous export; the files are
    written to a temporary folder beside it first, so a failure leaves no half folder."""
    fmt = PromptFormat.from_dir(tokenizer_dir)
    rows, conversations = _read_rows(rows_path, task_types)
    tasks = _group_rows(rows, task_types, rows_path)
    _measure(tasks, fmt)
    bos, eos = (str(fmt.tokenizer.id_to_token(i)) for i in (fmt.bos_id, fmt.eos_id))
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / f"{MODULE}.py").is_file():
        raise StageError(f"{out_dir}: exists and is not an lm-eval export; choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write(tmp_dir, tasks, bos, eos)
        readme = _readme(tasks, rows_path, out_dir, conversations)
        (tmp_dir / "README.md").write_text(readme, encoding="utf-8")
        _replace(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    log.info("lm-eval export: %d tasks, %d rows in %s", len(tasks), len(rows), out_dir)
    return sorted(t.name for t in tasks)


def _read_rows(path: Path, task_types: Mapping[str, str]) -> tuple[list[_Row], int]:
    """The rows, each checked; and how many conversation rows were left out."""
    try:
        lines = path.read_text("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise StageError(f"{path}: cannot read the rows ({err})") from None
    rows: list[_Row] = []
    conversations = 0
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            if record.get("messages"):
                conversations += 1
                continue
            rows.append(_row(number, record, task_types))
        except (ValueError, KeyError, TypeError) as err:
            problem = f"no {err} key" if isinstance(err, KeyError) else str(err)
            raise StageError(f"{path}:{number}: {problem}") from None
    if not rows:
        raise StageError(f"{path}: no rows to export (an empty file, or only conversations)")
    return rows, conversations


def _row(line: int, record: Mapping[str, Any], task_types: Mapping[str, str]) -> _Row:
    task = str(record["task"])
    kind = task_types.get(task)
    if kind not in CHOICE_TYPES | GENERATE_TYPES:
        raise ValueError(f"task {task!r} has no known task type (got {kind!r})")
    prompt, answer, markup = str(record["prompt"]), str(record["answer"]), bool(record["markup"])
    choices, gold = record.get("choices"), None
    if kind in CHOICE_TYPES:
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"a {kind} task's row has no choices")
        choices = [str(c) for c in choices]
        if len(set(choices)) < len(choices):
            raise ValueError(f"the choices repeat ({choices})")
        if answer not in choices:
            raise ValueError(f"the answer {answer!r} is not among its choices {choices}")
        gold = choices.index(answer)
    else:
        choices = None
    if markup:  # the letters inside sequence spans must map (llamagene's own check)
        for text in (prompt, answer, *(choices or [])):
            encode_markup(text)
    template, version = record.get("template_id"), record.get("template_version")
    doc = {
        "task": task, "template_id": template, "index": record.get("index"),
        "copy": record.get("copy"), "line": line, "prompt": prompt, "answer": answer,
        "choices": choices, "markup": markup, "gold": gold,
    }  # fmt: skip
    return _Row(
        line, task, None if template is None else str(template),
        None if version is None else int(version), doc,
    )  # fmt: skip


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "x"


def _group_rows(rows: Sequence[_Row], task_types: Mapping[str, str], path: Path) -> list[_Task]:
    """The rows by (task, template); names are ``llamagene_<task>__<template>``."""
    tasks: dict[tuple[str, str | None], _Task] = {}
    for row in rows:
        key = (row.task, row.template_id)
        if key not in tasks:
            group = f"{GROUP}_{_safe(row.task)}"
            name = f"{group}__{_safe(row.template_id or 'plain')}"
            for other in tasks.values():
                if other.name == name or (other.group == group and other.task != row.task):
                    raise StageError(
                        f"{path}:{row.line}: task {row.task!r} template {row.template_id!r} and "
                        f"task {other.task!r} template {other.template_id!r} get the same "
                        "lm-eval name"
                    )
            tasks[key] = _Task(name, group, row.task, row.template_id, task_types[row.task])
        tasks[key].rows.append(row)
    return list(tasks.values())


def _measure(tasks: Sequence[_Task], fmt: PromptFormat) -> None:
    """Each task's ``max_gen_toks`` and its longest request in tokens (BOS included)."""
    for task in tasks:
        docs = [r.doc for r in task.rows]
        marks = [d["markup"] for d in docs]
        prompts = _lengths(fmt, [d["prompt"].strip() + CUE for d in docs], marks)
        if task.choice:
            choices = [(c, d["markup"]) for d in docs for c in d["choices"]]
            lengths = iter(_lengths(fmt, [c for c, _ in choices], [m for _, m in choices]))
            tails = [max(next(lengths) for _ in d["choices"]) for d in docs]
        else:
            answers = _lengths(fmt, [d["answer"].strip() for d in docs], marks)
            task.max_gen_toks = max(answers) + 1  # and its EOS
            tails = [task.max_gen_toks] * len(docs)
        task.longest = max(1 + p + t for p, t in zip(prompts, tails, strict=True))


def _lengths(fmt: PromptFormat, texts: Sequence[str], markup: Sequence[bool]) -> list[int]:
    """Each text's length in tokens (one tokenizer batch per markup kind)."""
    lengths = [0] * len(texts)
    for kind in (True, False):
        chosen = [i for i, m in enumerate(markup) if m is kind]
        ids = fmt.text_ids([texts[i] for i in chosen], kind) if chosen else []
        for i, one in zip(chosen, ids, strict=True):
            lengths[i] = len(one)
    return lengths


def _dump(path: Path, config: Mapping[str, Any], functions: Mapping[str, str] = {}) -> None:
    """A YAML file; ``functions`` (key -> function of the task module) as ``!function`` tags."""
    tags = "".join(f"{key}: !function {MODULE}.{name}\n" for key, name in functions.items())
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False) + tags, encoding="utf-8")


def _task_config(task: _Task, eos: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The task's YAML: plain values, and the keys that name task functions."""
    config: dict[str, Any] = {
        "task": task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": f"data/{task.name}.jsonl"}},
        "test_split": "test",
        "num_fewshot": 0,
    }
    functions = {"custom_dataset": "load_rows", "doc_to_text": "doc_to_text"}
    if task.choice:
        functions |= {"doc_to_choice": "doc_to_choice", "doc_to_target": "doc_to_gold"}
        config |= {
            "output_type": "multiple_choice",
            "target_delimiter": " ",
            "metric_list": [
                {"metric": m, "aggregation": "mean", "higher_is_better": True}
                for m in ("acc", "acc_norm")
            ],
        }
    else:
        functions |= {"doc_to_target": "doc_to_answer"}
        config |= {
            "output_type": "generate_until",
            "generation_kwargs": {
                "until": [eos], "do_sample": False, "max_gen_toks": task.max_gen_toks,
            },
            "metric_list": [{
                "metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                "regexes_to_ignore": [r"^\s+", r"\s+$"],
            }],
        }  # fmt: skip
    version = task.rows[0].template_version
    meta = {"version": version or 0, "llamagene_task": task.task, "template": task.template_id}
    return config | {"metadata": meta | {"prompt_format": FORMAT_VERSION}}, functions


def _write(tmp_dir: Path, tasks: Sequence[_Task], bos: str, eos: str) -> None:
    (tmp_dir / "data").mkdir()
    (tmp_dir / f"{MODULE}.py").write_text(_module_source(bos), encoding="utf-8")
    groups: dict[str, list[_Task]] = {}
    for task in tasks:
        groups.setdefault(task.group, []).append(task)
        lines = (json.dumps(r.doc, ensure_ascii=False) + "\n" for r in task.rows)
        (tmp_dir / "data" / f"{task.name}.jsonl").write_text("".join(lines), encoding="utf-8")
        _dump(tmp_dir / f"{task.name}.yaml", *_task_config(task, eos))
    for group, members in groups.items():
        metrics = ("acc", "acc_norm") if members[0].choice else ("exact_match",)
        _dump(tmp_dir / f"{group}.yaml", {
            "group": group,
            "task": [t.name for t in members],
            "aggregate_metric_list": [
                {"metric": m, "aggregation": "mean", "weight_by_size": True} for m in metrics
            ],
            "metadata": {"version": EXPORT_VERSION},
        })  # fmt: skip
    _dump(tmp_dir / f"{GROUP}.yaml", {
        "group": GROUP, "task": list(groups), "metadata": {"version": EXPORT_VERSION},
    })  # fmt: skip


def _readme(tasks: Sequence[_Task], rows_path: Path, out_dir: Path, conversations: int) -> str:
    longest = max(t.longest for t in tasks)
    table = "\n".join(
        f"| `{t.name}` | `{t.task}` | `{t.template_id or '-'}` | {t.task_type} | {len(t.rows)} | "
        f"{t.longest} |"
        for t in sorted(tasks, key=lambda t: t.name)
    )
    left_out = f" {conversations} conversation rows were left out." if conversations else ""
    here = out_dir.resolve()
    return f"""# llamagene rows as lm-evaluation-harness tasks

From `{rows_path}`: {sum(len(t.rows) for t in tasks)} rows, {len(tasks)} tasks, prompt format \
{FORMAT_VERSION}.{left_out}
Run with lm-eval 0.4.9 or newer (if this folder has moved, give `--include_path` its new path):

```
lm_eval --model hf \\
    --model_args pretrained=RUN_DIR/finetune/merged,max_length={longest} \\
    --include_path {here} --tasks {GROUP} \\
    --batch_size 8 --output_path {here}/results --log_samples
```

- `RUN_DIR/finetune/merged` is finetune's merged model (it holds the merged tokenizer).
- No `--apply_chat_template`, no `--num_fewshot`: each context already is llamagene's prompt
  format, BOS (as text) + prompt + cue. Leave `add_bos_token` unset.
- `max_length={longest}` is the longest request in tokens, so lm-eval cuts no context (it would
  cut from the left, silently); the model needs that many positions.
- `--tasks` also takes a group per llamagene task (`llamagene_<task>`), or a task below.

`acc` is llamagene's choice scoring (the choice whose tokens have the highest summed
log-probability wins). `exact_match` compares the greedy answer (until EOS, at most the longest
gold answer + 1 tokens) with the gold answer, spaces trimmed; llamagene parses numbers and label
sets first.

| lm-eval task | llamagene task | template | type | rows | longest request (tokens) |
|---|---|---|---|---|---|
{table}
"""


_MODULE_SOURCE = r"""# lm-eval task functions, written by llamagene (this file needs no llamagene).
# A context is BOS + prompt + cue, sequence letters in <dna>/<protein> spans mapped to the
# tokenizer's private-use alphabets (choices alike). The rows lie beside this file.
import re
from pathlib import Path

BOS = __BOS__
CUE = __CUE__
TABLES = __TABLES__  # kind -> {ord(letter): model character}
SPAN = re.compile(r"<(dna|protein)>(.*?)</\1>", re.DOTALL)
HERE = Path(__file__).resolve().parent


def mapped(text, markup=True):
    if not markup:
        return text
    return SPAN.sub(lambda m: f"<{m[1]}>{m[2].translate(TABLES[m[1]])}</{m[1]}>", text)


def doc_to_text(doc):
    return BOS + mapped(doc["prompt"].strip(), doc["markup"]) + CUE


def doc_to_choice(doc):
    return [mapped(choice, doc["markup"]) for choice in doc["choices"]]


def doc_to_gold(doc):
    return doc["gold"]


def doc_to_answer(doc):
    return doc["answer"].strip()


def load_rows(data_files, **_metadata):
    import datasets

    files = {split: str(HERE / path) for split, path in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
"""


def _module_source(bos: str) -> str:
    tables = {
        kind: {ord(c): model_code(kind, c) for c in letters} for kind, letters in LETTERS.items()
    }
    source = _MODULE_SOURCE.replace("__BOS__", ascii(bos)).replace("__CUE__", ascii(CUE))
    return source.replace("__TABLES__", ascii(tables))


def _replace(tmp_dir: Path, out_dir: Path) -> None:
    """Swap the new folder in; the old one (a previous export, or empty) goes after."""
    old = out_dir.with_name(f"{tmp_dir.name}.old")
    if out_dir.exists():
        out_dir.rename(old)
    tmp_dir.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
