"""Instruction rows -> token ids and labels, through the prompt format, ready for the worker.

    data = prepare_sft({"train": train_jsonl, "dev": dev_jsonl}, tokenizer_dir, out_dir,
                       max_tokens=4096, overflow="error")
    rows = open_sft(out_dir, "train")          # a torch dataset: {"input_ids", "labels"}

Every row of ``build_sft``'s ``train.jsonl`` / ``dev.jsonl`` is encoded by
:class:`~llamagene.prompt_format.PromptFormat` (a conversation's every assistant turn trained,
labels -100 elsewhere). A row longer than ``max_tokens`` (the model's context) stops the
preparation, naming how many rows and the longest, unless ``overflow: drop`` drops and counts
them; a row is never cut (a cut answer teaches the model to stop mid-answer). A split is
written as ``<split>.ids.bin`` (uint32 ids of all rows, back to back), ``<split>.trained.bin``
(uint8: 1 where the position is trained) and ``<split>.offsets.npy`` (int64 row starts), with
``sft_stats.json`` (rows, tokens, trained tokens, dropped); written to a temporary name and
renamed, so a killed preparation leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llamagene.errors import StageError
from llamagene.manifest import write_text_atomic
from llamagene.prompt_format import IGNORE, FormatError, PromptFormat, messages_of

if TYPE_CHECKING:
    import numpy as np

Overflow = Literal["error", "drop"]
#: Rows encoded per tokenizer batch.
_BATCH = 2048
STATS = "sft_stats.json"


def prepare_sft(
    splits: Mapping[str, Path],
    tokenizer_dir: Path,
    out_dir: Path,
    max_tokens: int,
    overflow: Overflow,
) -> dict[str, Any]:
    """Encode each split's JSON lines into ``out_dir``; returns the figures of ``sft_stats.json``.
    Nothing is done when ``out_dir`` already holds a finished preparation."""
    if (out_dir / STATS).is_file():
        stats: dict[str, Any] = json.loads((out_dir / STATS).read_text(encoding="utf-8"))
        return stats
    fmt = PromptFormat.from_dir(tokenizer_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stats = {"max_tokens": max_tokens, "overflow": overflow}
    try:
        for split, path in splits.items():
            stats[split] = _encode_split(fmt, path, split, tmp, max_tokens, overflow)
        write_text_atomic(tmp / STATS, json.dumps(stats, indent=2, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return stats


def _encode_split(
    fmt: PromptFormat, path: Path, split: str, out: Path, max_tokens: int, overflow: Overflow
) -> dict[str, Any]:
    import numpy as np

    rows = _read_rows(path)
    ids_parts: list[np.ndarray[Any, Any]] = []
    trained_parts: list[np.ndarray[Any, Any]] = []
    lengths: list[int] = []
    too_long: list[tuple[int, int]] = []  # (line, tokens)
    for start in range(0, len(rows), _BATCH):
        batch = rows[start : start + _BATCH]
        try:
            encoded = fmt.encode_many(
                [messages_of(r) for _, r in batch], [bool(r.get("markup", True)) for _, r in batch]
            )
        except (FormatError, KeyError, TypeError) as err:
            line = _first_bad_line(fmt, batch)
            raise StageError(f"{path}:{line}: cannot encode the row ({err})") from None
        for (line, _), row in zip(batch, encoded, strict=True):
            if len(row) > max_tokens:
                too_long.append((line, len(row)))
                continue
            ids_parts.append(np.asarray(row.input_ids, dtype=np.uint32))
            trained_parts.append(np.asarray([lab != IGNORE for lab in row.labels], dtype=np.uint8))
            lengths.append(len(row))
    if too_long and overflow == "error":
        line, longest = max(too_long, key=lambda t: t[1])
        raise StageError(
            f"{path}: {len(too_long)} of {len(rows)} {split} rows are longer than the model's "
            f"context of {max_tokens} tokens (the longest, line {line}, has {longest}); rows are "
            "never cut: set max_tokens higher, or overflow: drop to drop them (counted)"
        )
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.uint32)
    trained = np.concatenate(trained_parts) if trained_parts else np.zeros(0, dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])
    ids.tofile(out / f"{split}.ids.bin")
    trained.tofile(out / f"{split}.trained.bin")
    np.save(out / f"{split}.offsets.npy", offsets)
    return {
        "rows": len(lengths),
        "dropped_too_long": len(too_long),
        "tokens": int(offsets[-1]),
        "trained_tokens": int(trained.sum()),
        "longest": max(lengths, default=0),
        "mean_tokens": round(float(offsets[-1]) / len(lengths), 1) if lengths else 0.0,
    }


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StageError(f"{path} does not exist") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise StageError(f"{path}:{number}: not valid JSON") from None
        if not isinstance(row, dict):
            raise StageError(f"{path}:{number}: a row must be a JSON object")
        rows.append((number, row))
    return rows


def _first_bad_line(fmt: PromptFormat, batch: list[tuple[int, dict[str, Any]]]) -> int:
    for line, row in batch:
        try:
            fmt.encode(messages_of(row), bool(row.get("markup", True)))
        except (FormatError, KeyError, TypeError):
            return line
    return batch[0][0]


@dataclass
class SftRows:
    """A torch map-style dataset over one prepared split: ``{"input_ids", "labels"}`` of one
    row each (lists of ints; the collator makes the batch). Memory-mapped, opened lazily."""

    dir: Path
    split: str
    _arrays: tuple[Any, Any, Any] | None = field(default=None, init=False, repr=False)

    def _open(self) -> tuple[Any, Any, Any]:
        import numpy as np

        if self._arrays is None:
            self._arrays = (
                np.memmap(self.dir / f"{self.split}.ids.bin", dtype=np.uint32, mode="r")
                if (self.dir / f"{self.split}.ids.bin").stat().st_size
                else np.zeros(0, dtype=np.uint32),
                np.fromfile(self.dir / f"{self.split}.trained.bin", dtype=np.uint8),
                np.load(self.dir / f"{self.split}.offsets.npy"),
            )
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return len(self._open()[2]) - 1

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        ids, trained, offsets = self._open()
        if not 0 <= index < len(offsets) - 1:
            raise IndexError(f"row {index} out of range ({len(offsets) - 1} rows)")
        start, end = int(offsets[index]), int(offsets[index + 1])
        row = ids[start:end].astype("int64").tolist()
        labels = [t if keep else IGNORE for t, keep in zip(row, trained[start:end], strict=True)]
        return {"input_ids": row, "labels": labels}


def open_sft(data_dir: Path, split: str) -> SftRows:
    return SftRows(data_dir, split)
