"""build_sft's rows, read back for evaluation: per task, each row's gold answer in a scorable form.

    tasks = load_tasks_json(sft_dir / "tasks.json")
    test = read_split(sft_dir / "test.jsonl", tasks)        # task id -> EvalTask

A row's gold answer by task type (the class space is the task's, in its label order, so a
template whose choices are listed in another order still scores against the same labels):

- binary / multiclass: the class index of the row's label; ``choices`` are the template's answer
  texts and ``choice_classes`` the class each stands for;
- multilabel: the set of class indices of the label;
- regression: the answer as a number;
- token, generation: the answer text (``sequence`` tells whether it is a DNA / protein sequence,
  compared as letters, or free text).

Rows that cannot be scored honestly stop the stage with a one-line error naming the file and line:
a label outside the template's choices or the task's classes, a regression answer that is not a
number, a classification row without choices, an empty split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamagene.errors import StageError
from llamagene.tasks import TaskInfo

CHOICE_TYPES = ("binary", "multiclass")


@dataclass
class EvalRow:
    """One rendered row of the split being scored."""

    where: str
    """``file:line`` for messages."""
    index: int
    copy: str
    template: str
    prompt: str
    answer: str
    markup: bool
    fields: dict[str, Any]
    choices: list[str] | None = None
    choice_classes: list[int] | None = None
    gold: Any = None


@dataclass
class EvalTask:
    """The rows of one task in one split, with what the task is."""

    info: TaskInfo
    rows: list[EvalRow] = field(default_factory=list)
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``choice`` (binary, multiclass), ``multilabel``, ``regression``, ``token``,
        ``sequence`` (a generated DNA / protein sequence) or ``text``."""
        task_type = self.info.task_type
        if task_type in CHOICE_TYPES:
            return "choice"
        if task_type == "generation":
            answer = self.info.answer_field
            return "sequence" if answer in self.info.sequence_fields else "text"
        return task_type

    @property
    def n_classes(self) -> int:
        return len(self.info.classes)


def load_tasks_json(path: Path) -> dict[str, EvalTask]:
    """tasks.json of build_sft: task id -> an EvalTask without rows."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            task_id: EvalTask(TaskInfo.from_json(card), templates=dict(card["templates"]))
            for task_id, card in data.items()
        }
    except FileNotFoundError:
        raise StageError(
            f"{path}: missing; it is written by build_sft since evaluate was added: rerun build_sft"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StageError(f"{path}: not a build_sft tasks.json ({err!r})") from None


def read_split(path: Path, cards: Mapping[str, EvalTask]) -> dict[str, EvalTask]:
    """The benchmark rows of one split file (English rows have no task card and are skipped),
    with their gold answers checked; tasks keep the order of ``cards``."""
    from llamagene.evaluation.answers import parse_labels, parse_number
    from llamagene.templates import label_key

    tasks = {k: EvalTask(c.info, templates=c.templates) for k, c in cards.items()}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise StageError(f"{path}: cannot read the split ({err})") from None
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except ValueError as err:
            raise StageError(f"{where}: not a JSON row ({err})") from None
        task = tasks.get(raw.get("task"))
        if task is None or raw.get("template_id") is None:
            continue
        row = EvalRow(
            where=where, index=int(raw["index"]), copy=str(raw["copy"]),
            template=str(raw["template_id"]), prompt=str(raw["prompt"]),
            answer=str(raw["answer"]), markup=bool(raw["markup"]), fields=dict(raw["fields"]),
        )  # fmt: skip
        info = task.info
        if task.kind in ("choice", "multilabel"):
            labels = list(info.class_labels())
            row.choices, row.choice_classes = _choices(raw, task, labels, where)
            if task.kind == "choice":
                label = label_key(row.fields.get(info.label_field, ""))
                if label not in labels:
                    raise StageError(
                        f"{where}: label {label!r} of task {info.id} is not one of its classes "
                        f"({', '.join(labels)})"
                    )
                gold = labels.index(label)
                if row.answer not in row.choices or gold not in row.choice_classes:
                    raise StageError(
                        f"{where}: the answer {row.answer!r} (label {label}) is not among the "
                        f"template's choices ({' / '.join(row.choices)})"
                    )
                row.gold = gold
            else:
                parsed = parse_labels(row.answer, row.choices)
                if parsed is None:
                    raise StageError(f"{where}: the answer {row.answer!r} is not a list of choices")
                row.gold = frozenset(row.choice_classes[i] for i in parsed)
        elif task.kind == "regression":
            row.gold = parse_number(row.answer)
            if row.gold is None:
                raise StageError(f"{where}: the regression answer {row.answer!r} is not a number")
        else:
            row.gold = row.answer
        task.rows.append(row)
    return {k: t for k, t in tasks.items() if t.rows}


def _choices(
    raw: Mapping[str, Any], task: EvalTask, labels: list[str], where: str
) -> tuple[list[str], list[int]]:
    choices = raw.get("choices")
    if not choices:
        raise StageError(f"{where}: a {task.info.task_type} row without answer choices")
    declared = (task.templates.get(str(raw["template_id"])) or {}).get("choices")
    keys = list(declared) if declared else labels[: len(choices)]
    if len(keys) != len(choices) or any(k not in labels for k in keys):
        raise StageError(
            f"{where}: the template's choices ({', '.join(keys)}) are not classes of task "
            f"{task.info.id} ({', '.join(labels)})"
        )
    return [str(c) for c in choices], [labels.index(k) for k in keys]
