"""LucaOne-style task folders: one or two sequences per row, DNA or protein per row.

A folder holds ``train``, ``dev`` and ``test`` CSV files, as ``<dir>/train.csv`` or as LucaOne
ships them, ``<dir>/train/train.csv``; ``train`` and ``test`` are required, ``dev`` may be
missing. Rows are single-sequence::

    seq_id,seq_type,seq,label

or pairs::

    seq_id_a,seq_id_b,seq_type_a,seq_type_b,seq_a,seq_b,label

``seq_type`` is ``prot``/``protein`` or ``gene``/``dna`` (any case) and is honoured row by row:
each sequence is checked against its own row's alphabet, and the row's ``seq_type`` field holds
the kind (``protein`` or ``dna``). :attr:`TaskInfo.sequence_fields` gives the first row's kinds;
for a folder that mixes kinds, read the row's ``seq_type``.

For classification, ``label.txt`` names the classes, one per line: line i (counting from 0)
names label ``i``. LucaOne's files start with a header line ``label``, which is skipped. The
CSV labels are the indexes; a multilabel cell is a list (``[0,3]``) or ``0;3``. A regression
label is a number. The task type is the caller's to give; token and generation are not LucaOne
task types here.

Template fields: single rows ``seq_id, seq_type, sequence, label``; pairs ``seq_id_a, seq_id_b,
sequence_a, sequence_b, seq_type_a, seq_type_b, label``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llamagene.alphabets import SequenceKind
from llamagene.sequences import open_text
from llamagene.tasks import (
    DEFAULT_METRICS,
    SPLITS,
    ClassInfo,
    Split,
    Task,
    TaskDataError,
    TaskInfo,
    TaskType,
    normalise_sequence,
    parse_label,
)
from llamagene.tasks.table import FileTask, RowConverter, iter_table

SINGLE_COLUMNS = ("seq_id", "seq_type", "seq", "label")
PAIR_COLUMNS = ("seq_id_a", "seq_id_b", "seq_type_a", "seq_type_b", "seq_a", "seq_b", "label")
SINGLE_FIELDS = ("seq_id", "seq_type", "sequence", "label")
PAIR_FIELDS = (
    "seq_id_a", "seq_id_b", "sequence_a", "sequence_b", "seq_type_a", "seq_type_b", "label"
)  # fmt: skip
#: ``seq_type`` values (any case) -> sequence kind.
_KINDS: dict[str, SequenceKind] = {
    "prot": "protein",
    "protein": "protein",
    "gene": "dna",
    "dna": "dna",
}
_CLASSIFICATION = ("binary", "multiclass", "multilabel")


def lucaone_split_files(dir: Path) -> dict[Split, Path]:
    """The split files that exist: ``<dir>/<split>.csv`` or ``<dir>/<split>/<split>.csv``."""
    found: dict[Split, Path] = {}
    for split in SPLITS:
        for path in (dir / f"{split}.csv", dir / split / f"{split}.csv"):
            if path.is_file():
                found[split] = path
                break
    return found


def lucaone_files(dir: Path, name: str) -> dict[str, Path]:
    """Split files and ``label.txt``, by ``lucaone/<name>/<part>`` (for the manifest)."""
    files = {f"lucaone/{name}/{s}": p for s, p in lucaone_split_files(dir).items()}
    if (dir / "label.txt").is_file():
        files[f"lucaone/{name}/label.txt"] = dir / "label.txt"
    return files


def load_lucaone(dir: Path, name: str, task_type: TaskType, metric: str | None = None) -> Task:
    """The task in ``dir`` as ``lucaone/<name>``; headers and first rows are checked now."""
    if task_type not in (*_CLASSIFICATION, "regression"):
        types = f"{', '.join(_CLASSIFICATION)} or regression"
        reason = f"task_type {task_type!r}: a LucaOne task is {types}"
        raise TaskDataError(str(dir), reason)
    if not dir.is_dir():
        raise TaskDataError(str(dir), "LucaOne task folder not found")
    split_files = lucaone_split_files(dir)
    missing = [s for s in ("train", "test") if s not in split_files]
    if missing:
        raise TaskDataError(
            str(dir),
            f"no {' or '.join(missing)} file: expected <split>.csv or <split>/<split>.csv for "
            "train and test (dev may be missing)",
        )
    pair, kinds = _layout(next(iter(split_files.values())))
    classes = _read_classes(dir / "label.txt", task_type) if task_type in _CLASSIFICATION else ()
    sequence_fields = ("sequence_a", "sequence_b") if pair else ("sequence",)
    info = TaskInfo(
        id=f"lucaone/{name}",
        task_type=task_type,
        description=f"LucaOne task {name} ({'sequence pairs' if pair else 'single sequences'})",
        fields=PAIR_FIELDS if pair else SINGLE_FIELDS,
        sequence_fields=dict(zip(sequence_fields, kinds, strict=True)),
        metric=metric or DEFAULT_METRICS[task_type],
        classes=classes,
        extra={"source": "lucaone", "dir": str(dir)},
    )
    if pair:
        task = FileTask(info, split_files, _pair_converter(info), PAIR_COLUMNS)
    else:
        task = FileTask(info, split_files, _converter(info), SINGLE_COLUMNS)
    task.check()
    return task


def _layout(path: Path) -> tuple[bool, list[SequenceKind]]:
    """Whether ``path`` holds pairs, and the kinds of its first row's sequences."""
    rows = iter_table(path, fmt="csv")
    try:
        line, row = next(rows, (0, {}))
    finally:
        rows.close()
    columns: tuple[str, ...]
    if {"seq_a", "seq_b"} <= row.keys():
        pair, columns = True, PAIR_COLUMNS
    elif "seq" in row:
        pair, columns = False, SINGLE_COLUMNS
    else:
        raise TaskDataError(
            str(path),
            f"not a LucaOne task file: expected columns {','.join(SINGLE_COLUMNS)} or "
            f"{','.join(PAIR_COLUMNS)}; found {', '.join(row) or 'no rows'}",
        )
    missing = [c for c in columns if c not in row]
    if missing:
        reason = f"missing column(s) {', '.join(missing)}; the header has: {', '.join(row)}"
        raise TaskDataError(f"{path}:1", reason)
    type_columns = ("seq_type_a", "seq_type_b") if pair else ("seq_type",)
    return pair, [_kind(row[c], f"{path}:{line}", c) for c in type_columns]


def _kind(value: str, where: str, column: str) -> SequenceKind:
    kind = _KINDS.get(value.strip().lower())
    if kind is None:
        reason = f"field '{column}': {value!r} is not a sequence type (prot, protein, gene or dna)"
        raise TaskDataError(where, reason)
    return kind


def _read_classes(path: Path, task_type: TaskType) -> tuple[ClassInfo, ...]:
    if not path.is_file():
        reason = "not found: a classification task names its classes there, one per line"
        raise TaskDataError(str(path), reason)
    with open_text(path) as f:
        lines = [(n, text.strip()) for n, text in enumerate(f, 1)]
    if lines and lines[0][1].lower() == "label":
        lines = lines[1:]  # LucaOne's header line
    while lines and not lines[-1][1]:
        lines.pop()
    blank = next((n for n, text in lines if not text), None)
    if blank is not None:
        raise TaskDataError(f"{path}:{blank}", "blank line among the class names")
    names = [text for _, text in lines]
    if len(names) < 2 or (task_type == "binary" and len(names) != 2):
        wanted = "2" if task_type == "binary" else "2 or more"
        raise TaskDataError(str(path), f"{len(names)} class names; a {task_type} task has {wanted}")
    return tuple(ClassInfo(str(i), n) for i, n in enumerate(names))


def _converter(info: TaskInfo) -> RowConverter:
    def convert(row: Mapping[str, Any], where: str) -> dict[str, Any]:
        kind = _kind(row["seq_type"], where, "seq_type")
        return {
            "seq_id": row["seq_id"],
            "seq_type": kind,
            "sequence": normalise_sequence(row["seq"], kind, where, "seq"),
            "label": parse_label(row["label"], info, where),
        }

    return convert


def _pair_converter(info: TaskInfo) -> RowConverter:
    def convert(row: Mapping[str, Any], where: str) -> dict[str, Any]:
        kind_a = _kind(row["seq_type_a"], where, "seq_type_a")
        kind_b = _kind(row["seq_type_b"], where, "seq_type_b")
        return {
            "seq_id_a": row["seq_id_a"],
            "seq_id_b": row["seq_id_b"],
            "sequence_a": normalise_sequence(row["seq_a"], kind_a, where, "seq_a"),
            "sequence_b": normalise_sequence(row["seq_b"], kind_b, where, "seq_b"),
            "seq_type_a": kind_a,
            "seq_type_b": kind_b,
            "label": parse_label(row["label"], info, where),
        }

    return convert
