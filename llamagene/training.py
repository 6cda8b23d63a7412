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
import re
import shutil
import signal
import sys
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from llamagene.config import StrictModel
from llamagene.errors import StageError
from llamagene.manifest import write_text_atomic
from llamagene.modeling import (
    EmbeddingInit,
    EmbeddingTraining,
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

log = logging.getLogger("llamagene")

Precision = Literal["auto", "bf16", "fp32"]
#: Fault injection for resume tests: SIGKILL this process right after the checkpoint of this step.
KILL_AFTER_SAVE_ENV = "LLAMAGENE_KILL_AFTER_SAVE_STEP"
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
    """Peak learning rate."""
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
    log_every_steps: int = Field(10, ge=1)
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
    corpus_dir: str
    work_dir: str
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
    log.info(
        "vocabulary %d -> %d rows (%d new pieces, %d composed from base tokens, init %s)",
        grown.base_vocab_size, grown.rows, len(grown.new_token_ids), grown.composed_from_base,
        grown.init,
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

    from llamagene.corpus import open_corpus

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
    corpus = open_corpus(Path(spec.corpus_dir))
    train_data, valid_data = corpus.dataset("train"), corpus.dataset("valid")

    dtype = torch.bfloat16 if precision == "bf16" and on_gpu else torch.float32
    base = build_model(spec.model, work_dir, dtype)
    meta = tokenizer_meta(Path(spec.model.tokenizer_dir))
    new_ids = list(range(int(meta["base_vocab_size"]), int(meta["vocab_size"])))
    lora = LoraSettings.model_validate(spec.model.lora)
    set_seed(settings.seed)  # LoRA's A matrices are random: same init in every process
    model = attach_lora(base, lora, new_ids, spec.model.embedding_training)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # trainable weights keep fp32 master values
    trainable, total = count_parameters(model)
    log.info("parameters: %s trainable of %s (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total)  # fmt: skip

    checkpoints = work_dir / CHECKPOINTS_DIR
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
        model, args, train_data, valid_data, work_dir / LOGS_DIR,
        settings.global_batch_size * corpus.block_size,
    )  # fmt: skip
    # rank 0 looks first and removes incomplete checkpoints; the others then see what it left
    with args.main_process_first(local=False, desc="choosing the checkpoint to resume from"):
        resume = resume_checkpoint(
            checkpoints, spec.deepspeed_config, stage=str(spec.extra.get("stage", "training")),
            tidy=_is_rank_zero(),
        )  # fmt: skip
    resumed_from = _checkpoint_step(resume) if resume else 0
    if resume is not None:
        log.info("resuming from %s", resume)
    if _is_rank_zero():
        _trim_metrics(work_dir / LOGS_DIR / "metrics.jsonl", resumed_from)
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
        "deepspeed_zero_stage": _zero_stage(spec.deepspeed_config),
        "train_loss": round(_mean_train_loss(trainer.state.log_history, result.training_loss), 6),
        "eval_loss": round(float(metrics["eval_loss"]), 6) if "eval_loss" in metrics else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "tokens_per_step": settings.global_batch_size * corpus.block_size,
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


def _make_trainer(
    model: torch.nn.Module,
    args: Any,
    train_data: Any,
    valid_data: Any,
    logs_dir: Path,
    tokens_per_step: int,
) -> Trainer:
    from transformers import Trainer, TrainerCallback

    class MetricsTrainer(Trainer):
        """Adds tokens/s to every training log line, and writes each line to metrics.jsonl."""

        _last: tuple[float, int] | None = None

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            now, step = time.perf_counter(), self.state.global_step
            if "loss" in logs:
                if self._last is not None and step > self._last[1]:
                    rate = (step - self._last[1]) * tokens_per_step / (now - self._last[0])
                    logs["tokens_per_s"] = round(rate, 1)
                self._last = (now, step)
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
        train_dataset=train_data,
        eval_dataset=valid_data if len(valid_data) else None,
        callbacks=callbacks,
    )


#: Model weights a resume may load, in HF ``Trainer``'s order of preference.
_WEIGHT_FILES = (
    "adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin",
)  # fmt: skip
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: DeepSpeed's ZeRO optimizer shards: ``[bf16_]zero_pp_rank_R_mp_rank_MM_optim_states.pt``.
_ZERO_OPTIM = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
#: The RNG states of one process of many (one process writes ``rng_state.pth``).
_RANKED_RNG = re.compile(r"rng_state_(\d+)\.pth$")
#: An incomplete checkpoint is renamed to this prefix + its name (which HF ``Trainer``'s
#: ``checkpoint-*`` glob never matches), then deleted.
_DISCARDED = ".incomplete-"


def checkpoint_problem(folder: Path, deepspeed_config: dict[str, Any] | None = None) -> str | None:
    """Why a resume from ``folder`` (a ``checkpoint-N``) would fail or go astray, in a few
    words; ``None`` when it is complete.

    A kill or a full disk during a save leaves files missing or cut short. Checked: the trainer
    state (a JSON object, of step N), the model weights, optimizer, scheduler and RNG states (a
    torch file is a zip archive, whose directory sits at its end; a safetensors file is a JSON
    header and the data it places), and for DeepSpeed the ``global_step*`` folder that
    ``latest`` names, with its model and ZeRO optimizer files. Cheap: nothing is unpickled."""
    state = _json_file(folder / "trainer_state.json")
    if isinstance(state, str):
        return state
    step = state.get("global_step")
    if step is not None and step != _checkpoint_step(folder):
        return f"trainer_state.json is of step {step}"
    # how many processes saved it: each writes its RNG states (and its ZeRO optimizer shard)
    ranks = _ranks(folder.glob("rng_state_*.pth"), _RANKED_RNG)
    ranks |= _ranks(folder.glob("global_step*/*optim_states.pt"), _ZERO_OPTIM)
    processes = max(ranks, default=0) + 1
    problems = [_weights_problem(folder, required=deepspeed_config is None)]
    if deepspeed_config is None:
        problems.append(_torch_file_problem(folder / "optimizer.pt"))
    else:
        zero_stage = _zero_stage(deepspeed_config) or 0
        problems.append(_deepspeed_problem(folder, processes if zero_stage else 0))
    if deepspeed_config is None or "scheduler" not in deepspeed_config:
        problems.append(_torch_file_problem(folder / "scheduler.pt"))  # else DeepSpeed's own
    if processes == 1:
        problems.append(_torch_file_problem(folder / "rng_state.pth"))
    else:
        problems.extend(
            _torch_file_problem(folder / f"rng_state_{r}.pth") for r in range(processes)
        )
    return next((p for p in problems if p is not None), None)


def resume_checkpoint(
    checkpoints: Path,
    deepspeed_config: dict[str, Any] | None = None,
    *,
    stage: str = "training",
    tidy: bool = True,
) -> Path | None:
    """The newest complete checkpoint to resume from; each newer, incomplete one is skipped
    with one log line saying why and, when ``tidy`` (rank 0 only), removed, so that HF
    ``Trainer`` neither counts it among the checkpoints it rotates nor saves into it when
    training reaches its step again."""
    resume, skipped = _newest_complete(checkpoints, deepspeed_config)
    if not tidy:
        return resume
    then = f"resuming from {resume.name}" if resume else "starting from step 0"
    for folder, why in skipped:
        log.warning("%s: skipping %s: %s; %s", stage, folder.name, why, then)
        _discard(folder)
    for leftover in checkpoints.glob(f"{_DISCARDED}*"):  # a removal cut short by a kill
        shutil.rmtree(leftover, ignore_errors=True)
    return resume


def _newest_complete(
    checkpoints: Path, deepspeed_config: dict[str, Any] | None
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint, and the newer ones that are not, each with why."""
    if not checkpoints.is_dir():
        return None, []
    found = [
        d for d in checkpoints.glob("checkpoint-*")
        if d.name.split("-", 1)[1].isdigit() and d.is_dir()
    ]  # fmt: skip
    skipped: list[tuple[Path, str]] = []
    for folder in sorted(found, key=_checkpoint_step, reverse=True):
        why = checkpoint_problem(folder, deepspeed_config)
        if why is None:
            return folder, skipped
        skipped.append((folder, why))
    return None, skipped


def _discard(folder: Path) -> None:
    aside = folder.with_name(f"{_DISCARDED}{folder.name}")
    try:
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(folder, aside)
    except OSError as err:
        raise StageError(
            f"cannot move the incomplete checkpoint {folder} out of the way ({err}); "
            "delete it and rerun"
        ) from None
    shutil.rmtree(aside, ignore_errors=True)


def _json_file(path: Path) -> dict[str, Any] | str:
    """The JSON object in ``path``, or what is wrong with it."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return f"{path.name} is missing"
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror or err})"
    if not text.strip():
        return f"{path.name} is empty"
    try:
        data = json.loads(text)
    except ValueError:
        return f"{path.name} is truncated (not valid JSON)"
    return data if isinstance(data, dict) else f"{path.name} is not a JSON object"


def _torch_file_problem(path: Path) -> str | None:
    """``torch.save`` writes a zip archive: one cut short lacks its central directory."""
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        complete = zipfile.is_zipfile(path)
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror or err})"
    return None if complete else f"{path.name} is truncated (not a complete torch archive)"


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file: 8 bytes giving the header's length, the JSON header, then the data,
    which must reach as far as the header's furthest ``data_offsets`` end."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 <= length <= size - 8:
                return f"{path.name} is truncated (incomplete header)"
            header = json.loads(handle.read(length))
        ends = [
            int(entry["data_offsets"][1]) for name, entry in header.items()
            if name != "__metadata__"
        ]  # fmt: skip
    except OSError as err:
        return f"{path.name} cannot be read ({err.strerror or err})"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"{path.name} is truncated or corrupt (unreadable header)"
    needed = 8 + length + max(ends, default=0)
    if size < needed:
        return f"{path.name} is truncated ({size} of {needed} bytes)"
    return None


def _weights_problem(folder: Path, required: bool) -> str | None:
    """Every model weights file present must be whole; one must be present when ``required``
    (a DeepSpeed checkpoint keeps the weights it resumes from in its ``global_step*`` folder)."""
    files = [folder / name for name in _WEIGHT_FILES if (folder / name).is_file()]
    for index_name in _SHARD_INDEXES:
        if (folder / index_name).is_file():
            index = _json_file(folder / index_name)
            if isinstance(index, str):
                return index
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict):
                return f"{index_name} has no weight_map"
            files.extend(folder / str(shard) for shard in sorted(set(weight_map.values())))
    if not files:
        return "the model weights are missing" if required else None
    for path in files:
        if not path.is_file():
            return f"{path.name} is missing"
        problem = (
            _safetensors_problem(path) if path.suffix == ".safetensors"
            else _torch_file_problem(path)
        )  # fmt: skip
        if problem is not None:
            return problem
    return None


def _ranks(paths: Iterable[Path], pattern: re.Pattern[str]) -> set[int]:
    return {int(m.group(1)) for path in paths if (m := pattern.search(path.name))}


def _deepspeed_problem(folder: Path, optimizer_shards: int) -> str | None:
    """``latest`` names the ``global_step*`` folder DeepSpeed resumes from: its model states
    (one file, or one per rank under ZeRO-3) and, under ZeRO, one optimizer shard per rank."""
    try:
        tag = (folder / "latest").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "latest is missing (no DeepSpeed state)"
    except (OSError, UnicodeDecodeError) as err:
        return f"latest cannot be read ({err})"
    state_dir = folder / tag
    if not tag or "/" in tag or not state_dir.is_dir():
        return f"latest names {tag!r}, which is not a folder of the checkpoint"
    files = sorted(state_dir.glob("*.pt"))
    if not any(p.name.endswith("model_states.pt") for p in files):
        return f"{tag}/ has no model states"
    missing = sorted(set(range(optimizer_shards)) - _ranks(files, _ZERO_OPTIM))
    if missing:
        ranks = ", ".join(map(str, missing))
        return f"{tag}/ lacks the ZeRO optimizer states of rank {ranks}"
    for path in files:
        problem = _torch_file_problem(path)
        if problem is not None:
            return f"{tag}/{problem}"
    return None


def _checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def _trim_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be redone), and
    a line cut short by a kill."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # empty, or cut short
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


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


def _mean_rate(history: list[dict[str, Any]]) -> float:
    """Mean tokens/s over the logged intervals (the first, with start-up, has no rate)."""
    rates = [float(h["tokens_per_s"]) for h in history if "tokens_per_s" in h]
    return sum(rates) / len(rates) if rates else 0.0


def _peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _zero_stage(config: dict[str, Any] | None) -> int | None:
    if config is None:
        return None
    stage = config.get("zero_optimization", {}).get("stage", 0)
    return int(stage)


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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
