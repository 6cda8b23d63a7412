"""Benchmark llamagene.sft.leaks.LeakIndex at GUE scale on random DNA with planted leaks.

Run (from the repository root; ``--quick`` is 30,000 rows, a few seconds):

    .venv/bin/python tests/bench/leak_bench.py [--rows 600000] [--quick] [--seed 0]

The rows imitate GUE's DNA tasks (share of rows, sequence length): EMP 27% 500 bp, prom_300 20%
300 bp, prom_core 20% 70 bp, tf 10% 100 bp, mouse 5% 100 bp, splice 7% 400 bp, covid 11% 1000 bp,
each split 80/10/10 into train/dev/test, uniform random ACGT with a rare N. Then leaks are
planted into train/dev rows, a few hundred of each kind: a test sequence, its reverse complement,
a window of a test sequence or of its reverse complement (``contained``), and a prom_core test
sequence or its reverse complement written over a prom_300 training row (``contains``, at offsets
0, the very end and in between). The index is built from every test sequence and queried with
every train and dev sequence; each planted leak must be found with its kind, and nothing else.

Figures: rows, bases indexed and queried, build and query seconds (one core), RSS after making
the data and peak RSS, and the number found per kind. ``run_leak_bench`` returns them for other
scripts (``from leak_bench import run_leak_bench``); importing this module does nothing else.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

from llamagene.sequences import reverse_complement
from llamagene.sft.leaks import LEAK_KINDS, LeakIndex, LeakKind

#: (name, share of rows, length in bp)
DATASETS = (
    ("EMP", 0.27, 500),
    ("prom_300", 0.20, 300),
    ("prom_core", 0.20, 70),
    ("tf", 0.10, 100),
    ("mouse", 0.05, 100),
    ("splice", 0.07, 400),
    ("covid", 0.11, 1000),
)
SPLITS = (("train", 0.8), ("dev", 0.1), ("test", 0.1))
N_RATE = 1e-4  # share of N among bases
_LETTERS = np.frombuffer(b"ACGT", dtype=np.uint8)


def random_dna(rng: np.random.Generator, count: int, length: int) -> list[str]:
    """``count`` uniform random sequences of ``length`` bp, a few bases turned into N."""
    out: list[str] = []
    per_block = max(1, 4_000_000 // max(length, 1))  # bounded temporaries
    for first in range(0, count, per_block):
        n = min(per_block, count - first)
        codes = _LETTERS[rng.integers(0, 4, n * length, dtype=np.uint8)]
        codes[rng.random(codes.size) < N_RATE] = ord("N")
        text = codes.tobytes().decode("ascii")
        out.extend(text[i * length : (i + 1) * length] for i in range(n))
    return out


def make_rows(total_rows: int, rng: np.random.Generator) -> dict[tuple[str, str], list[str]]:
    """GUE-like sequences by (dataset, split)."""
    rows: dict[tuple[str, str], list[str]] = {}
    for name, share, length in DATASETS:
        n = round(total_rows * share)
        counts = [round(n * fraction) for _, fraction in SPLITS[:-1]]
        counts.append(n - sum(counts))
        for (split, _), count in zip(SPLITS, counts, strict=True):
            rows[name, split] = random_dna(rng, count, length)
    return rows


def plant(
    rows: dict[tuple[str, str], list[str]], per_kind: int, rng: np.random.Generator
) -> tuple[list[str], list[str], dict[int, LeakKind]]:
    """Test sequences, queries (train + dev, leaks planted) and the planted kind by query index."""
    tests = [seq for (_, split), seqs in rows.items() if split == "test" for seq in seqs]
    queries: list[str] = []
    where: dict[str, list[int]] = {}  # dataset: indices of its train/dev rows in queries
    for (name, split), seqs in rows.items():
        if split != "test":
            where.setdefault(name, []).extend(range(len(queries), len(queries) + len(seqs)))
            queries.extend(seqs)
    cores = [i for i, seq in enumerate(tests) if len(seq) == 70]
    longs = [i for i, seq in enumerate(tests) if len(seq) >= 300]
    prom300 = rng.permutation(where["prom_300"])[:per_kind].tolist()
    taken = set(prom300)
    others = [i for i in rng.permutation(len(queries)).tolist() if i not in taken]
    expected: dict[int, LeakKind] = {}
    for n, q in enumerate(others[: 3 * per_kind]):
        kind: LeakKind = LEAK_KINDS[n % 3]
        if kind == "contained":
            test = tests[longs[int(rng.integers(len(longs)))]]
            width = int(rng.integers(50, len(test)))
            start = int(rng.integers(0, len(test) - width + 1))
            window = test[start : start + width]
            queries[q] = reverse_complement(window) if n % 2 else window
        else:
            test = tests[int(rng.integers(len(tests)))]
            queries[q] = test if kind == "exact" else reverse_complement(test)
        expected[q] = kind
    for n, q in enumerate(prom300):
        core = tests[cores[int(rng.integers(len(cores)))]]
        core = reverse_complement(core) if n % 2 else core
        host = queries[q]
        offset = (0, len(host) - len(core), int(rng.integers(1, len(host) - len(core))))[n % 3]
        queries[q] = host[:offset] + core + host[offset + len(core) :]
        expected[q] = "contains"
    return tests, queries, expected


def rss_mb() -> float:
    """Current resident set size in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_leak_bench(total_rows: int = 600_000, seed: int = 0) -> dict[str, float]:
    """Build the index from the test rows, query the rest; figures as a dict (see module doc)."""
    rng = np.random.default_rng(seed)
    per_kind = max(1, min(300, total_rows // 1000))
    tests, queries, expected = plant(make_rows(total_rows, rng), per_kind, rng)
    data_rss = rss_mb()

    start = time.perf_counter()
    index = LeakIndex()
    for seq in tests:
        index.add("dna", seq)
    index.freeze()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    found = index.find("dna", queries)
    query_s = time.perf_counter() - start

    missed = sum(found[q] != kind for q, kind in expected.items())
    unexpected = sum(kind is not None and q not in expected for q, kind in enumerate(found))
    figures: dict[str, float] = {
        "rows": len(tests) + len(queries),
        "test_rows": len(tests),
        "query_rows": len(queries),
        "indexed_distinct": len(index),
        "bases_indexed": sum(map(len, tests)),
        "bases_queried": sum(map(len, queries)),
        "build_s": round(build_s, 2),
        "query_s": round(query_s, 2),
        "data_rss_mb": round(data_rss),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "planted": len(expected),
        "missed": missed,
        "unexpected": unexpected,
    }
    for kind in LEAK_KINDS:
        figures[f"found_{kind}"] = sum(f == kind for f in found)
    if missed or unexpected:
        raise AssertionError(f"leak index wrong on planted data: {figures}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600_000, help="rows over all splits")
    parser.add_argument("--quick", action="store_true", help="30,000 rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    figures = run_leak_bench(30_000 if args.quick else args.rows, args.seed)
    width = max(map(len, figures))
    for name, value in figures.items():
        print(f"{name:<{width}}  {value:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
