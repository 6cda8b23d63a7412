"""The pretraining corpus: a data recipe -> tokenized, mixed, packed blocks, cached by content.

Reads   a data recipe (``data_recipes/*.yaml``: DNA/protein FASTA, English text or JSONL sources
        with weights and caps) and a merged tokenizer folder (``merge_vocab``'s output).
Writes  ``<cache_dir>/<key[:16]>/``: ``train.bin`` and ``valid.bin`` (flat uint32 token ids,
        ``block_size`` per block, the last block padded with eos), ``stats.json``, ``meta.json``.

1. Documents: a text paragraph (lines up to a blank line), a JSONL line's ``text_field``, or a
   window of at most ``window_chars`` residues of a FASTA record (:func:`iter_windows`).
   Sequences are mapped to the tokenizer's private-use alphabet (:func:`to_model_text`) and the
   lone dummy-prefix token ``▁`` SentencePiece puts before them is dropped, so every document is
   ``[bos] tokens [eos]``. Tokenization runs through ``datasets`` (``map``, ``num_proc``).
2. Validation split, per document, before mixing: a document is held out when a hash of
   (seed, source name, document index) falls under ``validation_fraction``, so the split is the
   same on every run and resume. The validation set is never mixed or repeated.
3. Mixing: each source gets ``weight / sum(weights)`` of the training tokens; documents are
   drawn (seeded) without replacement, and whole epochs plus a seeded partial epoch when a
   source has fewer tokens than its share.
4. Packing: training documents in a seeded shuffled order, concatenated and cut into blocks (a
   document may span blocks); the last partial block is kept, padded, and counted in stats.json.
   Documents in a block do not see each other: :class:`PackedBlocks` gives position ids that
   restart at each document and no attention mask, from which transformers builds a
   block-diagonal causal mask (the model must run with ``use_cache=False``).

The cache key hashes the recipe (input files by content and size, not by name), the tokenizer
files and ``block_size``; a folder appears only complete (temp folder + rename), so a killed run
never leaves a half cache and the same content is never built twice. File hashes are remembered
in ``<cache_dir>/file_hashes.json`` by path, size and mtime (as the manifest does), so a cache
hit on a 50 GB corpus costs a ``stat`` per file. A build needs free disk for one source's text and
tokens as ``datasets`` Arrow files at a time, plus two copies of every token (4 bytes each).

Numbers: ``data_recipes/demo_pretrain.yaml`` with the demo's merged tokenizer, block_size 256:
430 training blocks (109,912 tokens, 99.85% packed) + 10 validation blocks in ~2 s, mostly
loading transformers. 45 MB of DNA/protein/English: 1.9-3.4 MB/s on 2 busy cores, close to the
fast tokenizer's own speed there (~3.5 MB/s).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llamagene import faults, locks
from llamagene.alphabets import to_model_text
from llamagene.config import to_plain
from llamagene.errors import LlamageneError, StageError
from llamagene.manifest import FileRecord, record_file, write_text_atomic
from llamagene.sequences import SequencePolicy, SequenceStats, iter_windows
from llamagene.training.data_recipe import DataRecipe, SourceConfig

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

log = logging.getLogger("llamagene")

FORMAT_VERSION = 1  # bump when the bytes written for the same inputs change
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_FLUSH_TOKENS = 1 << 22


class CorpusError(StageError):
    """An input of the corpus cannot be used; the message names the file and line."""


@dataclass
class PackedBlocks:
    """A map-style torch dataset over one split's ``.bin`` file (what DataLoader/Trainer take).

    Items are ``{"input_ids", "labels", "position_ids"}`` LongTensors of ``block_size``, and no
    ``attention_mask``: the position ids restart at 0 at every document (a token equal to
    ``bos_id``), and at the start of the block (a document continued from the previous block
    starts over there) and of the padding. Given such position ids, no attention mask and no
    cache, transformers' sdpa and eager attention (``masking_utils.find_packed_sequence_indices``,
    per batch row) let a token attend only to earlier tokens of its own segment, so a document's
    logits in a block are those of the document alone. The model must run with
    ``use_cache=False``: with a cache, or an attention mask, the detection is off and attention
    crosses documents; so it is with flash_attention_2 at a batch of more than one row (it reads
    packing from position ids only for one flattened row).

    Labels are the input ids, except -100 for padding (only in the last block) and at every bos:
    the loss shifts labels by one, so a bos label would train the previous document's eos to
    predict the next document's bos. That prediction is always true in this corpus, says nothing
    of the data, and sees only the previous document; dropping it makes a whole document's token
    losses in a block exactly those of the document alone, keeps train and eval loss from being
    lowered by one free token per document (1 in ~60 tokens for a 250-character English
    paragraph), and is what transformers' ``DataCollatorWithFlattening`` does (a separator label
    at each sequence start).

    ``bos_id`` None means the first token of the file, which always starts a document. The file
    is opened lazily, so the object pickles cheaply into DataLoader workers.
    """

    path: Path
    block_size: int
    blocks: int
    real_tokens: int
    bos_id: int | None = None
    _tokens: np.memmap[Any, Any] | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return self.blocks

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": None}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        import numpy as np
        import torch

        if index < 0:
            index += self.blocks
        if not 0 <= index < self.blocks:
            raise IndexError(f"block {index} out of range ({self.blocks} blocks)")
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=np.uint32, mode="r")
        if self.bos_id is None:
            self.bos_id = int(self._tokens[0])
        start = index * self.block_size
        ids = torch.from_numpy(self._tokens[start : start + self.block_size].astype(np.int64))
        real = max(0, min(self.block_size, self.real_tokens - start))
        starts = ids == self.bos_id
        starts[0] = True
        starts[real:] = False
        if real < self.block_size:
            starts[real] = True  # the padding is a segment of its own
        steps = torch.arange(self.block_size)
        positions = steps - torch.cummax(torch.where(starts, steps, 0), dim=0).values
        labels = ids.clone()
        labels[real:] = -100
        labels[ids == self.bos_id] = -100
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


@dataclass(frozen=True)
class PackedCorpus:
    """A prepared corpus in ``dir``; ``stats`` is ``stats.json``."""

    dir: Path
    block_size: int
    train_blocks: int
    valid_blocks: int
    key: str
    stats: dict[str, Any]

    def dataset(self, split: Literal["train", "valid"]) -> PackedBlocks:
        blocks = self.train_blocks if split == "train" else self.valid_blocks
        real = self.stats["splits"][split]["real_tokens"]
        return PackedBlocks(self.dir / f"{split}.bin", self.block_size, blocks, real)


def prepare_corpus(
    recipe: DataRecipe, tokenizer_dir: Path, block_size: int, cache_dir: Path, num_proc: int = 1
) -> PackedCorpus:
    """The packed corpus for ``recipe``: from the cache, or built into it."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, not {block_size}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    material = _key_material(recipe, tokenizer_dir, block_size, cache_dir)
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    final = cache_dir / key[:16]
    if (final / "meta.json").is_file():
        log.info("corpus cache hit: %s", final)
        return open_corpus(final)
    for stale in locks.remove_unowned(cache_dir, ".tmp-*"):
        log.info("corpus: removed %s, left by a build that was killed", stale)
    work = cache_dir / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    owner = locks.try_acquire(locks.owned_path(work), "corpus build")  # before the folder
    work.mkdir()  # unlike mkdtemp, honours the umask, so a shared cache stays shared
    try:
        _build(recipe, tokenizer_dir, block_size, num_proc, work, {"key": key, **material})
        if final.exists() and not (final / "meta.json").is_file():
            shutil.rmtree(final, ignore_errors=True)  # incomplete; only rename creates folders
        try:
            os.rename(work, final)
        except OSError:  # another process finished the same key first: keep the winner
            log.info("corpus: %s was built by another process meanwhile", final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if owner is not None:
            owner.release(remove=True)
    return open_corpus(final)


def open_corpus(folder: Path) -> PackedCorpus:
    """A corpus folder that :func:`prepare_corpus` returned (e.g. in a training process)."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    return PackedCorpus(
        folder, meta["block_size"], stats["train_blocks"], stats["valid_blocks"], meta["key"], stats
    )


def _key_material(
    recipe: DataRecipe, tok_dir: Path, block_size: int, cache: Path
) -> dict[str, Any]:
    """What the cache key hashes: files by content and size, never by name or place."""
    if not (tok_dir / "tokenizer.json").is_file():
        raise StageError(f"{tok_dir}: no tokenizer.json (expected merge_vocab's tokenizer folder)")
    memo_path = cache / "file_hashes.json"
    memo: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):  # a lost memo only costs re-hashing
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    old = dict(memo)

    def digest(p: Path) -> dict[str, Any]:
        prev = memo.get(str(p.resolve()))
        rec = record_file(p, FileRecord(**prev) if isinstance(prev, dict) else None)
        memo[str(p.resolve())] = asdict(rec)
        return {"sha256": rec.sha256, "size": rec.size}

    plain = to_plain(recipe)
    plain.pop("description")
    for src, cfg in zip(plain["sources"], recipe.sources, strict=True):
        try:
            src["paths"] = [digest(p) for p in cfg.files()]
        except FileNotFoundError as err:
            raise CorpusError(f"source '{cfg.name}': {err.filename} does not exist") from None
    tokenizer = {
        n: digest(tok_dir / n)["sha256"] for n in TOKENIZER_FILES if (tok_dir / n).exists()
    }
    if memo != old:
        write_text_atomic(memo_path, json.dumps(memo, indent=1, sort_keys=True))
    return {"format": FORMAT_VERSION, "recipe": plain, "tokenizer": tokenizer, "block": block_size}


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


def _documents(source_json: str, stats_path: str) -> Iterator[dict[str, str]]:
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
    for i, path in enumerate(files):
        if source.kind in ("dna", "protein"):
            policy = SequencePolicy(
                source.kind, source.iupac, source.n_run_min_length, source.protein_ambiguous,
                protein_hint=f"set kind: protein for source '{source.name}'",
            )  # fmt: skip
            windows = iter_windows(path, policy, source.window_chars, source.min_doc_chars, seq)
            docs: Iterator[tuple[str, str]] = ((w.text, f"{w.path}:{w.line}") for w in windows)
        else:
            docs = _paragraphs(path) if source.kind == "text" else _jsonl(path, source.text_field)
        for text, where in docs:
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
                yield {"text": text}
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
def _tokenizer(tokenizer_dir: str, version: str) -> Any:
    """The tokenizer of a folder; ``version`` (its files' hashes) keeps a rewritten one fresh."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _tokenize(
    batch: dict[str, list[str]], tokenizer_dir: str, version: str, kind: str
) -> dict[str, Any]:
    faults.reached("corpus.tokenize")
    tok = _tokenizer(tokenizer_dir, version)
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
) -> tuple[dict[str, Any], npt.NDArray[np.int64]]:
    """Read and tokenize one source into ``work/<name>.tokens``: (counts, document offsets)."""
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
            features=datasets.Features({"text": datasets.Value("string")}),
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
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("uint32"))}),
        new_fingerprint=f"tok-{source.name}",
        desc=f"corpus: tokenizing {source.name}",
    )
    lengths = []
    with open(work / f"{source.name}.tokens", "wb") as out:
        for table in ds.with_format("arrow").iter(batch_size=10_000):
            column = table.column("input_ids").combine_chunks()
            out.write(column.flatten().to_numpy().astype(np.uint32).tobytes())
            lengths.append(column.value_lengths().to_numpy())
    del ds
    shutil.rmtree(hf_dir, ignore_errors=True)
    return counts, np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)


# ---- 2. split, 3. mix -------------------------------------------------------------------------


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def split_validation(
    n: int, seed: int, name: str, fraction: float, min_docs: int
) -> npt.NDArray[np.bool_]:
    """Which of ``n`` documents are held out: by a hash of (seed, name, index), no RNG state."""
    import numpy as np

    x = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(_seed(seed, name))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # splitmix64 finaliser
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    draw = (x ^ (x >> np.uint64(31))) >> np.uint64(11)
    k = int((draw < np.uint64(fraction * 2**53)).sum())
    k = min(max(k, min_docs if n >= 2 else 0), max(n - 1, 0))  # keep one to train on
    valid = np.zeros(n, dtype=bool)
    valid[np.argsort(draw, kind="stable")[:k]] = True
    return valid


def sample_documents(
    lengths: npt.NDArray[np.int64], target: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], int]:
    """Indices of documents summing to about ``target`` tokens, and the number of whole epochs:
    every document ``epochs`` times, then a seeded partial epoch without replacement that stops
    at the document boundary nearest the rest of the target."""
    import numpy as np

    epochs, rest = divmod(target, int(lengths.sum()))
    order = rng.permutation(len(lengths))
    cum = np.cumsum(lengths[order])
    take = int(np.searchsorted(cum, rest))  # the first `take + 1` documents reach `rest`
    before = int(cum[take - 1]) if take else 0
    take += int(cum[take]) - rest <= rest - before
    return np.concatenate([np.tile(np.arange(len(lengths)), epochs), order[:take]]), epochs


# ---- 4. pack ----------------------------------------------------------------------------------


def _pack(
    docs: Sequence[tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]],
    order: npt.NDArray[np.int64],
    out_path: Path,
    block_size: int,
    pad_id: int,
) -> tuple[int, int]:
    """Write the documents ``order`` names (rows of source, document) to ``out_path``, then
    pad to a whole block; returns (real tokens, padding). Memory: one flush buffer."""
    import numpy as np
    from tqdm import tqdm

    real, buf, buffered = 0, [], 0
    bar = tqdm(total=len(order), desc=f"corpus: packing {out_path.stem}", unit="doc", disable=None)
    with open(out_path, "wb") as out, bar:
        for lo in range(0, len(order), 1 << 16):
            rows = order[lo : lo + (1 << 16)]
            for s, d in rows.tolist():
                tokens, offsets = docs[s]
                buf.append(tokens[offsets[d] : offsets[d + 1]])
                buffered += len(buf[-1])
                if buffered >= _FLUSH_TOKENS:
                    out.write(np.concatenate(buf).tobytes())
                    real, buf, buffered = real + buffered, [], 0
            bar.update(len(rows))
        out.write(np.concatenate([*buf, np.zeros(0, np.uint32)]).tobytes())
        real += buffered
        padding = -real % block_size
        out.write(np.full(padding, pad_id, dtype=np.uint32).tobytes())
    return real, padding


def _build(
    recipe: DataRecipe,
    tok_dir: Path,
    block_size: int,
    num_proc: int,
    work: Path,
    meta: dict[str, Any],
) -> None:
    """Read, tokenize, split, mix and pack into ``work``; stats.json and meta.json last."""
    import numpy as np

    start = time.perf_counter()
    version = json.dumps(meta["tokenizer"], sort_keys=True)
    tok = _tokenizer(str(tok_dir), version)
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise StageError(f"{tok_dir}: the tokenizer needs a bos and an eos token")
    docs, stats, train_idx, valid_idx, train_lengths = [], {}, [], [], []
    for source in recipe.sources:
        counts, offsets = _tokenize_source(source, tok_dir, version, work, num_proc)
        docs.append((np.memmap(work / f"{source.name}.tokens", np.uint32, "r"), offsets))
        lengths = np.diff(offsets)
        valid = split_validation(
            len(lengths), recipe.seed, source.name,
            recipe.validation_fraction, recipe.min_validation_documents,
        )  # fmt: skip
        train_idx.append(np.flatnonzero(~valid))
        train_lengths.append(lengths[~valid])
        valid_idx.append(np.flatnonzero(valid))
        stats[source.name] = {
            **counts,
            "tokens": int(lengths.sum()),
            "valid_documents": int(valid.sum()),
            "valid_tokens": int(lengths[valid].sum()),
            "train_tokens_available": int(lengths[~valid].sum()),
        }
    picked = _mix(recipe, train_lengths, stats)
    rng = np.random.default_rng(_seed(recipe.seed, "pack"))
    order = np.concatenate([_pairs(i, train_idx[i][p]) for i, p in enumerate(picked)])
    splits = {}
    for split, rows in (
        ("train", order[rng.permutation(len(order))]),
        ("valid", np.concatenate([_pairs(i, v) for i, v in enumerate(valid_idx)])),
    ):
        real, padding = _pack(docs, rows, work / f"{split}.bin", block_size, tok.eos_token_id)
        splits[split] = {
            "documents": len(rows),
            "blocks": (real + padding) // block_size,
            "real_tokens": real,
            "padding_tokens": padding,
            "packing_efficiency": round(real / max(real + padding, 1), 6),
        }
    for name in stats:
        (work / f"{name}.tokens").unlink()
        (work / f"{name}.counts.json").unlink()
    seconds = time.perf_counter() - start
    mb = sum(s["chars"] for s in stats.values()) / 1e6
    train = splits["train"]
    result = {
        "block_size": block_size,
        "train_blocks": train["blocks"],
        "valid_blocks": splits["valid"]["blocks"],
        **{k: train[k] for k in ("real_tokens", "padding_tokens", "packing_efficiency")},
        "splits": splits,
        "total_tokens_requested": recipe.total_tokens,
        "sources": stats,
        "throughput": {"input_mb": round(mb, 3), "seconds": round(seconds, 2),
                       "mb_per_s": round(mb / max(seconds, 1e-9), 3)},
    }  # fmt: skip
    write_text_atomic(work / "stats.json", json.dumps(result, indent=2) + "\n")
    meta.update(block_size=block_size, dtype="uint32", pad_id=tok.eos_token_id)
    write_text_atomic(work / "meta.json", json.dumps(meta, indent=2) + "\n")
    log.info(
        f"corpus: train {train['blocks']} blocks of {block_size} ({train['real_tokens']} tokens, "
        f"{100 * train['packing_efficiency']:.2f}% packed), valid {result['valid_blocks']} "
        f"blocks; {mb:.1f} MB in {seconds:.1f} s ({mb / max(seconds, 1e-9):.2f} MB/s)"
    )
    for name, figures in stats.items():
        available, used = figures["train_tokens_available"], figures["tokens_used"]
        log.info(f"corpus: {name}: {used:,} of {available:,} training tokens used "
                 f"(x{figures['repeat_factor']:.2f})")  # fmt: skip
        if available and used < available / 2:
            log.warning(
                f"corpus: {name}: the mixing weights leave {1 - used / available:.0%} of its "
                f"tokens unused (the smallest source relative to its weight sets the size); "
                f"set total_tokens or change the weights to use more"
            )


def _mix(
    recipe: DataRecipe, lengths: list[npt.NDArray[np.int64]], stats: dict[str, dict[str, Any]]
) -> list[npt.NDArray[np.int64]]:
    """Per source, the training documents to use (indices into ``lengths``, repeats allowed)."""
    import numpy as np

    weights = np.array([s.weight for s in recipe.sources])
    shares = weights / weights.sum()
    available = np.array([int(x.sum()) for x in lengths])
    total = recipe.total_tokens or float((available / shares).min())
    picked = []
    for i, source in enumerate(recipe.sources):
        target = round(shares[i] * total)
        if recipe.total_tokens is None:
            target = min(target, int(available[i]))  # float rounding must not cause a repeat
        rng = np.random.default_rng(_seed(recipe.seed, source.name))
        idx, epochs = sample_documents(lengths[i], target, rng)
        used = int(lengths[i][idx].sum())
        stats[source.name].update(
            share_requested=round(float(shares[i]), 4),
            tokens_used=used,
            train_documents_used=len(idx),
            full_epochs=epochs,
            repeat_factor=round(used / int(available[i]), 4),
        )
        picked.append(idx)
    used_total = sum(s["tokens_used"] for s in stats.values())
    for s in stats.values():
        s["share_actual"] = round(s["tokens_used"] / used_total, 4)
    return picked


def _pairs(source: int, docs: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    import numpy as np

    return np.stack([np.full(len(docs), source), docs], axis=1)
