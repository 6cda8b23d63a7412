"""The pretraining corpus: a data recipe -> tokenized, mixed, packed blocks, cached by content.

Reads   a data recipe (``data_recipes/*.yaml``: DNA/protein FASTA, English text or JSONL sources
        with weights and caps) and a merged tokenizer folder (``merge_vocab``'s output).
Writes  ``<cache_dir>/<key[:16]>/``: ``train.bin`` and ``valid.bin`` (flat uint32 token ids,
        ``block_size`` per block, the last block padded with eos), ``stats.json``, ``meta.json``.

1. Documents, each ``[bos] tokens [eos]``: text paragraphs, JSONL fields, FASTA windows, read
   and tokenized per source by :mod:`llamagene.training.documents`.
2. Validation split, per record, before mixing (also there): by a hash, so the same on every
   run and resume, and the windows of one FASTA record never straddle it; the validation set
   is never mixed or repeated, and each source's validation documents are packed into blocks
   of their own (``stats.json`` ``splits.valid.sources``), so its loss is measured alone.
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
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llamagene import locks
from llamagene.config import to_plain
from llamagene.errors import StageError
from llamagene.manifest import FileRecord, record_file, write_text_atomic
from llamagene.training.data_recipe import DataRecipe
from llamagene.training.documents import CorpusError as CorpusError  # callers catch it from here
from llamagene.training.documents import load_tokenizer, read_source, stable_seed

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch

log = logging.getLogger("llamagene")

FORMAT_VERSION = 2  # bump when the bytes written for the same inputs change
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_FLUSH_TOKENS = 1 << 22


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
    first_block: int = 0
    """Where these blocks start in the file (one source's validation blocks)."""
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
        at = (self.first_block + index) * self.block_size
        ids = torch.from_numpy(self._tokens[at : at + self.block_size].astype(np.int64))
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
        if split == "valid" and self.stats["splits"]["valid"].get("sources"):
            # blocks of several sources, each padded: no padding only at the end
            return _Concat([*self.valid_by_source().values()])  # type: ignore[return-value]
        return PackedBlocks(self.dir / f"{split}.bin", self.block_size, blocks, real)

    def valid_by_source(self) -> dict[str, PackedBlocks]:
        """Each source's validation blocks (packed apart, so a block holds one source)."""
        bos = self.stats.get("bos_id")
        return {
            name: PackedBlocks(
                self.dir / "valid.bin", self.block_size, part["blocks"], part["real_tokens"],
                bos_id=bos, first_block=part["first_block"],
            )
            for name, part in self.stats["splits"]["valid"].get("sources", {}).items()
        }  # fmt: skip


class _Concat:
    """Datasets one after another (torch's ConcatDataset, without importing torch here)."""

    def __init__(self, parts: list[PackedBlocks]) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if index < 0:
            index += len(self)
        for part in self.parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError("block out of range")


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
    log.info("corpus: tokenizing and packing into %s (%d processes)", final, num_proc)
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


def cached_corpus(
    recipe: DataRecipe, tokenizer_dir: Path, block_size: int, cache_dir: Path
) -> PackedCorpus | None:
    """The packed corpus for ``recipe`` when the cache has it (nothing is built)."""
    if not cache_dir.is_dir():
        return None
    material = _key_material(recipe, tokenizer_dir, block_size, cache_dir)
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    final = cache_dir / key[:16]
    return open_corpus(final) if (final / "meta.json").is_file() else None


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


# ---- 3. mix -----------------------------------------------------------------------------------


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
    tok = load_tokenizer(str(tok_dir), version)
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise StageError(f"{tok_dir}: the tokenizer needs a bos and an eos token")
    sources = [read_source(s, recipe, tok_dir, version, work, num_proc) for s in recipe.sources]
    docs = [(s.tokens, s.offsets) for s in sources]
    stats = {s.name: s.stats for s in sources}
    picked = _mix(recipe, [np.diff(s.offsets)[s.train] for s in sources], stats)
    rng = np.random.default_rng(stable_seed(recipe.seed, "pack"))
    order = np.concatenate([_pairs(i, sources[i].train[p]) for i, p in enumerate(picked)])
    splits = {}
    rows = order[rng.permutation(len(order))]
    real, padding = _pack(docs, rows, work / "train.bin", block_size, tok.eos_token_id)
    splits["train"] = _split_figures(len(rows), real, padding, block_size)
    # validation: each source in blocks of its own, so its loss is measured alone
    by_source: dict[str, Any] = {}
    first = 0
    with open(work / "valid.bin", "wb") as valid_file:
        for i, source in enumerate(sources):
            if not len(source.valid):
                continue
            part = work / f"valid-{i}.part"
            real, padding = _pack(docs, _pairs(i, source.valid), part, block_size, tok.eos_token_id)
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, valid_file)
            part.unlink()
            figures = _split_figures(len(source.valid), real, padding, block_size)
            by_source[source.name] = {"first_block": first, **figures}
            first += figures["blocks"]
    valid_real = sum(v["real_tokens"] for v in by_source.values())
    valid_padding = sum(v["padding_tokens"] for v in by_source.values())
    valid_docs = sum(v["documents"] for v in by_source.values())
    splits["valid"] = {
        **_split_figures(valid_docs, valid_real, valid_padding, block_size),
        "sources": by_source,
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
        "bos_id": tok.bos_token_id,
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


def _split_figures(documents: int, real: int, padding: int, block_size: int) -> dict[str, Any]:
    return {
        "documents": documents,
        "blocks": (real + padding) // block_size,
        "real_tokens": real,
        "padding_tokens": padding,
        "packing_efficiency": round(real / max(real + padding, 1), 6),
    }


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
        rng = np.random.default_rng(stable_seed(recipe.seed, source.name))
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
