"""Tests for llamagene.sft.leaks: the index of test sequences that finds related train/dev ones."""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Iterable

import pytest

from llamagene.alphabets import SequenceKind
from llamagene.sequences import reverse_complement as rc
from llamagene.sft import leaks
from llamagene.sft.leaks import LEAK_KINDS, LeakIndex, LeakKind


def rand_seq(rng: random.Random, length: int, letters: str = "ACGT") -> str:
    return "".join(rng.choice(letters) for _ in range(length))


def index_of(
    tests: Iterable[str], kind: SequenceKind = "dna", min_overlap: int | None = None
) -> LeakIndex:
    index = LeakIndex(None if min_overlap is None else {"dna": min_overlap})
    for seq in tests:
        index.add(kind, seq)
    return index


def brute(tests: Iterable[str], kind: SequenceKind, x: str, min_overlap: int) -> LeakKind | None:
    """The definition, pair by pair."""
    ys = set(tests)
    strands = [*ys, *(rc(y) for y in ys)] if kind == "dna" else list(ys)
    if x in ys:
        return "exact"
    if kind == "dna" and any(x == rc(y) for y in ys):
        return "reverse_complement"
    if len(x) >= min_overlap and any(x != y and x in y for y in strands):
        return "contained"
    if any(x != y and len(y) >= min_overlap and y in x for y in strands):
        return "contains"
    return None


RNG = random.Random(7)
T70 = rand_seq(RNG, 70)
T400 = rand_seq(RNG, 400)
HOST = rand_seq(RNG, 300)
PROTEIN = rand_seq(RNG, 120, "ACDEFGHIKLMNPQRSTVWY")


def test_exact_and_reverse_complement() -> None:
    index = index_of([T70, T400])
    assert index.find("dna", [T70, T400, rc(T70), rc(T400)]) == [
        "exact",
        "exact",
        "reverse_complement",
        "reverse_complement",
    ]


@pytest.mark.parametrize("offset", [0, 1, 57, 229, 230])
@pytest.mark.parametrize("strand", ["forward", "reverse"])
def test_short_test_sequence_inside_a_longer_query_is_contains(offset: int, strand: str) -> None:
    core = T70 if strand == "forward" else rc(T70)
    query = HOST[:offset] + core + HOST[offset + 70 :]
    assert len(query) == 300
    assert index_of([T70, T400]).find("dna", [query]) == ["contains"]


@pytest.mark.parametrize("start, end", [(0, 50), (100, 300), (350, 400), (0, 399), (1, 400)])
def test_query_inside_a_test_sequence_or_its_reverse_complement_is_contained(
    start: int, end: int
) -> None:
    index = index_of([T70, T400])
    assert index.find("dna", [T400[start:end], rc(T400)[start:end]]) == ["contained"] * 2
    assert index.find("dna", [rc(T400[start:end])]) == ["contained"]


def test_protein_containment_and_no_reverse_complement() -> None:
    index = index_of([PROTEIN], "protein")
    queries = [PROTEIN, PROTEIN[10:40], PROTEIN[:-1], "MK" + PROTEIN + "W", PROTEIN[::-1]]
    assert index.find("protein", queries) == ["exact", "contained", "contained", "contains", None]
    # a protein spelt in ACGT: its "reverse complement" is no relation for protein
    acgt = rand_seq(RNG, 90)
    index = index_of([acgt], "protein")
    assert index.find("protein", [rc(acgt), rc(acgt)[5:80], "A" + rc(acgt)]) == [None] * 3
    assert index.find("protein", [acgt[5:80], "A" + acgt]) == ["contained", "contains"]


def test_precedence() -> None:
    inner = T400[100:200]
    index = index_of([inner, T400, T70])
    assert index.find("dna", [inner]) == ["exact"]  # also contained in T400
    assert index.find("dna", [rc(inner)]) == ["reverse_complement"]  # also in rc(T400)
    assert index.find("dna", [T400]) == ["exact"]  # also contains inner
    assert index.find("dna", [T400[50:250]]) == ["contained"]  # also contains inner
    # equal to one test sequence, the reverse complement of another
    assert index_of([T70, rc(T70)]).find("dna", [T70, rc(T70)]) == ["exact", "exact"]
    assert list(LEAK_KINDS) == ["exact", "reverse_complement", "contained", "contains"]


def test_below_min_overlap() -> None:
    t40 = T400[:40]
    query = HOST[:100] + t40 + HOST[100:]
    assert index_of([t40]).find("dna", [query]) == [None]
    assert index_of([t40], min_overlap=30).find("dna", [query]) == ["contains"]
    assert index_of([T400]).find("dna", [t40, T400[:49], T400[:50]]) == [None, None, "contained"]
    assert index_of([T400], min_overlap=30).find("dna", [t40]) == ["contained"]
    index = index_of([PROTEIN], "protein", 10)  # the other kind keeps its default, 30
    assert index.find("protein", [PROTEIN[:29], PROTEIN[:30]]) == [None, "contained"]


def test_no_false_positives_and_kinds_kept_apart() -> None:
    rng = random.Random(11)
    tests = [rand_seq(rng, rng.randint(50, 600)) for _ in range(200)]
    queries = [rand_seq(rng, rng.randint(1, 1000)) for _ in range(500)]
    index = index_of(tests)
    assert index.find("dna", queries) == [None] * 500
    assert index.find("protein", tests[:5]) == [None] * 5
    for seq in tests[:5]:
        index = index_of([seq], "protein")
        assert index.find("dna", [seq, seq[:60], "A" + seq]) == [None] * 3


def test_sequences_with_n() -> None:
    rng = random.Random(3)
    test = rand_seq(rng, 200, "ACGTN")
    test = test[:50] + "NNNNNNNNNN" + test[60:]
    index = index_of([test])
    queries = [test, rc(test), test[40:120], rc(test)[40:120], "AC" + test, test.replace("N", "A")]
    assert index.find("dna", queries) == [
        "exact",
        "reverse_complement",
        "contained",
        "contained",
        "contains",
        None,
    ]
    assert index_of(["N" * 80]).find("dna", ["N" * 80, "N" * 60, "N" * 81]) == [
        "exact",
        "contained",
        "contains",
    ]


def test_random_against_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted relations over small alphabets; several geometries: k > s, k < s, s == 1."""
    leaks._chunk_powers()  # cached at full size before the chunk shrinks
    monkeypatch.setattr(leaks, "_CHUNK", 256)  # many chunks, and sequences longer than one
    rng = random.Random(2024)
    cases: list[tuple[SequenceKind, int, int | None]] = [
        ("dna", 5, None),  # k = 5, s = 1
        ("dna", 12, 4),  # k < s
        ("dna", 12, 10),  # k > s
        ("dna", 30, None),  # k = 20 > s = 11, sequences shorter than k
        ("dna", 60, 8),  # k < s
        ("dna", 60, None),  # k = 41, s = 20
        ("protein", 8, 3),
        ("protein", 30, None),  # k = 12, s = 19
    ]
    for kind, overlap, k in cases:
        letters = rng.choice(["AC", "ACG", "ACGTN"]) if kind == "dna" else "ACDW"
        tests = [rand_seq(rng, rng.randint(0, 3 * overlap), letters) for _ in range(60)]
        tests += tests[:3]  # duplicates
        queries: list[str] = []
        for _ in range(300):
            y = rng.choice(tests)
            if kind == "dna" and rng.random() < 0.3:
                y = rc(y)
            i = rng.randint(0, len(y))
            j = rng.randint(i, len(y))
            pad = rand_seq(rng, rng.randint(0, 6), letters)
            queries.append(
                rng.choice(
                    [y, y[i:j], pad + y, y + pad, pad + y[i:] + pad, rand_seq(rng, j, letters)]
                )
            )
        lengths = {kind: k} if k else None
        index = LeakIndex({kind: overlap}, kmer_length=lengths)  # type: ignore[dict-item]
        for y in tests:
            index.add(kind, y)
        got = index.find(kind, queries)
        want = [brute(tests, kind, x, overlap) for x in queries]
        assert got == want, (kind, overlap, k)
        assert len(index) == len(set(tests))
        assert {w for w in want if w} >= (
            {"exact", "contained", "contains"}
            | ({"reverse_complement"} if kind == "dna" else set())
        ), (kind, overlap, k)


def test_sequence_longer_than_a_chunk() -> None:
    rng = random.Random(5)
    genome = rand_seq(rng, leaks._CHUNK + 1000)
    index = index_of([genome, T70])
    queries = [genome[-300:], rc(genome)[:80], genome, T400 + T70, T400]
    assert index.find("dna", queries) == ["contained", "contained", "exact", "contains", None]
    assert index_of([T70]).find("dna", [genome[:500_000] + T70 + genome[500_000:]]) == ["contains"]


_FORKED: LeakIndex | None = None


def _find_in_child(queries: list[str]) -> list[LeakKind | None]:
    assert _FORKED is not None
    return _FORKED.find("dna", queries)


def test_index_works_in_a_forked_child() -> None:
    """Built in the parent, used by fork workers (as build_sft does), which see a global."""
    index = index_of([T70, T400])
    index.freeze()
    globals()["_FORKED"] = index
    queries = [[T70, rc(T400), HOST], [HOST[:10] + T70, T400[5:300]]]
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.map(_find_in_child, queries)
    finally:
        globals()["_FORKED"] = None
    assert got == [["exact", "reverse_complement", None], ["contains", "contained"]]


def test_api_rules() -> None:
    index = LeakIndex()
    assert len(index) == 0
    assert index.find("dna", [T70]) == [None]  # finds on an empty index: it freezes
    with pytest.raises(RuntimeError, match="after freeze"):
        index.add("dna", T70)
    index = LeakIndex()
    for seq in (T70, T70, T400, PROTEIN):
        index.add("dna" if seq != PROTEIN else "protein", seq)
    assert len(index) == 3
    index.freeze()
    index.freeze()  # twice is harmless
    assert len(index) == 3
    assert index.find("dna", []) == []
    with pytest.raises(ValueError, match="unknown sequence kind"):
        index.find("rna", [T70])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown sequence kind"):
        LeakIndex().add("rna", T70)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        LeakIndex({"dna": 0})
    with pytest.raises(ValueError, match="kmer_length"):
        LeakIndex({"dna": 20}, kmer_length={"dna": 21})
    assert leaks.default_kmer_length("dna", 50) == 31
    assert leaks.default_kmer_length("protein", 30) == 12
    assert leaks.default_kmer_length("dna", 10) == 10
