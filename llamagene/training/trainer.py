"""The HF ``Trainer`` as the training worker uses it: the data and its collator, the optimizer
with a learning rate of its own for the embedding rows, tokens/s and ``metrics.jsonl`` on every
log line, logs at every checkpoint, TensorBoard, and the fault injection of the resume tests.

    data = open_data(spec)                     # corpus blocks, or instruction rows
    trainer = make_trainer(model, args, data, logs_dir, embedding_lr=1e-4)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamagene.training.spec import KILL_AFTER_SAVE_ENV, STOP_FILE_ENV, TrainSpec

if TYPE_CHECKING:
    import torch
    from transformers import Trainer


@dataclass(frozen=True)
class TrainingData:
    """What the worker trains on: datasets, the collator that batches them, and whether the
    batches are padded (then only non-padding tokens count as tokens seen)."""

    train: Any
    valid: Any
    """One dataset, or one per source (a pretraining corpus: DNA, protein, English...), each
    then evaluated apart (``eval_<source>_loss``) and ``eval_loss`` over all of them."""
    collator: Any
    padded: bool

    @property
    def valid_rows(self) -> int:
        parts = self.valid.values() if isinstance(self.valid, dict) else [self.valid]
        return sum(len(p) for p in parts)


def open_data(spec: TrainSpec) -> TrainingData:
    """A pretraining corpus (fixed blocks; documents restart their positions inside a block)
    or instruction rows (packed, or padded and grouped by length)."""
    if spec.data_kind == "corpus":
        from transformers import default_data_collator

        from llamagene.training.corpus import open_corpus

        corpus = open_corpus(Path(spec.data_dir))
        valid = corpus.valid_by_source() or corpus.dataset("valid")
        collator: Any = default_data_collator
        if str(spec.train.get("attn_implementation", "sdpa")).startswith("flash_attention"):
            from llamagene.training.collate import FlatBlocksCollator

            collator = FlatBlocksCollator()
        return TrainingData(corpus.dataset("train"), valid, collator, False)
    from llamagene.prompt_format import PromptFormat
    from llamagene.training.collate import PackedCollator, PaddedCollator
    from llamagene.training.sft_data import open_sft

    train, dev = open_sft(Path(spec.data_dir), "train"), open_sft(Path(spec.data_dir), "dev")
    if spec.batching == "packed":
        return TrainingData(train, dev, PackedCollator(), False)
    eos = PromptFormat.from_dir(Path(spec.model.tokenizer_dir)).eos_id
    return TrainingData(train, dev, PaddedCollator(eos), True)


def embedding_parameter(name: str) -> bool:
    """Whether a trainable parameter is embedding rows (PEFT's trainable-token deltas, or the
    embed_tokens / lm_head copies of ``modules_to_save``) rather than a LoRA matrix."""
    return "trainable_tokens_delta" in name or "modules_to_save" in name


def make_trainer(
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

        def evaluate(
            self,
            eval_dataset: Any = None,
            ignore_keys: list[str] | None = None,
            metric_key_prefix: str = "eval",
        ) -> dict[str, float]:
            """Per source when the validation set is one per source, then ``eval_loss``: their
            mean weighted by blocks (what one pass over all the blocks gives)."""
            parts: Any = self.eval_dataset if eval_dataset is None else eval_dataset
            if not isinstance(parts, dict) or metric_key_prefix != "eval":
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            metrics: dict[str, float] = {}
            weighted, blocks = 0.0, 0
            for name, part in parts.items():
                found = super().evaluate(part, ignore_keys, f"eval_{name}")
                metrics.update(found)
                weighted += found[f"eval_{name}_loss"] * len(part)
                blocks += len(part)
            metrics["eval_loss"] = weighted / max(blocks, 1)
            self.log({"eval_loss": metrics["eval_loss"]})
            return metrics

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

    class StopOnRequest(TrainerCallback):
        """Save a checkpoint and stop at the end of a step once a stop is asked for
        (:class:`StopRequest`); every process stops at the same step."""

        def __init__(self) -> None:
            self.request = StopRequest()
            self.stopped_at: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.request.arm()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if not _any_process(self.request.asked()) or state.global_step >= state.max_steps:
                return
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_log = True
            control.should_training_stop = True

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.request.disarm()

    class KillAfterSave(TrainerCallback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= self.step:
                os.kill(os.getpid(), signal.SIGKILL)

    logs_dir.mkdir(parents=True, exist_ok=True)
    stop = StopOnRequest()
    callbacks: list[Any] = [LogAtCheckpoints(), stop]
    if os.environ.get("RANK", "0") == "0":  # one TensorBoard writer
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations.integration_utils import TensorBoardCallback

        writer = SummaryWriter(str(logs_dir / "tensorboard"))
        callbacks.append(TensorBoardCallback(writer))  # type: ignore[no-untyped-call]
    if os.environ.get(KILL_AFTER_SAVE_ENV):
        callbacks.append(KillAfterSave(int(os.environ[KILL_AFTER_SAVE_ENV])))
    trainer = MetricsTrainer(
        model=model,
        args=args,
        data_collator=data.collator,
        train_dataset=data.train,
        eval_dataset=data.valid if data.valid_rows else None,
        callbacks=callbacks,
    )
    trainer.llamagene_stop = stop  # type: ignore[attr-defined]
    return trainer


class StopRequest:
    """Whether this training process was asked to stop: SIGUSR1 or SIGTERM since
    :meth:`arm` (a SLURM job's ``--signal``, a scheduler preempting the job), or the file
    ``$LLAMAGENE_STOP_FILE`` exists (a job script's signal trap touches it)."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop_file = os.environ.get(STOP_FILE_ENV) or None
        self.signalled = False
        self._previous: dict[int, Any] = {}

    def arm(self) -> None:
        for sig in self.SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: the file only
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def disarm(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def asked(self) -> bool:
        return self.signalled or bool(self.stop_file and os.path.exists(self.stop_file))


def stopped_at_step(trainer: Trainer) -> int | None:
    """The step at which :func:`make_trainer`'s trainer stopped on request (None: it ran to
    the end)."""
    stop = getattr(trainer, "llamagene_stop", None)
    return None if stop is None else stop.stopped_at


def _any_process(flag: bool) -> bool:
    """Whether ``flag`` is set in any training process (the flag itself with one process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
