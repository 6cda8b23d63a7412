"""A pretraining corpus's documents: each source of a data recipe read, tokenized and split.

Reads   one source's files (FASTA, text or JSONL; plain or gzip; UTF-8) and a merged tokenizer
        folder: :func:`read_source`, for :mod:`llamagene.training.corpus` to mix and pack.
Writes  ``<work>/<source>.tokens`` (every document's token ids back to back, uint32) and
        ``<work>/<source>.counts.json``, which the corpus build removes once packed, and
        ``datasets`` Arrow files in ``<work>/hf-<source>/`` meanwhile (removed after).

1. Documents: a text paragraph (lines up to a blank line), a JSONL line's ``text_field``, or a
   window of at most ``window_chars`` residues of a FASTA record (:func:`iter_windows`).
   Sequences are mapped to the tokenizer's private-use alphabet (:func:`to_model_text`) and the
   lone dummy-prefix token ``▁`` SentencePiece puts before them is dropped, so every document is
   ``[bos] tokens [eos]``. Tokenization runs through ``datasets`` (``map``, ``num_proc``).
   Files are read as UTF-8, gzip or not; an error names the file and line (:class:`CorpusError`).
2. Validation split, per record, before mixing: a record (a FASTA record with all its windows,
   a text paragraph, a JSONL line) is held out when a hash of (seed, source name, record index)
   falls under ``validation_fraction``, so the split is the same on every run and resume
   (:func:`split_validation`), and neighbouring windows of one sequence never land in both
   splits. A source of one record (one contig) has no validation documents. The validation set
   is never mixed or repeated.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import itertools
import json
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamagene import faults
from llamagene.alphabets import to_model_text
from llamagene.errors import LlamageneError, StageError
from llamagene.sequences import SequencePolicy, SequenceStats, iter_windows
from llamagene.training.data_recipe import DataRecipe, SourceConfig

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class CorpusError(StageError):
    """An input of the corpus cannot be used; the message names the file and line."""


# ---- 1. documents -----------------------------------------------------------------------------


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a plain or gzip UTF-8 file; errors name the file and line."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    lineno = 0
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield lineno, raw.decode("utf-8").removeprefix("\ufeff").rstrip("\r\n")
                except UnicodeDecodeError as err:
                    raise CorpusError(
                        f"{path}:{lineno}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at "
                        f"column {err.start + 1}); convert the file to UTF-8"
                    ) from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CorpusError(f"{path}:{lineno + 1}: truncated or corrupt gzip ({err})") from None


def _paragraphs(path: Path) -> Iterator[tuple[str, str]]:
    lines: list[str] = []
    start = 0
    for lineno, line in itertools.chain(_read_lines(path), [(0, "")]):  # "" ends the last one
        if line.strip():
            start = start if lines else lineno
            lines.append(line)
        elif lines:
            yield "\n".join(lines), f"{path}:{start}"
            lines = []


def _jsonl(path: Path, field: str) -> Iterator[tuple[str, str]]:
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        value = row.get(field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise CorpusError(f"{path}:{lineno}: no string field '{field}' (found: {keys})")
        yield value, f"{path}:{lineno}"


def _documents(source_json: str, stats_path: str) -> Iterator[dict[str, Any]]:
    """A source's documents as rows (run by ``Dataset.from_generator``); counts to stats_path."""
    source = SourceConfig.model_validate(json.loads(source_json))
    files, seq = source.files(), SequenceStats()
    counts: dict[str, Any] = {
        "documents": 0,
        "chars": 0,
        "dropped_short": 0,
        "max_chars_reached": False,
        "stopped_at": None,
        "unread_files": 0,
    }
    records = 0  # records of earlier files: a record number is unique in the source
    for i, path in enumerate(files):
        if source.kind in ("dna", "protein"):
            policy = SequencePolicy(
                source.kind, source.iupac, source.n_run_min_length, source.protein_ambiguous,
                protein_hint=f"set kind: protein for source '{source.name}'",
            )  # fmt: skip
            windows = iter_windows(path, policy, source.window_chars, source.min_doc_chars, seq)
            docs: Iterator[tuple[str, str, str]] = (
                (w.text, f"{w.path}:{w.line}", w.record_id) for w in windows
            )
        else:
            texts = _paragraphs(path) if source.kind == "text" else _jsonl(path, source.text_field)
            docs = ((text, where, where) for text, where in texts)  # each its own record
        record, last = -1, None
        for text, where, record_key in docs:
            if record_key != last:
                record, last = record + 1, record_key
            if len(text) < source.min_doc_chars:
                counts["dropped_short"] += 1
            elif source.max_chars is not None and counts["chars"] >= source.max_chars:
                counts.update(
                    max_chars_reached=True, stopped_at=where, unread_files=len(files) - i - 1
                )
                break
            else:
                counts["documents"] += 1
                counts["chars"] += len(text)
                yield {"text": text, "record": records + record}
        records += record + 1
        if counts["max_chars_reached"]:
            break
    counts["dropped_short"] += seq.dropped_short
    if not counts["documents"]:
        raise CorpusError(
            f"source '{source.name}': no documents in {', '.join(map(str, files))} "
            f"({counts['dropped_short']} shorter than min_doc_chars={source.min_doc_chars})"
        )
    Path(stats_path).write_text(json.dumps(counts), encoding="utf-8")


@functools.cache
def load_tokenizer(tokenizer_dir: str, version: str) -> Any:
    """The tokenizer of a folder; ``version`` (its files' hashes) keeps a rewritten one fresh."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _tokenize(
    batch: dict[str, list[str]], tokenizer_dir: str, version: str, kind: str
) -> dict[str, Any]:
    faults.reached("corpus.tokenize")
    tok = load_tokenizer(tokenizer_dir, version)
    texts = batch["text"]
    if kind in ("dna", "protein"):
        texts = [to_model_text(t, "dna" if kind == "dna" else "protein") for t in texts]
    dummy = tok.convert_tokens_to_ids("▁") if kind in ("dna", "protein") else None
    dummy = dummy if dummy is not None and tok.convert_ids_to_tokens(dummy) == "▁" else None
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    return {"input_ids": [[bos, *(x[1:] if x and x[0] == dummy else x), eos] for x in ids]}


def _tokenize_source(
    source: SourceConfig, tokenizer_dir: Path, version: str, work: Path, num_proc: int
) -> tuple[dict[str, Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Read and tokenize one source into ``work/<name>.tokens``: (counts, document offsets,
    each document's record number)."""
    import datasets
    import numpy as np

    hf_dir, stats_path = work / f"hf-{source.name}", work / f"{source.name}.counts.json"
    kwargs = {
        "source_json": source.model_dump_json(exclude_unset=True),
        "stats_path": str(stats_path),
    }
    try:
        ds = datasets.Dataset.from_generator(
            _documents,
            features=datasets.Features(
                {"text": datasets.Value("string"), "record": datasets.Value("int64")}
            ),
            gen_kwargs=kwargs,
            cache_dir=str(hf_dir),
            fingerprint=f"docs-{source.name}",
        )
    except datasets.exceptions.DatasetGenerationError as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, LlamageneError):
            cause = cause.__cause__ or cause.__context__
        raise (cause or err) from None
    counts = json.loads(stats_path.read_text(encoding="utf-8"))
    ds = ds.map(
        _tokenize,
        batched=True,
        num_proc=min(num_proc, len(ds)) if num_proc > 1 and len(ds) > 1 else None,
        remove_columns=["text"],
        cache_file_name=str(hf_dir / "tokens.arrow"),
        fn_kwargs={"tokenizer_dir": str(tokenizer_dir), "version": version, "kind": source.kind},
        features=datasets.Features(
            {
                "input_ids": datasets.List(datasets.Value("uint32")),
                "record": datasets.Value("int64"),
            }
        ),
        new_fingerprint=f"tok-{source.name}",
        desc=f"corpus: tokenizing {source.name}",
    )
    lengths, records = [], []
    with open(work / f"{source.name}.tokens", "wb") as out:
        for table in ds.with_format("arrow").iter(batch_size=10_000):
            column = table.column("input_ids").combine_chunks()
            out.write(column.flatten().to_numpy().astype(np.uint32).tobytes())
            lengths.append(column.value_lengths().to_numpy())
            records.append(table.column("record").to_numpy())
    del ds
    shutil.rmtree(hf_dir, ignore_errors=True)
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    return counts, offsets, np.concatenate(records).astype(np.int64)


# ---- 2. validation split ----------------------------------------------------------------------


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` (by their repr): the same in every process and run."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def split_validation(
    n: int, seed: int, name: str, fraction: float, min_docs: int
) -> npt.NDArray[np.bool_]:
    """Which of ``n`` records are held out: by a hash of (seed, name, index), no RNG state."""
    import numpy as np

    offset = np.uint64(stable_seed(seed, name))
    x = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + offset
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    draw = (x ^ (x >> np.uint64(31))) >> np.uint64(11)
    k = int((draw < np.uint64(fraction * 2**53)).sum())
    k = min(max(k, min_docs if n >= 2 else 0), max(n - 1, 0))  # keep one to train on
    valid = np.zeros(n, dtype=bool)
    valid[np.argsort(draw, kind="stable")[:k]] = True
    return valid


# ---- a source: its documents, tokenized and split ---------------------------------------------


@dataclass(frozen=True)
class SourceDocuments:
    """One source's documents: document ``i`` is ``tokens[offsets[i] : offsets[i + 1]]``;
    ``train`` and ``valid`` hold document indices; ``stats`` is its part of stats.json."""

    name: str
    tokens: npt.NDArray[np.uint32]
    offsets: npt.NDArray[np.int64]
    train: npt.NDArray[np.int64]
    valid: npt.NDArray[np.int64]
    stats: dict[str, Any]
    record: npt.NDArray[np.int64]
    """Each document's record number (the split keeps records whole)."""


def read_source(
    source: SourceConfig,
    recipe: DataRecipe,
    tokenizer_dir: Path,
    version: str,
    work: Path,
    num_proc: int,
) -> SourceDocuments:
    """Read, tokenize (into ``work/<name>.tokens``) and split one source of ``recipe``."""
    import numpy as np

    counts, offsets, records = _tokenize_source(source, tokenizer_dir, version, work, num_proc)
    tokens = np.memmap(work / f"{source.name}.tokens", np.uint32, "r")
    lengths = np.diff(offsets)
    # whole records are held out: the windows of one FASTA record never straddle the split
    numbers, record_of = np.unique(records, return_inverse=True)
    held_out = split_validation(
        len(numbers), recipe.seed, source.name,
        recipe.validation_fraction, recipe.min_validation_documents,
    )  # fmt: skip
    valid = held_out[record_of]
    stats = {
        **counts,
        "records": len(numbers),
        "valid_records": int(held_out.sum()),
        "tokens": int(lengths.sum()),
        "valid_documents": int(valid.sum()),
        "valid_tokens": int(lengths[valid].sum()),
        "train_tokens_available": int(lengths[~valid].sum()),
    }
    return SourceDocuments(
        source.name, tokens, offsets, np.flatnonzero(~valid), np.flatnonzero(valid), stats,
        record_of,
    )  # fmt: skip
