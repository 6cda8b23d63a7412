"""The tiny ``pretrain`` setup shared by the pretrain test modules: a LLaMA built from a config,
a three-source recipe over the fixtures, and 12 optimizer steps with a checkpoint every 4.

The uninterrupted reference run is made once per test session (:func:`reference_run`) and
shared, read-only, by the modules that compare other runs with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FIXTURES, GENOMES, write_pipeline

PRETRAIN: dict[str, Any] = {
    "base_model_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    },
    "data_recipe": "recipe.yaml",
    "block_size": 64,
    "lora": {"r": 4, "dropout": 0.0},  # dropout masks differ between 1 and 2 processes
    "embedding_training": "trainable_tokens",
    "data_workers": 1,
    "training": {
        "max_steps": 12,
        "micro_batch_size": 2,
        "global_batch_size": 4,
        "learning_rate": 0.01,
        "save_every_steps": 4,
        "eval_every_steps": 6,
        "log_every_steps": 2,
        "gradient_checkpointing": True,
    },
}
RECIPE = {
    "seed": 7,
    "validation_fraction": 0.1,
    "sources": [
        {
            "name": "dna",
            "kind": "dna",
            "paths": [str(GENOMES / "genes_a.fa"), str(GENOMES / "genes_b.fa.gz")],
            "window_chars": 512,
        },
        {"name": "protein", "kind": "protein", "paths": [str(GENOMES / "proteins.faa")]},
        {
            "name": "english",
            "kind": "text",
            "paths": [str(FIXTURES / "corpus" / "prose.txt")],
            "weight": 0.05,  # the prose is tiny: a larger share would shrink the whole mix
        },
    ],
}


def setup_pipeline(root: Path, **pretrain: Any) -> Path:
    """``root/pipeline.yaml`` (run dir ``root/run``) and ``root/recipe.yaml``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    return write_pipeline(root, pretrain={**PRETRAIN, **pretrain})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``llamagene ARGS`` in a subprocess with one CPU thread (float sums in a fixed order)."""
    return subprocess.run(
        [sys.executable, "-m", "llamagene", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=600,
        check=False,
    )


def logged_losses(run_dir: Path) -> dict[int, float]:
    return _losses(run_dir / "pretrain" / "logs" / "metrics.jsonl")


def logged_losses_of(stage_work: Path) -> dict[int, float]:
    """The losses logged so far by the unfinished run in ``<run_dir>/.work/pretrain``."""
    (metrics,) = stage_work.glob("*/logs/metrics.jsonl")
    return _losses(metrics)


def _losses(metrics: Path) -> dict[int, float]:
    lines = metrics.read_text().splitlines()
    return {rec["step"]: rec["loss"] for rec in map(json.loads, lines) if "loss" in rec}


def reference_run(factory: pytest.TempPathFactory) -> Path:
    """The run dir of an uninterrupted one-process run (in a subprocess, like the runs it is
    compared with), made on the first call of the session and found again by later ones."""
    root = factory.getbasetemp() / "pretrain-reference"
    if not (root / "done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        pipeline = setup_pipeline(root)
        done = run_cli("run", str(pipeline))
        assert done.returncode == 0, done.stderr[-3000:]
        (root / "done").write_text("")
    return root / "run"
