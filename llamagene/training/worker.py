"""The training worker shared by the training stages: one process, or one rank of many.

    python -m llamagene.training SPEC.json                       # one process
    torchrun --nproc_per_node 8 --module llamagene.training SPEC.json
    deepspeed --num_gpus 8 --module llamagene.training SPEC.json

A stage writes a :class:`TrainSpec` (model, data, hyperparameters, where to write) and either
calls :func:`train` in its own process or starts this module under a launcher; every rank runs
the same code. HF ``Trainer`` does the loop, DeepSpeed (ZeRO-2 or 3) when the spec names a
config; the control flow that matters stays here:

- the data is pretraining blocks (``data_kind: corpus``) or instruction rows (``sft``, packed or
  padded; :mod:`.trainer` opens either); packed sequences need ``use_cache=False``, set here,
  for transformers to keep their documents or rows apart;
- the global batch is fixed by the config and gradient accumulation is derived from the world
  size, so 1 process and N processes take the same optimizer steps on the same blocks;
- a rerun resumes from the newest *complete* checkpoint in ``work_dir/checkpoints`` (model,
  optimizer, scheduler, RNG and data position), so an interrupted run ends where an
  uninterrupted one would; newer checkpoints that a kill or a full disk left incomplete are
  skipped, with a log line saying why, and removed (:func:`resume_checkpoint`);
- loss, learning rate, grad norm and tokens/s go to the console, to ``logs/metrics.jsonl`` and
  to TensorBoard (``logs/tensorboard``), at every checkpoint too; a resumed run drops log
  lines past its checkpoint;
- rank 0 writes the final adapter to ``work_dir/final``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamagene.errors import StageError
from llamagene.manifest import write_text_atomic
from llamagene.training.batch_plan import BatchPlan, settle_batch
from llamagene.training.checkpoints import (
    checkpoint_processes,
    checkpoint_step,
    load_trainable_weights,
    resume_checkpoint,
    trim_metrics,
)
from llamagene.training.loss import check_attention, use_chunked_loss
from llamagene.training.model import (
    GrownVocab,
    LoraSettings,
    attach_lora,
    build_base_model,
    count_parameters,
    grow_embeddings,
    held_parameters,
    tokenizer_meta,
)
from llamagene.training.spec import (
    CHECKPOINTS_DIR,
    FINAL_DIR,
    LOGS_DIR,
    STOPPED_FILE,
    ModelSpec,
    TrainSettings,
    TrainSpec,
    resolve_precision,
    zero_stage,
)
from llamagene.training.trainer import TrainingData, make_trainer, open_data, stopped_at_step

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, TrainingArguments


log = logging.getLogger("llamagene")


def save_config_base(spec: ModelSpec, work_dir: Path) -> Path:
    """``work_dir/base_model``: a base built from ``base_model_config`` (seeded), grown to
    the merged vocabulary, saved once (atomically) so that every training process, a resumed
    run and the export load the very same frozen weights, each through ``from_pretrained`` (a
    ZeRO-3 run then partitions them as they load). The stage calls this before starting its
    workers; the base of a config is small (tests, the demo, benchmarks)."""
    saved = work_dir / "base_model"
    if (saved / "config.json").is_file():
        return saved
    tokenizer_dir = Path(spec.tokenizer_dir)
    meta = tokenizer_meta(tokenizer_dir)
    model = build_base_model(
        None, spec.base_model_config, spec.seed, int(meta["base_vocab_size"]), None
    )
    _log_growth(grow_embeddings(model, tokenizer_dir, spec.embedding_init))
    tmp = saved.with_name(f".base_model.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    if saved.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, saved)
    return saved


def build_model(spec: ModelSpec, work_dir: Path, dtype: torch.dtype | None) -> PreTrainedModel:
    """The base, grown to the merged vocabulary, before LoRA: ``base_model_dir``, or the base
    built from a config (:func:`save_config_base`). Under DeepSpeed ZeRO-3 (its config alive in
    ``TrainingArguments``) the weights are partitioned over the processes as they load, and the
    new rows are initialised with their matrices gathered."""
    if spec.base_model_dir is None:
        base_dir = save_config_base(spec, work_dir)
    else:
        base_dir = Path(spec.base_model_dir)
    tokenizer_dir = Path(spec.tokenizer_dir)
    meta = tokenizer_meta(tokenizer_dir)
    model = build_base_model(base_dir, None, spec.seed, int(meta["base_vocab_size"]), dtype)
    grown = grow_embeddings(model, tokenizer_dir, spec.embedding_init)
    if spec.base_model_dir is not None:
        _log_growth(grown)
    return model


def _log_growth(grown: GrownVocab) -> None:
    if grown.grown_before:
        log.info("vocabulary: the base has the merged tokenizer's %d rows already", grown.rows)
    else:
        log.info(
            "vocabulary %d -> %d rows (%d new pieces, %d composed from base tokens, init %s)",
            grown.base_vocab_size, grown.rows, len(grown.new_token_ids),
            grown.composed_from_base, grown.init,
        )  # fmt: skip


def train(spec: TrainSpec) -> dict[str, Any]:
    """Train (or resume) as the spec says; rank 0 writes ``work_dir/final``. Returns figures."""
    import torch
    from transformers import set_seed

    settings = TrainSettings.model_validate(spec.train)
    work_dir = Path(spec.work_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    stage = str(spec.extra.get("stage", "training"))
    plan = settle_batch(settings, world, f"{stage}.training")
    if plan.micro_batch != settings.micro_batch_size:
        log.warning("%s: batch plan: %s", stage, plan.lines()[1])
    precision = resolve_precision(settings.precision)
    on_gpu = torch.cuda.is_available()
    if spec.deepspeed_config is not None and not on_gpu:
        _avoid_deepspeed_jit()
    check_attention(settings.attn_implementation)  # before any weights load
    data = open_data(spec)

    checkpoints = work_dir / CHECKPOINTS_DIR
    keep_best = settings.keep_best_checkpoint and data.valid_rows > 0
    args = _training_arguments(spec, settings, plan, data, keep_best, precision, on_gpu)
    # the process group now: ZeRO-3's partitioned loading below reads the world size from it
    args._setup_devices  # noqa: B018 - a cached property: touching it sets the group up
    if spec.deepspeed_config is not None:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    # rank 0 looks first and removes incomplete checkpoints; the others then see what it left
    with args.main_process_first(local=False, desc="choosing the checkpoint to resume from"):
        resume = resume_checkpoint(
            checkpoints, spec.deepspeed_config, stage=stage, tidy=_is_rank_zero()
        )
    resumed_from = checkpoint_step(resume) if resume else 0

    dtype = torch.bfloat16 if precision == "bf16" and on_gpu else torch.float32
    base = build_model(spec.model, work_dir, dtype)  # partitioned as it loads under ZeRO-3
    base.set_attn_implementation(settings.attn_implementation)
    held_here, base_parameters = held_parameters(base)
    held = _per_process(held_here)
    log.info("base model: %s parameters; held per process after loading: %s",
             f"{base_parameters:,}", ", ".join(f"{h:,}" for h in held))  # fmt: skip
    if _is_rank_zero():
        loaded = {"base_parameters": base_parameters, "base_parameters_held_per_process": held}
        (work_dir / LOGS_DIR).mkdir(parents=True, exist_ok=True)
        write_text_atomic(work_dir / LOGS_DIR / "model.json", json.dumps(loaded) + "\n")
    meta = tokenizer_meta(Path(spec.model.tokenizer_dir))
    new_ids = list(range(int(meta["base_vocab_size"]), int(meta["vocab_size"])))
    lora = LoraSettings.model_validate(spec.model.lora)
    set_seed(settings.seed)  # LoRA's A matrices are random: same init in every process
    model = attach_lora(base, lora, new_ids, spec.model.embedding_training)
    # no cache in training: with one, transformers would not build the block-diagonal mask
    # of packed rows (position ids restarting, no attention mask) and rows would see each other
    model.config.use_cache = False
    if settings.loss_chunk_tokens:
        use_chunked_loss(model, settings.loss_chunk_tokens)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # trainable weights keep fp32 master values
    trainable, total = count_parameters(model)
    log.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total)  # fmt: skip

    trainer = make_trainer(
        model, args, data, work_dir / LOGS_DIR, settings.embedding_lr or settings.learning_rate
    )
    written_by = checkpoint_processes(resume) if resume is not None else world
    weights_only = resume is not None and spec.deepspeed_config is not None and written_by != world
    if resume is not None and weights_only:
        log.warning(
            "%s: %s was written by %d processes and this run has %d: resuming from its "
            "weights, learning-rate schedule and data position; the optimizer state (AdamW "
            "moments, which DeepSpeed ZeRO keeps per process) restarts",
            stage, resume.name, written_by, world,
        )  # fmt: skip
        load_trainable_weights(model, resume)
    elif resume is not None:
        log.info("resuming from %s", resume)
    if _is_rank_zero():
        trim_metrics(work_dir / LOGS_DIR / "metrics.jsonl", resumed_from)
    stopped_file = work_dir / STOPPED_FILE
    if _is_rank_zero():
        stopped_file.unlink(missing_ok=True)
    start = time.perf_counter()
    with _weights_only_deepspeed_resume(world, resume if weights_only else None):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    stopped = stopped_at_step(trainer)
    if stopped is not None:
        log.warning("%s: stopped on request after step %d; its checkpoint is saved", stage, stopped)
        if trainer.is_world_process_zero():
            write_text_atomic(stopped_file, json.dumps({"step": stopped}) + "\n")
        return {"stopped_at_step": stopped}
    metrics: dict[str, Any] = {}
    if data.valid_rows:
        metrics.update(trainer.evaluate())
    steps = trainer.state.global_step
    figures = {
        "steps": steps,
        "resumed_from_step": resumed_from,
        "processes": world,
        "gradient_accumulation": plan.accumulation,
        "precision": precision,
        "deepspeed_zero_stage": zero_stage(spec.deepspeed_config),
        "train_loss": round(_mean_train_loss(trainer.state.log_history, result.training_loss), 6),
        "eval_loss": round(float(metrics["eval_loss"]), 6) if "eval_loss" in metrics else None,
        "eval_loss_per_source": {
            key[len("eval_") : -len("_loss")]: round(float(value), 6)
            for key, value in sorted(metrics.items())
            if key.startswith("eval_") and key.endswith("_loss") and key != "eval_loss"
        },
        "trainable_parameters": trainable,
        "total_parameters": total,
        "base_parameters": base_parameters,
        "base_parameters_held_per_process": held,
        "tokens_per_step": round(trainer.state.num_input_tokens_seen / max(steps, 1)),
        "best_checkpoint": _best_step(trainer.state.best_model_checkpoint) if keep_best else None,
        "train_seconds_this_run": round(seconds, 2),
        "tokens_per_s": round(_mean_rate(trainer.state.log_history), 1),
        "peak_rss_mb_rank0": _peak_rss_mb(),
        "peak_gpu_memory_gb": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None
        ),
    }
    final = work_dir / FINAL_DIR
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        write_text_atomic(
            final / "train_figures.json", json.dumps(figures, indent=2, sort_keys=True) + "\n"
        )
    return figures


@contextlib.contextmanager
def _weights_only_deepspeed_resume(world: int, resumed: Path | None) -> Iterator[None]:
    """HF ``Trainer`` loads DeepSpeed checkpoints whole, which DeepSpeed refuses for one
    written by another number of processes. Here such a checkpoint loads its weights only:
    the one resumed from had them loaded before DeepSpeed started (so its fp32 master copies
    start from them) and is skipped; another (the best one, at the end) gets them loaded into
    the model, gathered."""
    import transformers.trainer as hf_trainer

    name = "deepspeed_load_checkpoint"
    original: Any = getattr(hf_trainer, name)

    def load(engine: Any, path: str, load_module_strict: bool = True) -> None:
        if checkpoint_processes(Path(path)) == world:
            original(engine, path, load_module_strict=load_module_strict)
        elif resumed is None or Path(path) != resumed:
            load_trainable_weights(engine.module, Path(path))

    setattr(hf_trainer, name, load)
    try:
        yield
    finally:
        setattr(hf_trainer, name, original)


def _per_process(value: int) -> list[int]:
    """``value`` of every training process, in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return [int(v) for v in values]


def _training_arguments(
    spec: TrainSpec,
    settings: TrainSettings,
    plan: BatchPlan,
    data: TrainingData,
    keep_best: bool,
    precision: str,
    on_gpu: bool,
) -> TrainingArguments:
    """HF ``TrainingArguments`` for the spec. Made before the model loads: under DeepSpeed
    ZeRO-3 they hold the config that partitions the weights as they load."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(Path(spec.work_dir) / CHECKPOINTS_DIR),
        per_device_train_batch_size=plan.micro_batch,
        per_device_eval_batch_size=plan.micro_batch,
        gradient_accumulation_steps=plan.accumulation,
        max_steps=settings.max_steps or -1,
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": settings.min_lr_ratio},
        warmup_steps=settings.lr_warmup_steps,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        bf16=precision == "bf16",
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        logging_steps=settings.log_every_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=settings.save_every_steps,
        save_total_limit=settings.keep_checkpoints,
        eval_strategy="steps" if data.valid_rows else "no",
        eval_steps=settings.eval_every_steps,
        load_best_model_at_end=keep_best,
        metric_for_best_model="eval_loss" if keep_best else None,
        greater_is_better=False if keep_best else None,
        train_sampling_strategy="group_by_length" if data.padded else "random",
        include_num_input_tokens_seen="non_padding" if data.padded else "all",
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=not on_gpu,
        report_to=[],
        deepspeed=spec.deepspeed_config,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        torch_compile=settings.torch_compile,
    )


def _mean_train_loss(history: list[dict[str, Any]], this_run: float) -> float:
    """Mean training loss per optimizer step over the whole run, from the logged losses (each
    the mean since the previous log), so a resumed run reports what an uninterrupted one
    does; HF's own figure (``this_run``) covers only the steps of the last process."""
    total, last = 0.0, 0
    for record in history:
        if "loss" in record and int(record["step"]) > last:
            total += float(record["loss"]) * (int(record["step"]) - last)
            last = int(record["step"])
    return total / last if last else float(this_run)


def _best_step(checkpoint: str | None) -> int | None:
    return checkpoint_step(Path(checkpoint)) if checkpoint else None


def _mean_rate(history: list[dict[str, Any]]) -> float:
    """Mean tokens/s over the logged intervals (the first, with start-up, has no rate)."""
    rates = [float(h["tokens_per_s"]) for h in history if "tokens_per_s" in h]
    return sum(rates) / len(rates) if rates else 0.0


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _avoid_deepspeed_jit() -> None:
    """DeepSpeed on CPU would JIT-compile its shared-memory comm op (minutes, and it can hang
    on a stale build lock); gloo does the job without it."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    # the deepspeed launcher may put --local_rank=N first; LOCAL_RANK in the environment says it
    args = [a for a in args if not a.startswith("--local_rank")]
    if len(args) != 1:
        print("usage: python -m llamagene.training SPEC.json", file=sys.stderr)
        return 2
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"[rank {rank}] %(message)s" if os.environ.get("WORLD_SIZE") else "%(message)s",
        stream=sys.stderr,
    )
    try:
        train(TrainSpec.load(Path(args[0])))
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Wait for every rank, then close the process group: a rank that exits while gloo's
    threads still run can abort ("terminate called without an active exception"), and the
    launcher then fails the whole run after training succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
