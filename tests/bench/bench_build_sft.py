"""Benchmark ``build_sft`` on a generated GUE-sized tree: 28 datasets, ~600k rows in all.

    .venv/bin/python tests/bench/bench_build_sft.py [--rows 600000] [--work-dir DIR] [--quick]

The tree has GUE's layout and row lengths (EMP 500 bp, prom 300 / 70 bp, tf and mouse 100 bp,
splice 400 bp, covid 1,000 bp), 80/10/10 splits and random bases and labels (speed does not
depend on what the sequences mean). It runs the real stage through a pipeline (train_bpe +
merge_vocab of the demo first, for the tokenizer), with every shipped GUE template, max_tokens
512 and test-overlap removal on. Prints rows/s, wall time and peak memory (goal: < 60 s and
the memory printed, on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llamagene.cli import DEMO_PIPELINE  # noqa: E402
from llamagene.pipeline import load_pipeline  # noqa: E402
from llamagene.tasks.gue import GUE_DATASETS  # noqa: E402

#: (share of all rows, sequence length) per GUE group, close to the real benchmark.
GROUPS = {"EMP": (0.27, 500), "prom/prom_300": (0.20, 300), "prom/prom_core": (0.20, 70),
          "tf": (0.10, 100), "mouse": (0.05, 100), "splice": (0.07, 400),
          "virus": (0.11, 1000)}  # fmt: skip


def make_tree(root: Path, total_rows: int) -> int:
    rng = random.Random(0)
    written = 0
    for name, info in GUE_DATASETS.items():
        group = next(g for g in GROUPS if name.startswith(g))
        share, length = GROUPS[group]
        peers = sum(1 for n in GUE_DATASETS if n.startswith(group))
        rows = int(total_rows * share / peers)
        labels = [c.label for c in info.classes]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, fraction in (("train", 0.8), ("dev", 0.1), ("test", 0.1)):
            with (folder / f"{split}.csv").open("w") as out:
                out.write("sequence,label\n")
                for _ in range(max(1, int(rows * fraction))):
                    seq = "".join(rng.choices("ACGT", k=length))
                    out.write(f"{seq},{rng.choice(labels)}\n")
                    written += 1
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=600_000)
    parser.add_argument("--quick", action="store_true", help="30,000 rows")
    parser.add_argument("--work-dir", type=Path)
    args = parser.parse_args()
    rows = 30_000 if args.quick else args.rows
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_build_sft_"))
    run_dir = work / "run"
    load_pipeline(DEMO_PIPELINE, [f"run_dir={run_dir}"]).run(only=["train_bpe", "merge_vocab"])
    start = time.perf_counter()
    written = make_tree(work / "GUE", rows)
    print(f"generated {written:,} rows in 28 datasets in {time.perf_counter() - start:.1f} s")
    recipe = {"seed": 1, "tasks": [{"data": {"source": "gue", "root": str(work / "GUE")}}],
              "length": {"max_tokens": 512}}  # fmt: skip
    (work / "sft.yaml").write_text(yaml.safe_dump(recipe))
    pipeline = load_pipeline(
        DEMO_PIPELINE,
        [f"run_dir={run_dir}", f"build_sft.recipe={work / 'sft.yaml'}"],
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    pipeline.run(only=["build_sft"], force=True)
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    worker_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    out = run_dir / "build_sft"
    counts = {s: sum(1 for _ in (out / f"{s}.jsonl").open()) for s in ("train", "dev", "test")}
    print(f"build_sft: {written:,} rows -> {counts} in {seconds:.1f} s "
          f"({written / seconds:,.0f} rows/s) on {os.cpu_count()} cores; goal < 60 s")  # fmt: skip
    print(f"peak memory: {peak_gb:.2f} GB in the main process (before the stage: "
          f"{before / 2**20:.2f} GB), {worker_gb:.2f} GB in the largest worker")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
