"""Tasks from CSV / TSV / JSONL files described by a small task YAML, and the table reading that
the GUE and LucaOne loaders share.

A task YAML (paths relative to it; ``.gz`` is fine; the format follows the suffix)::

    id: table/promoters               # optional; default table/<yaml stem>
    description: human promoters, 300 bp
    task_type: binary                 # binary multiclass multilabel regression token generation
    files: {train: train.csv, dev: dev.csv, test: test.tsv.gz}
    sequences: {seq: dna}             # column -> dna | protein; column names are the field names
    label: label                      # the label column (every type but generation), or
    answer: target                    # the answer column of a generation task
    classes: {"0": not a promoter, "1": promoter}   # label -> meaning, in label order
    multilabel_separator: ";"         # multilabel cells: "0;3" (or a JSON list, "[0, 3]")
    metric: mcc                       # default by task type: tasks.DEFAULT_METRICS
    strand_symmetric: false
    signal: centre                    # what trimming keeps: centre | start | end | whole,
                                      # or {position: 249} (a window centred on base 249)

Every column of the first split's file is a field of each row. A token task's label is one
character per residue of its (single) sequence column; a regression label is a number. Schema
problems raise :class:`~llamagene.errors.ConfigError` naming the YAML; data problems raise
:class:`~llamagene.tasks.TaskDataError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from llamagene.alphabets import SequenceKind
from llamagene.config import InputPath, StrictModel, format_validation_error, load_yaml
from llamagene.errors import ConfigError
from llamagene.sequences import open_text
from llamagene.tasks import (
    DEFAULT_METRICS,
    SPLITS,
    ClassInfo,
    Example,
    Signal,
    Split,
    TaskDataError,
    TaskInfo,
    TaskType,
    TrimKeep,
    normalise_sequence,
    parse_label,
    token_label,
)

TableFormat = Literal["csv", "tsv", "jsonl"]
_SUFFIXES: dict[str, TableFormat] = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl"}
_FIELD_LIMIT = 1 << 30  # csv's default 131,072 characters is shorter than many genes
#: ``(row, "file:line") -> fields``: checks one row and gives the fields of its Example.
RowConverter = Callable[[Mapping[str, Any], str], dict[str, Any]]


def table_format(path: Path) -> TableFormat | None:
    """``csv``, ``tsv`` or ``jsonl`` from the file name (``.gz`` ignored); None if unknown."""
    name = path.name.lower().removesuffix(".gz")
    return _SUFFIXES.get(name[name.rfind(".") :]) if "." in name else None


def iter_table(
    path: Path, required: Sequence[str] = (), fmt: TableFormat | None = None, quoted: bool = True
) -> Generator[tuple[int, dict[str, Any]], None, None]:
    """``(line, row)`` for every row of a CSV, TSV or JSONL file (plain or gzip), streamed.

    CSV/TSV need a header line; a JSONL line is one JSON object. ``required`` columns must be
    present (the error names the file and the columns it has); blank lines are skipped.
    ``quoted=False`` reads TSV without quote handling (UniProt's TSV is not quoted).
    """
    fmt = fmt or table_format(path)
    if fmt is None:
        reason = "unknown table format: name it .csv, .tsv or .jsonl (.gz ok)"
        raise TaskDataError(str(path), reason)
    if fmt == "jsonl":
        yield from iter_jsonl(path, required)
        return
    if csv.field_size_limit() < _FIELD_LIMIT:
        csv.field_size_limit(_FIELD_LIMIT)
    delimiter = "," if fmt == "csv" else "\t"
    with open_text(path) as f:
        if quoted:
            reader = csv.reader(f, delimiter=delimiter)
        else:
            reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE)
        try:
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise TaskDataError(str(path), "empty file: expected a header line of column names")
            header[0] = header[0].removeprefix("\ufeff")
            _check_columns(f"{path}:1", header, required, "the header has")
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    where = f"{path}:{reader.line_num}"
                    raise TaskDataError(where, f"{len(row)} fields, the header has {len(header)}")
                yield reader.line_num, dict(zip(header, row, strict=True))
        except csv.Error as err:
            where = f"{path}:{reader.line_num}"
            raise TaskDataError(where, f"malformed {fmt.upper()}: {err}") from None


def iter_jsonl(
    path: Path, required: Sequence[str] = ()
) -> Generator[tuple[int, dict[str, Any]], None, None]:
    """``(line, object)`` for every non-blank line of a JSON Lines file (plain or gzip)."""
    with open_text(path) as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            where = f"{path}:{line}"
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                reason = f"not valid JSON: {err.msg} at column {err.colno}"
                raise TaskDataError(where, reason) from None
            if not isinstance(row, dict):
                raise TaskDataError(where, f"expected a JSON object, found {type(row).__name__}")
            _check_columns(where, list(row), required, "this row has")
            yield line, row


def table_columns(path: Path, fmt: TableFormat | None = None) -> list[str]:
    """The header of a CSV/TSV file, or the keys of a JSONL file's first object."""
    rows = iter_table(path, fmt=fmt)
    try:
        first = next(rows, None)
    finally:
        rows.close()
    if first is None:
        raise TaskDataError(str(path), "no rows: the file has nothing after its header")
    return list(first[1])


def _check_columns(where: str, present: list[str], required: Sequence[str], has: str) -> None:
    if len(set(present)) != len(present):
        dupes = sorted({c for c in present if present.count(c) > 1})
        raise TaskDataError(where, f"duplicate column(s) {', '.join(dupes)}")
    missing = [c for c in required if c not in present]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise TaskDataError(where, f"missing column(s) {names}; {has}: {', '.join(present)}")


@dataclass
class FileTask:
    """A task whose splits are table files, one per split; ``convert`` checks each row."""

    info: TaskInfo
    split_files: Mapping[Split, Path]
    convert: RowConverter
    columns: tuple[str, ...] = ()
    """Columns every split file must have."""
    fmt: TableFormat | None = None

    def splits(self) -> tuple[Split, ...]:
        return tuple(s for s in SPLITS if s in self.split_files)

    def examples(self, split: Split) -> Generator[Example, None, None]:
        path = self.split_files.get(split)
        if path is None:
            have = ", ".join(self.splits())
            raise TaskDataError(self.info.id, f"no {split} split (this task has {have})")
        index = 0
        for line, row in iter_table(path, self.columns, self.fmt):
            where = f"{path}:{line}"
            yield Example(self.info.id, split, index, self.convert(row, where), where)
            index += 1
        if index == 0:
            raise TaskDataError(str(path), f"the {split} split is empty: no rows after the header")

    def files(self) -> dict[str, Path]:
        return {f"{self.info.id}/{s}": self.split_files[s] for s in self.splits()}

    def check(self) -> None:
        """Read the header and first row of every split: fail at load, not mid-build."""
        for split in self.splits():
            rows = self.examples(split)
            try:
                next(rows)
            finally:
                rows.close()


# --- the task YAML -------------------------------------------------------------------------------


class SignalSpec(StrictModel):
    """Where a task's signal lies (:class:`~llamagene.tasks.Signal`), as written in YAML:
    ``centre``, ``start``, ``end``, ``whole``, or ``{position: 249}``."""

    keep: TrimKeep = "centre"
    position: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"keep": value}
        if isinstance(value, dict) and "position" in value and "keep" not in value:
            return {"keep": "position", **value}
        return value

    @model_validator(mode="after")
    def _position(self) -> Self:
        if (self.keep == "position") != (self.position is not None):
            raise ValueError("give a position exactly when keep is 'position': {position: 249}")
        return self

    def signal(self) -> Signal:
        return Signal(self.keep, self.position)


def _string_keys(value: Any) -> Any:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class TableSpec(StrictModel):
    """A task YAML: what the files are and what their columns mean."""

    id: str | None = Field(default=None, min_length=1)
    description: str = ""
    task_type: TaskType
    files: dict[Split, InputPath] = Field(min_length=1)
    sequences: dict[str, SequenceKind] = Field(default_factory=dict)
    label: str | None = None
    answer: str | None = None
    classes: Annotated[dict[str, str], BeforeValidator(_string_keys)] = Field(default_factory=dict)
    multilabel_separator: str = Field(default=";", min_length=1)
    metric: str | None = None
    strand_symmetric: bool = False
    signal: SignalSpec = SignalSpec()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        t, n = self.task_type, len(self.classes)
        if t == "generation":
            if self.answer is None or self.label is not None:
                raise ValueError("a generation task names its answer column as 'answer', no label")
        elif self.label is None or self.answer is not None:
            raise ValueError(f"a {t} task names its label column as 'label' (no 'answer')")
        if t in ("binary", "multiclass", "multilabel") and (n < 2 or (t == "binary" and n != 2)):
            raise ValueError(f"a {t} task needs {'2' if t == 'binary' else '2 or more'} classes")
        if t in ("regression", "generation") and n:
            raise ValueError(f"a {t} task has no classes")
        if t == "token" and len(self.sequences) != 1:
            raise ValueError("a token task has exactly one sequence column (its labels follow it)")
        if self.strand_symmetric and "dna" not in self.sequences.values():
            raise ValueError("strand_symmetric needs a DNA sequence column")
        for split, path in self.files.items():
            if table_format(path) is None:
                raise ValueError(f"files.{split}: {path.name}: use .csv, .tsv or .jsonl (.gz ok)")
        return self


def load_table_spec(path: Path) -> TableSpec:
    """Read and validate a task YAML (no data is read)."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["a task file must be a mapping (id, task_type, files, ...)"])
    try:
        return TableSpec.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err, model=TableSpec)) from None


def load_table(path: Path) -> FileTask:
    """The task a YAML describes; its files' headers and first rows are checked now."""
    spec = load_table_spec(path)
    missing = [f"files.{s}: file not found: {p}" for s, p in spec.files.items() if not p.is_file()]
    if missing:
        raise ConfigError(str(path), missing)
    split_files = {s: spec.files[s] for s in SPLITS if s in spec.files}
    fields = tuple(table_columns(next(iter(split_files.values()))))
    info = TaskInfo(
        id=spec.id or f"table/{path.stem}",
        task_type=spec.task_type,
        description=spec.description,
        fields=fields,
        sequence_fields=dict(spec.sequences),
        metric=spec.metric or DEFAULT_METRICS[spec.task_type],
        classes=tuple(ClassInfo(k, v) for k, v in spec.classes.items()),
        label_field=spec.label or "label",
        answer_field=spec.answer,
        strand_symmetric=spec.strand_symmetric,
        signal=spec.signal.signal(),
        extra={"spec": str(path)},
    )
    columns = (*spec.sequences, spec.label or spec.answer or "")
    task = FileTask(info, split_files, _converter(spec, info), columns)
    task.check()
    return task


def table_files(path: Path) -> dict[str, Path]:
    """The task YAML and its data files, by name (for the manifest; no data is read)."""
    spec = load_table_spec(path)
    task_id = spec.id or f"table/{path.stem}"
    return {f"{task_id}/spec": path, **{f"{task_id}/{s}": p for s, p in spec.files.items()}}


def _converter(spec: TableSpec, info: TaskInfo) -> RowConverter:
    def convert(row: Mapping[str, Any], where: str) -> dict[str, Any]:
        fields = {name: row.get(name) for name in info.fields}
        for column, kind in spec.sequences.items():
            value = row[column]
            if not isinstance(value, str):
                raise TaskDataError(where, f"field '{column}': expected a sequence, got {value!r}")
            fields[column] = normalise_sequence(value, kind, where, column)
        if spec.answer is not None:
            answer = fields[spec.answer] = row[spec.answer]
            if not isinstance(answer, str) or not answer.strip():
                raise TaskDataError(where, f"field '{spec.answer}': empty or missing answer")
        elif spec.task_type == "token":
            sequence = str(fields[next(iter(spec.sequences))])
            fields[info.label_field] = token_label(row[info.label_field], sequence, info, where)
        else:
            value = row[info.label_field]
            fields[info.label_field] = parse_label(value, info, where, spec.multilabel_separator)
        return fields

    return convert
