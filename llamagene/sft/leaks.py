"""Find train/dev sequences related to a test sequence: equal, other strand, inside or around it.

build_sft drops a train or dev row whose sequence X is *related* to a test sequence Y of any task;
exact matches alone missed real leaks (GUE's ``prom_core`` 70 bp test sequences lie inside
``prom_300`` 300 bp training windows; other strands). :class:`LeakIndex` answers, per query, the
first that holds of: ``exact`` (X == Y); ``reverse_complement`` (DNA: X == rc(Y)); ``contained``
(X inside Y or, DNA, rc(Y), X != Y, len(X) >= min_overlap); ``contains`` (Y or, DNA, rc(Y)
inside X, X != Y, len(Y) >= min_overlap). DNA meets only DNA, protein only protein;
min_overlap defaults to 50 and 30. Sequences are upper-case, as :mod:`llamagene.sequences` makes.

Design. No pairwise comparison: every relation implies a shared k-mer, and only pairs sharing
one are verified, with ``==`` and ``in``, so answers are exact whatever the hashes do.

- Strands: the index holds each distinct test sequence and, for DNA, its reverse complement;
  queries (the bigger side) are read on one strand.
- Hashing: polynomial mod 2**64 (random letter codes, odd base B), vectorised over a batch by
  numpy prefix sums P[i] = sum c[j] * B**-j: text[i:j] hashes to (P[j] - P[i]) * B**(j - 1).
  One pass over the letters serves every k-mer and every whole sequence; whole-sequence hashes
  (exact, reverse complement) are a sorted uint64 array, not a set of str, so forked workers
  have no per-sequence objects to copy on write.
- A guaranteed hit: with stride s and k = min_overlap + 1 - s, a sequence's *head* is its
  k-mers at 0..s-1, its *strided* k-mers those at multiples of s. If X contains Y, X's k-mer at
  the first multiple of s at or after Y's offset is a head k-mer of Y (it fits: len(Y) >= k +
  s - 1); if Y contains X, a head k-mer of X is a strided k-mer of Y. Queries probe heads
  against test strided k-mers and strided k-mers against test heads: s + len/s probes, fewest
  near s = sqrt(len). Changed from k = min(min_overlap, 32): s = 20 for GUE's 70-1000 bp, so
  k = min_overlap - 19, but at least 20 (DNA) or 12 (protein) to keep chance hits rare. The
  hash costs the same for any k, and the old rule gave protein at 30 one probe per residue.
- Probing: a bit array over the hashes' top bits (~32 bits per hash, at most 32 MB) turns away
  almost every probe with one memory access, the rest go to ``searchsorted`` over sorted (hash,
  strand) arrays (``searchsorted`` on every probe made queries 6x slower). One probe per
  distinct k-mer of a query; (query, strand) pairs deduplicated; checks in precedence order,
  each query stopping at its first success.

Worst case: a k-mer in T test strands and Q queries makes T*Q candidate pairs, ~0.4 us each
(a Python loop step and an ``in``). Low-complexity k-mers (poly-A, satellites) do this: with an
80 bp poly-A run in 5% of rows on both sides, GUE-sized queries take 10 s instead of 2.5.
Memory: the index (12 bytes per k-mer, 2 * (s + len/s) k-mers per DNA test sequence, letters,
bit array), 16 MB of powers of B, tens of MB per ~1 Mbp chunk of queries. tests/bench/leak_bench.py
(60k test, 540k query GUE-like rows, one core): build 1.5 s, 127 MB; query 2 s.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from llamagene.alphabets import SequenceKind
from llamagene.sequences import reverse_complement

LeakKind = Literal["exact", "reverse_complement", "contained", "contains"]
LEAK_KINDS: tuple[LeakKind, ...] = ("exact", "reverse_complement", "contained", "contains")
DEFAULT_MIN_OVERLAP: dict[SequenceKind, int] = {"dna": 50, "protein": 30}

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]

_STRIDE = 20
_MIN_K: dict[SequenceKind, int] = {"dna": 20, "protein": 12}
_CHUNK = 1 << 20  # letters hashed per batch: bounds temporaries, keeps numpy calls few
_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2**64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_CODES: U64 = np.random.default_rng(0x1EA4).integers(0, 1 << 64, 256, dtype=np.uint64)


def default_kmer_length(kind: SequenceKind, min_overlap: int) -> int:
    """k for ``min_overlap``: stride 20, k at least 20 (DNA) or 12 (protein), at most overlap."""
    return min(min_overlap, max(_MIN_K[kind], min_overlap + 1 - _STRIDE))


def _powers(base: int, n: int) -> U64:
    out = np.full(max(n, 1), base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, out=out)  # uint64 products wrap: arithmetic mod 2**64


@cache
def _chunk_powers() -> tuple[U64, U64]:
    """B**i and B**-i for i < _CHUNK: made once per process (16 MB), shared by forked workers."""
    return _powers(_BASE, _CHUNK), _powers(_BASE_INV, _CHUNK)


def _chunks(lengths: I64) -> Iterator[tuple[int, int]]:
    """[a, b) ranges of about ``_CHUNK`` letters (one sequence if it alone is longer)."""
    ends = np.cumsum(lengths)
    a = 0
    while a < len(lengths):
        limit = int(ends[a] - lengths[a]) + _CHUNK
        b = max(int(np.searchsorted(ends, limit, side="right")), a + 1)
        yield a, b
        a = b


def _lengths(sequences: Sequence[str]) -> I64:
    return np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))


class _Batch:
    """Prefix sums of the hash over a batch of sequences laid end to end."""

    def __init__(self, text: str, lengths: I64) -> None:
        codes = _CODES[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
        pow_b, pow_inv = _chunk_powers()
        if codes.size > pow_b.size:
            pow_b, pow_inv = _powers(_BASE, codes.size), _powers(_BASE_INV, codes.size)
        codes *= pow_inv[: codes.size]
        self.prefix = np.zeros(codes.size + 1, dtype=np.uint64)
        np.cumsum(codes, out=self.prefix[1:])
        self.pow_b = pow_b
        self.lengths = lengths
        self.starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=self.starts[1:])

    def hashes(self, pos: I64, length: I64 | int) -> U64:
        end = pos + length
        diff: U64 = self.prefix[end] - self.prefix[pos]
        out: U64 = diff * self.pow_b[np.maximum(end - 1, 0)]
        return out

    def whole(self) -> U64:
        return self.hashes(self.starts, self.lengths)

    def heads(self, min_len: int, s: int) -> tuple[I64, I64]:
        """Positions 0..s-1 of sequences of ``min_len`` or more, and whose they are."""
        owner = np.flatnonzero(self.lengths >= min_len)
        pos = (self.starts[owner][:, None] + np.arange(s, dtype=np.int64)).ravel()
        return pos, np.repeat(owner, s)

    def strided(self, min_len: int, s: int, k: int) -> tuple[I64, I64]:
        """k-mer positions at multiples of s in sequences of ``min_len`` (>= k) or more."""
        which = np.flatnonzero(self.lengths >= min_len)
        counts = (self.lengths[which] - k) // s + 1
        owner = np.repeat(which, counts)
        step = np.arange(owner.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.starts[owner] + step * s, owner


@dataclass(frozen=True)
class _Table:
    """(hash, strand) entries sorted by hash then strand, without repeats."""

    hashes: U64
    strands: I32

    @classmethod
    def build(cls, hashes: list[U64], strands: list[I32]) -> _Table:
        """From per-chunk parts, emptied on the way; strands must come in ascending order."""
        h, s = np.concatenate(hashes), np.concatenate(strands)
        hashes.clear()
        strands.clear()
        order = np.argsort(h, kind="stable")  # so strands stay ascending within one hash
        h, s = h[order], s[order]
        keep = np.ones(h.size, dtype=bool)
        keep[1:] = (h[1:] != h[:-1]) | (s[1:] != s[:-1])
        return cls(h[keep], s[keep])


def _bit_array(tables: Sequence[_Table]) -> tuple[U64, np.uint64]:
    """A bit per value of the hashes' top bits (~32 bits per hash, at most 2**28), and the shift."""
    size = sum(t.hashes.size for t in tables)
    top = int(np.clip(np.ceil(np.log2(max(size, 1) * 32)), 12, 28))
    shift = np.uint64(64 - top)
    bits = np.zeros(1 << (top - 6), dtype=np.uint64)
    for table in tables:  # sorted hashes: the words each table sets come in order
        used = table.hashes >> shift
        words = (used >> np.uint64(6)).astype(np.intp)
        firsts = np.flatnonzero(np.concatenate([[True], words[1:] != words[:-1]]))
        if used.size:
            ones = np.left_shift(np.uint64(1), used & np.uint64(63))
            bits[words[firsts]] |= np.bitwise_or.reduceat(ones, firsts)
    return bits, shift


@dataclass(frozen=True)
class _KindIndex:
    """The test strands of one sequence kind, their letters and their hash tables."""

    min_overlap: int
    k: int
    s: int
    text: str  # every strand, end to end
    starts: I64  # strand i is text[starts[i]:starts[i + 1]]
    n_forward: int  # strands from n_forward on are reverse complements
    whole: _Table
    head: _Table
    strided: _Table
    bits: U64  # bit t set when some hash has top bits t
    shift: np.uint64

    @classmethod
    def build(cls, kind: SequenceKind, seqs: list[str], min_overlap: int, k: int) -> _KindIndex:
        s = min_overlap + 1 - k
        text, lengths = "".join(seqs), _lengths(seqs)
        if kind == "dna":
            text += reverse_complement(text)
            lengths = np.concatenate([lengths, lengths[::-1]])
        starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        hashes: list[list[U64]] = [[], [], []]  # whole strands, heads, strided k-mers
        owners: list[list[I32]] = [[], [], []]
        for a, b in _chunks(lengths):
            batch = _Batch(text[starts[a] : starts[b]], lengths[a:b])
            head_pos, head_owner = batch.heads(min_overlap, s)
            strided_pos, strided_owner = batch.strided(min_overlap + 1, s, k)
            entries = (
                (batch.whole(), np.arange(b - a)),
                (batch.hashes(head_pos, k), head_owner),
                (batch.hashes(strided_pos, k), strided_owner),
            )
            for i, (h, owner) in enumerate(entries):
                hashes[i].append(h)
                owners[i].append((owner + a).astype(np.int32))
        tables = [_Table.build(h, o) for h, o in zip(hashes, owners, strict=True)]
        bits, shift = _bit_array(tables)
        whole, head, strided = tables
        return cls(min_overlap, k, s, text, starts, len(seqs), whole, head, strided, bits, shift)

    def strand(self, i: int) -> str:
        return self.text[int(self.starts[i]) : int(self.starts[i + 1])]

    def probe(self, table: _Table, hashes: U64, queries: I64) -> list[tuple[int, int]]:
        """Distinct (query, strand) pairs where a query hash is a table hash, by query."""
        top = hashes >> self.shift
        maybe = (self.bits[(top >> np.uint64(6)).astype(np.intp)] >> (top & np.uint64(63))) & 1
        hashes, queries = hashes[maybe == 1], queries[maybe == 1]
        lo = np.searchsorted(table.hashes, hashes)
        found = lo < table.hashes.size
        found[found] = table.hashes[lo[found]] == hashes[found]
        if not found.any():
            return []
        order = np.lexsort((queries[found], hashes[found]))
        hashes, queries, lo = hashes[found][order], queries[found][order], lo[found][order]
        first = np.ones(hashes.size, dtype=bool)  # one probe per (k-mer, query)
        first[1:] = (hashes[1:] != hashes[:-1]) | (queries[1:] != queries[:-1])
        hashes, queries, lo = hashes[first], queries[first], lo[first]
        counts = np.searchsorted(table.hashes, hashes, side="right") - lo
        at = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        n = len(self.starts)
        pairs = np.unique(np.repeat(queries, counts) * n + table.strands[at])
        return list(zip((pairs // n).tolist(), (pairs % n).tolist(), strict=True))

    def find(self, seqs: Sequence[str]) -> list[LeakKind | None]:
        """Chunk by chunk: exact and reverse complement, then contained, then contains."""
        found: list[LeakKind | None] = [None] * len(seqs)
        lengths = _lengths(seqs)
        for a, b in _chunks(lengths):
            batch = _Batch("".join(seqs[a:b]), lengths[a:b])
            for q, st in self.probe(self.whole, batch.whole(), np.arange(b - a, dtype=np.int64)):
                if seqs[a + q] == self.strand(st) and found[a + q] != "exact":
                    found[a + q] = "exact" if st < self.n_forward else "reverse_complement"
            pos, owner = batch.heads(self.min_overlap, self.s)
            for q, st in self.probe(self.strided, batch.hashes(pos, self.k), owner):
                if found[a + q] is None:
                    x, y = seqs[a + q], self.strand(st)
                    if len(x) < len(y) and x in y:
                        found[a + q] = "contained"
            pos, owner = batch.strided(self.min_overlap + 1, self.s, self.k)
            for q, st in self.probe(self.head, batch.hashes(pos, self.k), owner):
                if found[a + q] is None:
                    x, y = seqs[a + q], self.strand(st)
                    if len(y) < len(x) and y in x:
                        found[a + q] = "contains"
        return found


def _check_kind(kind: str) -> SequenceKind:
    if kind not in get_args(SequenceKind):
        raise ValueError(f"unknown sequence kind {kind!r} (expected 'dna' or 'protein')")
    return kind  # type: ignore[return-value]


class LeakIndex:
    """Test sequences, by kind, and the fast search for train/dev sequences related to them.

    ``add`` every test sequence, ``freeze`` (or just ``find``), then ``find`` batches of train or
    dev sequences. Once frozen the index is plain numpy arrays and one str per kind, read-only,
    so forked workers share it. ``kmer_length`` overrides k (1 <= k <= min_overlap) for tests
    and tuning; the answers do not depend on it, only the speed.
    """

    def __init__(
        self,
        min_overlap: Mapping[SequenceKind, int] | None = None,
        *,
        kmer_length: Mapping[SequenceKind, int] | None = None,
    ) -> None:
        self._min_overlap = dict(DEFAULT_MIN_OVERLAP)
        for kind, value in (min_overlap or {}).items():
            if value < 1:
                raise ValueError(f"min_overlap for {kind} must be at least 1, not {value}")
            self._min_overlap[_check_kind(kind)] = value
        self._k = {kind: default_kmer_length(kind, m) for kind, m in self._min_overlap.items()}
        for kind, k in (kmer_length or {}).items():
            if not 1 <= k <= self._min_overlap[_check_kind(kind)]:
                raise ValueError(f"kmer_length for {kind} must be in 1..min_overlap, not {k}")
            self._k[kind] = k
        self._pending: dict[SequenceKind, set[str]] | None = {"dna": set(), "protein": set()}
        self._kinds: dict[SequenceKind, _KindIndex] = {}
        self._size = 0

    def add(self, kind: SequenceKind, sequence: str) -> None:
        """Index a test sequence (upper-case; adding one twice is harmless)."""
        if self._pending is None:
            raise RuntimeError("LeakIndex.add() after freeze()")
        self._pending[_check_kind(kind)].add(sequence)

    def freeze(self) -> None:
        """Build the hash tables from the added sequences; later ``add`` calls raise."""
        if self._pending is None:
            return
        for kind, seqs in self._pending.items():
            self._size += len(seqs)
            if seqs:
                m, k = self._min_overlap[kind], self._k[kind]
                self._kinds[kind] = _KindIndex.build(kind, sorted(seqs), m, k)
        self._pending = None

    def find(self, kind: SequenceKind, sequences: Sequence[str]) -> list[LeakKind | None]:
        """For each sequence, in order, its strongest relation to a test sequence, or None."""
        self.freeze()
        index = self._kinds.get(_check_kind(kind))
        return [None] * len(sequences) if index is None else index.find(sequences)

    def __len__(self) -> int:
        """The number of distinct indexed sequences (of both kinds)."""
        if self._pending is not None:
            return sum(len(seqs) for seqs in self._pending.values())
        return self._size
