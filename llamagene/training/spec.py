"""What a training worker is asked to do: the settings every training stage shares, and the
spec a stage writes as JSON for its workers (:mod:`llamagene.training.worker`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from llamagene.config import StrictModel
from llamagene.manifest import write_text_atomic
from llamagene.training.model import EmbeddingInit, EmbeddingTraining

Precision = Literal["auto", "bf16", "fp32"]
AttentionImplementation = Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"]
#: Fault injection for resume tests: SIGKILL this process right after the checkpoint of this step.
KILL_AFTER_SAVE_ENV = "LLAMAGENE_KILL_AFTER_SAVE_STEP"
#: A file whose appearance asks training to save a checkpoint and stop (a SLURM job's signal
#: trap touches it); SIGUSR1 or SIGTERM to a training process does the same.
STOP_FILE_ENV = "LLAMAGENE_STOP_FILE"
#: Written into the work folder by rank 0 when training stopped on request (the step).
STOPPED_FILE = "stopped.json"
#: Exit code of a stage that stopped on request: a rerun resumes (EX_TEMPFAIL).
STOPPED_EXIT_CODE = 75
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
#: Figures of :func:`train` that differ between identical runs (wall clock, memory, where a
#: rerun resumed): a stage writes them to ``timings.json``, apart from its reproducible report.
TIMING_FIGURES = (
    "resumed_from_step", "train_seconds_this_run", "tokens_per_s", "peak_rss_mb_rank0",
    "peak_gpu_memory_gb",
)  # fmt: skip


class TrainSettings(StrictModel):
    """How to train: batch, schedule, precision, checkpoints, logging."""

    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps; when unset, ``epochs`` passes over the training blocks."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data when ``max_steps`` is unset."""
    micro_batch_size: int = Field(4, ge=1)
    """Sequences per process per forward pass."""
    global_batch_size: int = Field(32, ge=1)
    """Sequences per optimizer step across all processes; gradient accumulation is derived
    (global / (micro x processes)), so results do not depend on the number of processes."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate (of the LoRA adapters)."""
    embedding_lr: float | None = Field(None, gt=0)
    """Peak learning rate of the trained embedding rows (new rows, or the embed_tokens and
    lm_head copies); default: ``learning_rate``. Same schedule, no weight decay."""
    lr_warmup_steps: int = Field(0, ge=0)
    """Linear warmup, then cosine decay to ``min_lr_ratio`` x the peak."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Where the cosine ends, as a fraction of the peak learning rate."""
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping."""
    precision: Precision = "auto"
    """``auto``: bf16 on a GPU that supports it, else fp32. fp16 is not offered: trained
    embedding rows overflow in it."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass (less memory, ~30% more compute)."""
    save_every_steps: int = Field(200, ge=1)
    """Checkpoint interval; a rerun resumes from the newest checkpoint."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many checkpoints to keep while training (older ones are deleted)."""
    eval_every_steps: int = Field(200, ge=1)
    """Validation loss interval (and at the end)."""
    keep_best_checkpoint: bool = False
    """Export the checkpoint with the lowest validation loss instead of the last one (it is
    kept through checkpoint rotation; needs ``save_every_steps`` a multiple of
    ``eval_every_steps``)."""
    log_every_steps: int = Field(10, ge=1)
    attn_implementation: AttentionImplementation = "sdpa"
    """``sdpa`` (PyTorch's fused attention), ``eager``, or FlashAttention
    (``flash_attention_2`` / ``_3``, where ``flash-attn`` is installed and the GPU supports
    it; corpus blocks are then flattened into one row per micro batch)."""
    loss_chunk_tokens: int | None = Field(None, ge=1)
    """Compute the loss this many tokens at a time (:mod:`.loss`): the logits of a ~90k-row
    vocabulary are then never whole (a micro batch of 8 x 1,024 tokens saves ~7 GB); the loss
    and gradients are the same to float rounding. None: transformers' loss."""
    torch_compile: bool = False
    """Compile the model with ``torch.compile`` (a slow first step, then faster ones)."""
    seed: int = 42
    """Seeds data order, dropout and LoRA initialisation."""


@dataclass(frozen=True)
class ModelSpec:
    base_model_dir: str | None
    base_model_config: dict[str, Any] | None
    seed: int
    tokenizer_dir: str
    embedding_init: EmbeddingInit
    embedding_training: EmbeddingTraining
    lora: dict[str, Any]


@dataclass(frozen=True)
class TrainSpec:
    """Everything a worker needs; written as JSON by the stage."""

    model: ModelSpec
    train: dict[str, Any]
    data_dir: str
    """A packed pretraining corpus (:mod:`.corpus`) or instruction rows (:mod:`.sft_data`)."""
    work_dir: str
    data_kind: Literal["corpus", "sft"] = "corpus"
    batching: Literal["packed", "padded"] = "packed"
    """Instruction rows: packed with restarting positions, or padded and grouped by length."""
    deepspeed_config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainSpec:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{**data, "model": ModelSpec(**data["model"])})


def resolve_precision(precision: Precision) -> Literal["bf16", "fp32"]:
    import torch

    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def zero_stage(config: dict[str, Any] | None) -> int | None:
    """The ZeRO stage a DeepSpeed config asks for (None without DeepSpeed)."""
    if config is None:
        return None
    stage = config.get("zero_optimization", {}).get("stage", 0)
    return int(stage)
