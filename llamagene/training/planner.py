"""``llamagene plan``: what a training stage will do on N GPUs, before asking for them: the
batch plan (:mod:`.batch_plan`) and a per-GPU memory estimate (:mod:`.memory`).

    print(plan_report(pipeline, "pretrain", gpus=32))

The model's shape comes from the base's ``config.json`` (a local folder; for ``finetune``,
pretrain's export when it exists) or from ``base_model_config``; the vocabulary from
merge_vocab's tokenizer once it ran, else from train_bpe's sizes (an upper bound: pieces the
base already has are not added twice).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamagene.errors import ConfigError, StageError
from llamagene.training.batch_plan import BatchPlan, launcher_processes

if TYPE_CHECKING:
    from llamagene.pipeline import Pipeline
    from llamagene.training.memory import MemoryEstimate


def training_stage(pipeline: Pipeline, name: str | None) -> tuple[Any, Any]:
    """The (stage, config) to plan: ``name``, or the first configured training stage."""
    from llamagene.pipeline import TRAINING_STAGES

    configs = {stage.name: (stage, cfg) for stage, cfg in pipeline.stages()}
    trainable = [n for n in configs if n in TRAINING_STAGES]
    chosen = name or (trainable[0] if trainable else None)
    if chosen not in trainable:
        what = f"--stage {name}" if name else "this pipeline"
        raise ConfigError(
            str(pipeline.path),
            [f"{what}: plan is for a configured training stage ({', '.join(trainable) or 'none'})"],
        )
    return configs[chosen]


def plan_report(pipeline: Pipeline, name: str | None, gpus: int | None) -> str:
    stage, cfg = training_stage(pipeline, name)
    processes = gpus or launcher_processes(None) or 1
    plan: BatchPlan = stage.plan(cfg, pipeline.run_dir, processes)
    lines = [f"{stage.name} of {pipeline.path} on {processes} process(es)", "", "batch plan:"]
    lines += [f"  {line}" for line in plan.lines()]
    lines.append("")
    try:
        lines.append(memory_estimate(pipeline, stage.name, cfg, plan).table())
    except StageError as err:
        lines.append(f"memory per GPU: not estimated ({err})")
    return "\n".join(lines) + "\n"


def memory_estimate(pipeline: Pipeline, stage: str, cfg: Any, plan: BatchPlan) -> MemoryEstimate:
    """The per-GPU memory of one step of ``stage`` under ``plan`` (see :mod:`.memory`)."""
    from llamagene.training.memory import deepspeed_bucket_elements, estimate_memory
    from llamagene.training.model import padded_vocab_size
    from llamagene.training.run import deepspeed_config
    from llamagene.training.spec import zero_stage

    config = _model_config(pipeline, stage, cfg)
    base_rows, tokenizer_size = _vocabulary(pipeline, config)
    rows = padded_vocab_size(tokenizer_size)
    ds = deepspeed_config(cfg.deepspeed) if cfg.deepspeed is not None else None
    training = cfg.training
    if stage == "pretrain":
        seq_len = cfg.block_size
    else:  # instruction rows: at most max_tokens each (an upper bound)
        seq_len = cfg.max_tokens or int(config.get("max_position_embeddings", 4096))
    return estimate_memory(
        config,
        vocab_rows=rows,
        new_rows=tokenizer_size - base_rows,
        lora_r=cfg.lora.r,
        lora_targets=cfg.lora.target_modules,
        lora_dropout=cfg.lora.dropout,
        embedding_training=cfg.embedding_training,
        micro_batch=plan.micro_batch,
        seq_len=seq_len,
        world=plan.processes,
        zero_stage=zero_stage(ds),
        precision="fp32" if training.precision == "fp32" else "bf16",
        gradient_checkpointing=training.gradient_checkpointing,
        chunked_loss_tokens=training.loss_chunk_tokens,
        attn_implementation=training.attn_implementation,
        bucket_elements=deepspeed_bucket_elements(ds, int(config["hidden_size"])) if ds else 0,
    )


def _model_config(pipeline: Pipeline, stage: str, cfg: Any) -> dict[str, Any]:
    """The base's LLaMA config: its folder's config.json, or the one it is built from."""
    from llamagene.training.model import TINY_LLAMA

    folder: Path | None = cfg.base_model
    if stage == "finetune" and folder is None:
        merged = pipeline.run_dir / "pretrain" / "merged"
        if (merged / "config.json").is_file():
            folder = merged
        else:  # before pretrain ran: the base it trains
            pretrain = getattr(pipeline.config.stages, "pretrain", None)
            if pretrain is None:
                raise StageError("finetune has no base_model and no pretrain stage")
            return _model_config(pipeline, "pretrain", pretrain)
    if folder is None:
        base_rows = _vocabulary(pipeline, {})[0]  # the base tokenizer's pieces
        return {**TINY_LLAMA, **(cfg.base_model_config or {}), "vocab_size": base_rows}
    try:
        loaded: dict[str, Any] = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StageError(f"cannot read {folder / 'config.json'}: {err}") from None
    return loaded


def _vocabulary(pipeline: Pipeline, config: dict[str, Any]) -> tuple[int, int]:
    """(base pieces, merged tokenizer size): from merge_vocab's output, else estimated."""
    from llamagene.training.model import tokenizer_meta

    tokenizer_dir = pipeline.run_dir / "merge_vocab" / "tokenizer"
    if (tokenizer_dir / "llamagene_tokenizer.json").is_file():
        meta = tokenizer_meta(tokenizer_dir)
        return int(meta["base_vocab_size"]), int(meta["vocab_size"])
    base = int(config.get("vocab_size") or _base_tokenizer_size(pipeline))
    bpe = getattr(pipeline.config.stages, "train_bpe", None)
    added = 0
    if bpe is not None:
        added += bpe.dna_vocab_size if bpe.dna_inputs else 0
        added += bpe.protein_vocab_size if bpe.protein_inputs else 0
    return base, base + added


def _base_tokenizer_size(pipeline: Pipeline) -> int:
    """The pieces of merge_vocab's base SentencePiece model."""
    import sentencepiece as spm

    merge = getattr(pipeline.config.stages, "merge_vocab", None)
    if merge is None or not Path(merge.base_tokenizer).is_file():
        raise StageError("the base tokenizer's size is unknown (no merge_vocab.base_tokenizer)")
    processor = spm.SentencePieceProcessor(model_file=str(merge.base_tokenizer))
    return int(processor.get_piece_size())
