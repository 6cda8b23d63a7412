"""The training worker shared by the training stages: one process, or one rank of many.

    python -m llamagene.training SPEC.json                       # one process
    torchrun --nproc_per_node 8 --module llamagene.training SPEC.json
    deepspeed --num_gpus 8 --module llamagene.training SPEC.json

A stage writes a :class:`TrainSpec` (model, data, hyperparameters, where to write) and either
calls :func:`train` in its own process or starts this module under a launcher; every rank runs
the same code. HF ``Trainer`` does the loop, DeepSpeed (ZeRO-2 or 3) when the spec names a
config; the control flow that matters stays here:

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

import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamagene.errors import StageError
from llamagene.manifest import write_text_atomic
from llamagene.training.checkpoints import checkpoint_step, resume_checkpoint, trim_metrics
from llamagene.training.model import (
    LoraSettings,
    attach_lora,
    build_base_model,
    count_parameters,
    grow_embeddings,
    tokenizer_meta,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, Trainer

from llamagene.training.spec import (
    CHECKPOINTS_DIR,
    FINAL_DIR,
    KILL_AFTER_SAVE_ENV,
    LOGS_DIR,
    ModelSpec,
    TrainSettings,
    TrainSpec,
    resolve_precision,
    zero_stage,
)

log = logging.getLogger("llamagene")


def build_model(spec: ModelSpec, work_dir: Path, dtype: torch.dtype | None) -> PreTrainedModel:
    """The base, grown to the merged vocabulary, before LoRA. A base built from a config is
    saved once to ``work_dir/base_model`` and reloaded from there, so a resumed run and the
    export see the very same frozen weights."""
    from transformers import AutoModelForCausalLM

    saved = work_dir / "base_model"
    if spec.base_model_dir is None and (saved / "config.json").is_file():
        return AutoModelForCausalLM.from_pretrained(str(saved), dtype=dtype, local_files_only=True)
    tokenizer_dir = Path(spec.tokenizer_dir)
    meta = tokenizer_meta(tokenizer_dir)
    base_dir = Path(spec.base_model_dir) if spec.base_model_dir else None
    model = build_base_model(
        base_dir, spec.base_model_config, spec.seed, int(meta["base_vocab_size"]), dtype
    )
    grown = grow_embeddings(model, tokenizer_dir, spec.embedding_init)
    if grown.grown_before:
        log.info("vocabulary: the base has the merged tokenizer's %d rows already", grown.rows)
    else:
        log.info(
            "vocabulary %d -> %d rows (%d new pieces, %d composed from base tokens, init %s)",
            grown.base_vocab_size, grown.rows, len(grown.new_token_ids),
            grown.composed_from_base, grown.init,
        )  # fmt: skip
    if spec.base_model_dir is None and _is_rank_zero():
        tmp = saved.with_name(f".base_model.tmp-{os.getpid()}")
        model.save_pretrained(str(tmp))
        if saved.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, saved)
    return model


def train(spec: TrainSpec) -> dict[str, Any]:
    """Train (or resume) as the spec says; rank 0 writes ``work_dir/final``. Returns figures."""
    import torch
    from transformers import TrainingArguments, set_seed

    settings = TrainSettings.model_validate(spec.train)
    work_dir = Path(spec.work_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation, remainder = divmod(settings.global_batch_size, settings.micro_batch_size * world)
    if remainder or accumulation < 1:
        raise StageError(
            f"training.global_batch_size {settings.global_batch_size} is not a multiple of "
            f"micro_batch_size {settings.micro_batch_size} x {world} processes"
        )
    precision = resolve_precision(settings.precision)
    on_gpu = torch.cuda.is_available()
    if spec.deepspeed_config is not None and not on_gpu:
        _avoid_deepspeed_jit()
    data = _open_data(spec)
    valid_data = data.valid

    dtype = torch.bfloat16 if precision == "bf16" and on_gpu else torch.float32
    base = build_model(spec.model, work_dir, dtype)
    meta = tokenizer_meta(Path(spec.model.tokenizer_dir))
    new_ids = list(range(int(meta["base_vocab_size"]), int(meta["vocab_size"])))
    lora = LoraSettings.model_validate(spec.model.lora)
    set_seed(settings.seed)  # LoRA's A matrices are random: same init in every process
    model = attach_lora(base, lora, new_ids, spec.model.embedding_training)
    # no cache in training: with one, transformers would not build the block-diagonal mask
    # of packed rows (position ids restarting, no attention mask) and rows would see each other
    model.config.use_cache = False
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # trainable weights keep fp32 master values
    trainable, total = count_parameters(model)
    log.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total)  # fmt: skip

    checkpoints = work_dir / CHECKPOINTS_DIR
    keep_best = settings.keep_best_checkpoint and len(valid_data) > 0
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=settings.micro_batch_size,
        per_device_eval_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=accumulation,
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
        eval_strategy="steps" if len(valid_data) else "no",
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
    )
    trainer = _make_trainer(
        model, args, data, work_dir / LOGS_DIR, settings.embedding_lr or settings.learning_rate
    )
    # rank 0 looks first and removes incomplete checkpoints; the others then see what it left
    with args.main_process_first(local=False, desc="choosing the checkpoint to resume from"):
        resume = resume_checkpoint(
            checkpoints, spec.deepspeed_config, stage=str(spec.extra.get("stage", "training")),
            tidy=_is_rank_zero(),
        )  # fmt: skip
    resumed_from = checkpoint_step(resume) if resume else 0
    if resume is not None:
        log.info("resuming from %s", resume)
    if _is_rank_zero():
        trim_metrics(work_dir / LOGS_DIR / "metrics.jsonl", resumed_from)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    metrics: dict[str, Any] = {}
    if len(valid_data):
        metrics.update(trainer.evaluate())
    steps = trainer.state.global_step
    figures = {
        "steps": steps,
        "resumed_from_step": resumed_from,
        "processes": world,
        "gradient_accumulation": accumulation,
        "precision": precision,
        "deepspeed_zero_stage": zero_stage(spec.deepspeed_config),
        "train_loss": round(_mean_train_loss(trainer.state.log_history, result.training_loss), 6),
        "eval_loss": round(float(metrics["eval_loss"]), 6) if "eval_loss" in metrics else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
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


@dataclass(frozen=True)
class TrainingData:
    """What the worker trains on: datasets, the collator that batches them, and whether the
    batches are padded (then only non-padding tokens count as tokens seen)."""

    train: Any
    valid: Any
    collator: Any
    padded: bool


def _open_data(spec: TrainSpec) -> TrainingData:
    """A pretraining corpus (fixed blocks; documents restart their positions inside a block)
    or instruction rows (packed, or padded and grouped by length)."""
    if spec.data_kind == "corpus":
        from transformers import default_data_collator

        from llamagene.training.corpus import open_corpus

        corpus = open_corpus(Path(spec.data_dir))
        return TrainingData(
            corpus.dataset("train"), corpus.dataset("valid"), default_data_collator, False
        )
    from llamagene.prompt_format import PromptFormat
    from llamagene.training.collate import PackedCollator, PaddedCollator
    from llamagene.training.sft_data import open_sft

    data_dir = Path(spec.data_dir)
    if spec.batching == "packed":
        return TrainingData(open_sft(data_dir, "train"), open_sft(data_dir, "dev"),
                            PackedCollator(), False)  # fmt: skip
    eos = PromptFormat.from_dir(Path(spec.model.tokenizer_dir)).eos_id
    return TrainingData(open_sft(data_dir, "train"), open_sft(data_dir, "dev"),
                        PaddedCollator(eos), True)  # fmt: skip


def embedding_parameter(name: str) -> bool:
    """Whether a trainable parameter is embedding rows (PEFT's trainable-token deltas, or the
    embed_tokens / lm_head copies of ``modules_to_save``) rather than a LoRA matrix."""
    return "trainable_tokens_delta" in name or "modules_to_save" in name


def _make_trainer(
    model: torch.nn.Module, args: Any, data: TrainingData, logs_dir: Path, embedding_lr: float
) -> Trainer:
    from transformers import Trainer, TrainerCallback

    trained = model

    class MetricsTrainer(Trainer):
        """Adds tokens/s to every training log line, writes each line to metrics.jsonl, and
        gives the embedding rows a learning rate of their own."""

        _last: tuple[float, int] | None = None

        def create_optimizer(self, model: Any = None) -> Any:
            if self.optimizer is None:
                named = [(n, p) for n, p in trained.named_parameters() if p.requires_grad]
                decay = set(self.get_decay_parameter_names(trained))
                groups = [
                    {"params": [p for n, p in named if not embedding_parameter(n) and n in decay],
                     "weight_decay": self.args.weight_decay},
                    {"params": [p for n, p in named
                                if not embedding_parameter(n) and n not in decay],
                     "weight_decay": 0.0},
                    {"params": [p for n, p in named if embedding_parameter(n)],
                     "weight_decay": 0.0, "lr": embedding_lr},
                ]  # fmt: skip
                groups = [g for g in groups if g["params"]]
                optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args)
                self.optimizer = optimizer_cls(groups, **kwargs)
            return super().create_optimizer(model)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            now, tokens = time.perf_counter(), self.state.num_input_tokens_seen
            step = self.state.global_step
            if "loss" in logs:
                if self._last is not None and tokens > self._last[1]:
                    rate = (tokens - self._last[1]) / (now - self._last[0])
                    logs["tokens_per_s"] = round(rate, 1)
                self._last = (now, tokens)
            super().log(logs, start_time)
            if self.is_world_process_zero():
                line = {"step": step, "time": round(time.time(), 3), **logs}
                with (logs_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(line) + "\n")

    class LogAtCheckpoints(TrainerCallback):
        """Log at every checkpoint and at the last step too: a resumed run then repeats the
        uninterrupted run's log lines exactly (HF drops the loss summed since the last log
        when it resumes), and the log history covers every step (see _mean_train_loss)."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if control.should_save or state.global_step >= state.max_steps:
                control.should_log = True

    class KillAfterSave(TrainerCallback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= self.step:
                os.kill(os.getpid(), signal.SIGKILL)

    logs_dir.mkdir(parents=True, exist_ok=True)
    callbacks: list[Any] = [LogAtCheckpoints()]
    if _is_rank_zero():
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations.integration_utils import TensorBoardCallback

        writer = SummaryWriter(str(logs_dir / "tensorboard"))
        callbacks.append(TensorBoardCallback(writer))  # type: ignore[no-untyped-call]
    if os.environ.get(KILL_AFTER_SAVE_ENV):
        callbacks.append(KillAfterSave(int(os.environ[KILL_AFTER_SAVE_ENV])))
    return MetricsTrainer(
        model=model,
        args=args,
        data_collator=data.collator,
        train_dataset=data.train,
        eval_dataset=data.valid if len(data.valid) else None,
        callbacks=callbacks,
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
