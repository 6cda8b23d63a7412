"""Benchmark ``build_sft`` on generated GUE-sized trees, and its leak index on its own.

    .venv/bin/python tests/bench/bench_build_sft.py [--section full|trim|leaks|all] [--quick]
                                                    [--work-dir DIR]

Sections (each prints its figures; the goal for each is < 60 s on 2 cores):

- ``full``: 600,000 rows in GUE's 28 datasets, split 80/10/10, GUE's lengths (EMP 500 bp, prom
  300 / 70 bp, tf and mouse 100 bp, splice 400 bp, covid 1,000 bp), every shipped GUE template,
  ``max_tokens: 512`` (no row needs trimming), leak check on.
- ``trim``: a trim-heavy build: 600,000 *training* rows of GUE's lengths (plus 5% as many dev
  and test rows each) at ``max_tokens: 128``, where every EMP, prom_300, splice and covid row is
  trimmed around its declared signal (``eval_overflow: trim`` so dev and test may be cut too),
  leak check on.
- ``leaks``: the leak index alone (``tests/bench/leak_bench.py``): built from 60,000 test
  sequences, queried with 540,000 train and dev sequences, with planted leaks of every kind.

The trees hold random bases and labels (speed does not depend on what the sequences mean). The
stage runs for real through a pipeline, after train_bpe + merge_vocab of the demo (its tokenizer:
Mistral's 32,000 pieces + 4,000 DNA + 4,000 protein). Prints rows/s, wall time, peak memory.
``--quick`` divides every row count by 20.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from leak_bench import run_leak_bench  # noqa: E402

from llamagene.cli import DEMO_PIPELINE  # noqa: E402
from llamagene.pipeline import load_pipeline  # noqa: E402
from llamagene.tasks.gue import GUE_DATASETS  # noqa: E402

#: (share of all rows, sequence length) per GUE group, close to the real benchmark.
GROUPS = {"EMP": (0.27, 500), "prom/prom_300": (0.20, 300), "prom/prom_core": (0.20, 70),
          "tf": (0.10, 100), "mouse": (0.05, 100), "splice": (0.07, 400),
          "virus": (0.11, 1000)}  # fmt: skip


def make_tree(root: Path, rows_per_split: dict[str, int]) -> int:
    """A GUE tree under ``root`` with about ``rows_per_split[split]`` rows in each split."""
    rng = random.Random(0)
    written = 0
    for name, info in GUE_DATASETS.items():
        group = next(g for g in GROUPS if name.startswith(g))
        share, length = GROUPS[group]
        peers = sum(1 for n in GUE_DATASETS if n.startswith(group))
        labels = [c.label for c in info.classes]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, total in rows_per_split.items():
            with (folder / f"{split}.csv").open("w") as out:
                out.write("sequence,label\n")
                for _ in range(max(1, int(total * share / peers))):
                    seq = "".join(rng.choices("ACGT", k=length))
                    out.write(f"{seq},{rng.choice(labels)}\n")
                    written += 1
    return written


def tokenizer_run(work: Path) -> Path:
    run_dir = work / "run"
    load_pipeline(DEMO_PIPELINE, [f"run_dir={run_dir}"]).run(only=["train_bpe", "merge_vocab"])
    return run_dir


def build(
    work: Path, run_dir: Path, name: str, rows: dict[str, int], length: dict[str, Any]
) -> None:
    start = time.perf_counter()
    written = make_tree(work / name, rows)
    print(
        f"[{name}] generated {written:,} rows in 28 datasets in {time.perf_counter() - start:.1f} s"
    )
    recipe = {"seed": 1, "tasks": [{"data": {"source": "gue", "root": str(work / name)}}],
              "length": length}  # fmt: skip
    (work / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    pipeline = load_pipeline(
        DEMO_PIPELINE, [f"run_dir={run_dir}", f"build_sft.recipe={work / f'{name}.yaml'}"]
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    pipeline.run(only=["build_sft"], force=True)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    worker_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    out = run_dir / "build_sft"
    counts = {s: sum(1 for _ in (out / f"{s}.jsonl").open()) for s in ("train", "dev", "test")}
    totals = json.loads((out / "summary.json").read_text())["totals"]
    print(f"[{name}] build_sft: {written:,} rows -> {counts} in {seconds:.1f} s "
          f"({written / seconds:,.0f} rows/s) on {len(os.sched_getaffinity(0))} cores; "
          f"goal < 60 s")  # fmt: skip
    print(
        f"[{name}] trimmed {totals['trimmed']:,}, dropped too long "
        f"{totals['dropped_too_long']:,}, dropped as leaks {totals['dropped_leaks']:,}"
    )
    print(f"[{name}] peak memory: {peak_gb:.2f} GB in the main process (before the stage: "
          f"{before / 2**20:.2f} GB), {worker_gb:.2f} GB in the largest worker")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", choices=("full", "trim", "leaks", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="every row count divided by 20")
    parser.add_argument("--work-dir", type=Path)
    args = parser.parse_args()
    scale = 20 if args.quick else 1
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_build_sft_"))
    sections = ("full", "trim", "leaks") if args.section == "all" else (args.section,)
    run_dir = tokenizer_run(work) if {"full", "trim"} & set(sections) else work
    if "full" in sections:
        total = 600_000 // scale
        rows = {"train": int(total * 0.8), "dev": int(total * 0.1), "test": int(total * 0.1)}
        build(work, run_dir, "full", rows, {"max_tokens": 512})
    if "trim" in sections:
        train = 600_000 // scale
        rows = {"train": train, "dev": train // 20, "test": train // 20}
        build(work, run_dir, "trim", rows, {"max_tokens": 128, "eval_overflow": "trim"})
    if "leaks" in sections:
        figures = run_leak_bench(600_000 // scale)
        print(f"[leaks] index of {figures['test_rows']:,.0f} test sequences "
              f"({figures['bases_indexed'] / 1e6:.1f} Mbp) built in {figures['build_s']:.2f} s; "
              f"{figures['query_rows']:,.0f} sequences ({figures['bases_queried'] / 1e6:.1f} "
              f"Mbp) queried in {figures['query_s']:.2f} s, one core; all "
              f"{figures['planted']:,.0f} planted leaks found; peak "
              f"{figures['peak_rss_mb']:,.0f} MB; goal < 60 s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
