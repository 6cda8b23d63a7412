"""The tiny ``finetune`` setup shared by its test modules: the fixtures' tokenizer, a small
instruction recipe (a promoter table task, the demo's translation task and English chats), a
LLaMA base folder built from a config, and 8 optimizer steps with a checkpoint every 4."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FIXTURES, write_pipeline
from pretrain_setup import run_cli

REPO = Path(__file__).resolve().parents[2]
TASKS = FIXTURES / "tasks"
TRANSLATE = REPO / "pipelines" / "demo" / "tasks" / "translate.yaml"
BASE_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 1024,
    "vocab_size": 32000,  # the base tokenizer's: finetune grows it to the merged vocabulary
    "tie_word_embeddings": False,
}
FINETUNE: dict[str, Any] = {
    "base_model": "base",
    "lora": {"r": 4, "dropout": 0.0},  # dropout masks differ between 1 and 2 processes
    "training": {
        "max_steps": 8,
        "micro_batch_size": 2,
        "global_batch_size": 4,
        "learning_rate": 0.01,
        "save_every_steps": 4,
        "eval_every_steps": 4,
        "log_every_steps": 2,
    },
}
RECIPE: dict[str, Any] = {
    "seed": 5,
    "tasks": [
        {"data": {"source": "table", "spec": str(TASKS / "table" / "promoter.yaml")}},
        {"data": {"source": "table", "spec": str(TRANSLATE)}, "weight": 0.1},
    ],
    "english": [{"path": str(TASKS / "instructions" / "chat.jsonl"), "format": "chat"}],
    "english_share": 0.1,
    "length": {"max_tokens": 1024},
}


def save_base(folder: Path, **config: Any) -> Path:
    """A LLaMA built from ``BASE_CONFIG`` (seeded), saved as a HF model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**{**BASE_CONFIG, **config})).save_pretrained(str(folder))
    return folder


def setup_pipeline(root: Path, **finetune: Any) -> Path:
    """``root/pipeline.yaml`` (run dir ``root/run``), ``root/recipe.yaml`` and ``root/base``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    save_base(root / "base")
    settings = {
        **FINETUNE,
        **finetune,
        "base_model": str(root / finetune.get("base_model", "base")),
    }
    return write_pipeline(root, build_sft={"recipe": "recipe.yaml"}, finetune=settings)


def logged(run_dir: Path, key: str = "loss") -> dict[int, float]:
    lines = (run_dir / "finetune" / "logs" / "metrics.jsonl").read_text().splitlines()
    return {rec["step"]: rec[key] for rec in map(json.loads, lines) if key in rec}


def reference_run(factory: pytest.TempPathFactory) -> Path:
    """The run dir of an uninterrupted one-process run, made once per session (in a
    subprocess, like the runs it is compared with)."""
    root = factory.getbasetemp() / "finetune-reference"
    if not (root / "done").is_file():
        shutil.rmtree(root, ignore_errors=True)
        done = run_cli("run", str(setup_pipeline(root)))
        assert done.returncode == 0, done.stderr[-3000:]
        (root / "done").write_text("")
    return root / "run"
