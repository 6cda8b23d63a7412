"""Benchmark tasks as rows of named fields, with what their labels mean.

A *task* is one dataset with train/dev/test splits (``gue/prom/prom_300_all``,
``lucaone/<name>``, ``uniprot/function``, ``table/<name>``). Its :class:`TaskInfo` says what a
prompt template may use: the fields of every row (``sequence``, ``label``...), which fields are
DNA or protein, the task type, the classes with their real meanings, and the metric.
:class:`Example` is one row. The loaders live beside this module: :mod:`llamagene.tasks.gue`,
:mod:`.lucaone`, :mod:`.uniprot`, :mod:`.table`, :mod:`.instructions`; which tasks a recipe
loads is :mod:`.registry`. The checks every loader shares are here: :func:`normalise_sequence`
for sequences, :func:`parse_label` and :func:`token_label` for labels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from llamagene.alphabets import PROTEIN_LETTERS, SequenceKind
from llamagene.errors import LlamageneError

TaskType = Literal["binary", "multiclass", "multilabel", "regression", "token", "generation"]
TASK_TYPES: tuple[TaskType, ...] = (
    "binary", "multiclass", "multilabel", "regression", "token", "generation"
)  # fmt: skip
Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")


@dataclass(frozen=True)
class ClassInfo:
    """One class of a classification task: the label as written in the data, and its meaning."""

    label: str
    meaning: str


TrimKeep = Literal["centre", "start", "end", "position", "whole"]


@dataclass(frozen=True)
class Signal:
    """Where a task's signal lies in its sequences, so that trimming a row to fit keeps it.

    ``centre`` keeps the middle (a splice site, a ChIP-seq peak summit), ``start`` the beginning
    (a reading frame defined from the first base), ``end`` the end, ``position`` a window centred
    on the 0-based base ``position`` (GUE's prom_300 transcription start site, base 249 of 300),
    and ``whole`` forbids trimming (the answer depends on every residue: a translation).
    """

    keep: TrimKeep = "centre"
    position: int | None = None

    def window(self, length: int, kept: int) -> tuple[int, int]:
        """The ``[start, end)`` of the ``kept`` residues this rule keeps out of ``length``."""
        kept = max(0, min(kept, length))
        if self.keep == "start":
            start = 0
        elif self.keep == "end":
            start = length - kept
        elif self.keep == "position" and self.position is not None:
            start = min(max(self.position - kept // 2, 0), length - kept)
        else:
            start = (length - kept) // 2
        return start, start + kept


@dataclass(frozen=True)
class TaskInfo:
    """What a task is: its id, type, fields, classes and metric."""

    id: str
    """``<source>/<name>``, e.g. ``gue/splice/reconstructed``; template files name it."""
    task_type: TaskType
    description: str
    fields: tuple[str, ...]
    """Every field of a row, i.e. the variables a template may use."""
    sequence_fields: Mapping[str, SequenceKind]
    """Fields that hold DNA or protein (a subset of ``fields``)."""
    metric: str
    """The headline metric: ``mcc``, ``f1``, ``accuracy``, ``spearman``, ``exact_match``..."""
    classes: tuple[ClassInfo, ...] = ()
    """For binary / multiclass / multilabel tasks, in label order."""
    label_field: str = "label"
    answer_field: str | None = None
    """For generation tasks, the field that holds the answer text."""
    strand_symmetric: bool = False
    """True where the reverse complement of a DNA sequence has the same label (augmentable)."""
    signal: Signal = Signal()
    """Where the signal lies in the sequences: what trimming a too-long row keeps."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def class_labels(self) -> tuple[str, ...]:
        return tuple(c.label for c in self.classes)

    def to_json(self) -> dict[str, Any]:
        """What ``evaluate`` needs to know of the task (``build_sft`` writes it to tasks.json)."""
        return {
            "id": self.id, "task_type": self.task_type, "description": self.description,
            "fields": list(self.fields), "sequence_fields": dict(self.sequence_fields),
            "metric": self.metric, "classes": [[c.label, c.meaning] for c in self.classes],
            "label_field": self.label_field, "answer_field": self.answer_field,
            "strand_symmetric": self.strand_symmetric, "extra": dict(self.extra),
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskInfo:
        return cls(
            id=data["id"], task_type=data["task_type"], description=data["description"],
            fields=tuple(data["fields"]), sequence_fields=dict(data["sequence_fields"]),
            metric=data["metric"], classes=tuple(ClassInfo(a, b) for a, b in data["classes"]),
            label_field=data["label_field"], answer_field=data["answer_field"],
            strand_symmetric=data["strand_symmetric"], extra=dict(data["extra"]),
        )  # fmt: skip


@dataclass(frozen=True)
class Example:
    """One row of one split of a task; ``where`` names the file and line for error messages."""

    task: str
    split: Split
    index: int
    fields: Mapping[str, Any]
    where: str


class Task(Protocol):
    """A loaded task: its info and its rows, split by split."""

    info: TaskInfo

    def splits(self) -> tuple[Split, ...]:
        """The splits present (a missing split file is not an error; an empty one is)."""
        ...

    def examples(self, split: Split) -> Iterator[Example]:
        """The rows of ``split``, validated (bad rows raise TaskDataError naming file/line)."""
        ...

    def files(self) -> dict[str, Path]:
        """Every data file read, by a name, for the manifest to hash."""
        ...


class TaskDataError(LlamageneError):
    """A task file cannot be used: names the file, the line (or row) and what to fix."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


#: The headline metric of a task type when a loader or task file names none.
DEFAULT_METRICS: Mapping[TaskType, str] = {
    "binary": "mcc", "multiclass": "mcc", "multilabel": "f1_macro", "regression": "spearman",
    "token": "accuracy", "generation": "exact_match",
}  # fmt: skip

_IUPAC_TO_N = "RYKMSWBDHV"
_ALLOWED: dict[SequenceKind, dict[int, None]] = {
    "dna": dict.fromkeys(map(ord, "ACGTNU" + _IUPAC_TO_N + "acgtnu" + _IUPAC_TO_N.lower())),
    "protein": dict.fromkeys(map(ord, PROTEIN_LETTERS + PROTEIN_LETTERS.lower())),
}
#: Letters that need no change: a sequence made of these alone is returned as it is.
_CANONICAL: dict[SequenceKind, str] = {"dna": "ACGTN", "protein": PROTEIN_LETTERS}
_DNA_MAP = str.maketrans("U" + _IUPAC_TO_N, "T" + "N" * len(_IUPAC_TO_N))


def normalise_sequence(text: str, kind: SequenceKind, where: str, field_name: str) -> str:
    """A task's sequence, upper case and checked; raises :class:`TaskDataError` otherwise.

    The rules are the sequence reader's defaults (:class:`llamagene.sequences.SequencePolicy`):
    DNA is ACGTN, with U read as T and IUPAC ambiguity codes (RYKMSWBDHV) as N; protein is the 20
    standard residues, X and the rarer B Z J U O, and one final ``*`` (a stop) is dropped.
    Surrounding whitespace is ignored. The error names ``where`` (file:line), the field, the
    character and its 1-based position.
    """
    seq = text.strip()
    if kind == "protein" and seq.endswith("*"):
        seq = seq[:-1]
    if seq and not seq.strip(_CANONICAL[kind]):  # the common case, checked at C speed
        return seq
    if not seq:
        raise TaskDataError(where, f"field '{field_name}': empty {kind} sequence")
    leftover = seq.translate(_ALLOWED[kind])
    if leftover:
        bad = leftover[0]
        allowed = "ACGTN (U read as T, IUPAC codes as N)" if kind == "dna" else PROTEIN_LETTERS
        reason = (
            f"field '{field_name}': invalid character {bad!r} at position {seq.index(bad) + 1} "
            f"of a {kind} sequence; {kind} allows {allowed}"
        )
        raise TaskDataError(where, reason)
    seq = seq.upper()
    return seq.translate(_DNA_MAP) if kind == "dna" else seq


def parse_label(value: Any, info: TaskInfo, where: str, separator: str = ";") -> Any:
    """A data cell as the label of ``info``'s task type, checked against its classes.

    The value a row's label field holds: binary / multiclass, the class label as a str (JSON
    integers are accepted as their digits); multilabel, a tuple of class labels from a list, a
    JSON-style ``[0, 3]`` or ``0;3`` split on ``separator``; regression, a finite float.
    Token labels are checked by :func:`token_label`.
    """
    field = info.label_field
    if info.task_type == "regression":
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or isinstance(value, bool):
            raise TaskDataError(where, f"field '{field}': {value!r} is not a (finite) number")
        return number
    if info.task_type == "multilabel":
        return tuple(_class_label(v, info, where) for v in _split_multilabel(value, separator))
    return _class_label(value, info, where)


def token_label(value: Any, sequence: str, info: TaskInfo, where: str) -> str:
    """A per-residue label string: one character per residue, each a class if classes are set."""
    field = info.label_field
    if not isinstance(value, str):
        raise TaskDataError(where, f"field '{field}': expected a string, got {value!r}")
    label = value.strip()
    if len(label) != len(sequence):
        raise TaskDataError(
            where,
            f"field '{field}': {len(label)} characters for a sequence of {len(sequence)}; a "
            "token label needs exactly one character per residue",
        )
    allowed = info.class_labels()
    bad = next((c for c in label if allowed and c not in allowed), None)
    if bad is not None:
        raise TaskDataError(where, f"field '{field}': {bad!r} is not one of {', '.join(allowed)}")
    return label


def _class_label(value: Any, info: TaskInfo, where: str) -> str:
    label = value.strip() if isinstance(value, str) else value
    if isinstance(label, int) and not isinstance(label, bool):
        label = str(label)
    allowed = info.class_labels()
    if label not in allowed:
        raise TaskDataError(
            where,
            f"field '{info.label_field}': label {label!r} is not one of {info.id}'s labels "
            f"({', '.join(allowed)})",
        )
    return str(label)


def _split_multilabel(value: Any, separator: str) -> list[Any]:
    if isinstance(value, list):
        return value
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = text[1:-1].split(",")
        return parsed if isinstance(parsed, list) else [parsed]
    return [part for part in text.split(separator) if part.strip()]
