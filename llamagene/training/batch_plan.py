"""The batch plan of a training stage, settled before any work: how many processes, the micro
batch each one runs, gradient accumulation, steps and tokens per step.

    processes = launcher_processes(["torchrun", "--nnodes", "4", "--nproc_per_node", "8"])  # 32
    plan = settle_batch(settings, processes, "pretrain.training")
    print("\\n".join(plan.lines()))

The global batch (sequences per optimizer step) is fixed by the config, so results do not
depend on the number of processes: each process runs ``global / processes`` sequences per step
as ``accumulation`` micro batches. The configured micro batch is the most a process runs at
once (a memory limit); when it does not divide a process's share, the largest micro batch below
it that does is used, and the plan says so. When the global batch cannot be shared out evenly,
the error names the settings that would work.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from llamagene.errors import StageError
from llamagene.training.spec import TrainSettings

log = logging.getLogger("llamagene")

#: Overrides the number of processes read from the launcher (``llamagene run --processes``).
PROCESSES_ENV = "LLAMAGENE_PROCESSES"


@dataclass(frozen=True)
class BatchPlan:
    processes: int
    micro_batch: int
    configured_micro_batch: int
    accumulation: int
    global_batch: int
    sequence_tokens: int | None = None
    """Tokens per sequence (the block size of a packed corpus); None for instruction rows,
    whose length varies."""
    steps: int | None = None
    """Optimizer steps, when the training data (or ``max_steps``) is known."""
    steps_note: str = ""

    @property
    def tokens_per_step(self) -> int | None:
        return self.global_batch * self.sequence_tokens if self.sequence_tokens else None

    def lines(self) -> list[str]:
        micro = f"{self.micro_batch} sequences per process per forward pass"
        if self.micro_batch != self.configured_micro_batch:
            micro += (
                f" (lowered from micro_batch_size {self.configured_micro_batch} so that "
                f"{self.processes} processes share the global batch evenly)"
            )
        tokens = (
            f"{self.tokens_per_step:,} ({self.global_batch} x {self.sequence_tokens})"
            if self.tokens_per_step
            else "varies (instruction rows)"
        )
        steps = f"{self.steps:,}" if self.steps is not None else "unknown"
        return [
            f"processes        {self.processes}",
            f"micro batch      {micro}",
            f"accumulation     {self.accumulation} micro batch(es) per optimizer step",
            f"global batch     {self.global_batch} sequences per optimizer step",
            f"tokens per step  {tokens}",
            f"steps            {steps}" + (f" ({self.steps_note})" if self.steps_note else ""),
        ]


def settle_batch(
    settings: TrainSettings, processes: int, where: str, sequence_tokens: int | None = None
) -> BatchPlan:
    """The micro batch and accumulation for ``processes`` processes (see the module doc);
    :class:`StageError` with the fix when the global batch cannot be shared out evenly."""
    total, most = settings.global_batch_size, settings.micro_batch_size
    if processes < 1:
        raise StageError(f"{processes} training processes: need at least 1")
    if total % processes:
        fits = [p for p in (1, 2, 4, 8, 16, 32, 64, 128) if total % p == 0]
        raise StageError(
            f"{where}.global_batch_size {total} cannot be shared out over {processes} "
            f"processes: set it to a multiple of {processes} (e.g. "
            f"{math.ceil(total / processes) * processes}), or run on "
            f"{' or '.join(map(str, fits[-3:]))} processes"
        )
    share = total // processes
    micro = max(d for d in range(1, min(most, share) + 1) if share % d == 0)
    return BatchPlan(processes, micro, most, share // micro, total, sequence_tokens)


def with_steps(plan: BatchPlan, settings: TrainSettings, sequences: int | None) -> BatchPlan:
    """The plan with its step count: ``max_steps``, or epochs over ``sequences`` training
    sequences (HF Trainer's count: micro batches per process, then steps, a last partial one
    of each included)."""
    from dataclasses import replace

    if settings.max_steps is not None:
        return replace(plan, steps=settings.max_steps, steps_note="training.max_steps")
    if sequences is None:
        return replace(plan, steps_note="known once the training data is prepared")
    batches = math.ceil(sequences / (plan.micro_batch * plan.processes))
    per_epoch = max(math.ceil(batches / plan.accumulation), 1)  # a last, shorter step too
    steps = math.ceil(settings.epochs * per_epoch)
    note = f"{settings.epochs:g} epoch(s) over {sequences:,} training sequences"
    return replace(plan, steps=steps, steps_note=note)


def launcher_processes(launcher: Sequence[str] | None) -> int | None:
    """How many training processes ``launcher`` starts: ``LLAMAGENE_PROCESSES`` when set, 1
    without a launcher, torchrun's ``--nnodes x --nproc_per_node`` or DeepSpeed's
    ``--num_nodes x --num_gpus``; None when the launcher does not say (a DeepSpeed hostfile
    without ``--num_gpus``)."""
    given = os.environ.get(PROCESSES_ENV, "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise StageError(f"{PROCESSES_ENV}={given!r}: expected a whole number of processes")
        return int(given)
    if not launcher:
        return 1
    options = _options(launcher)
    names = [word.rsplit("/", 1)[-1] for word in launcher]
    program = next((name for name in names if name in _PROGRAMS), None)
    if program in ("torchrun", "torch.distributed.run"):
        per_node, nodes = options.get("nproc_per_node", "1"), options.get("nnodes", "1")
    elif program == "deepspeed":
        per_node, nodes = options.get("num_gpus", ""), options.get("num_nodes", "1")
        if not per_node:
            return None
    else:
        return None
    nodes = nodes.split(":")[-1]  # an elastic range "1:4": the most
    if not (per_node.isdigit() and nodes.isdigit()):
        return None
    return int(per_node) * int(nodes)


_PROGRAMS = ("torchrun", "torch.distributed.run", "deepspeed")


def _options(words: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for i, word in enumerate(words):
        if not word.startswith("--"):
            continue
        name, eq, value = word[2:].partition("=")
        if not eq and i + 1 < len(words):
            value = words[i + 1]
        found.setdefault(name.replace("-", "_"), value)
    return found
