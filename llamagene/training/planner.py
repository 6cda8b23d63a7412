"""``llamagene plan``: what a training stage will do on N GPUs, before asking for them: the
batch plan (:mod:`.batch_plan`) and a per-GPU memory estimate (:mod:`.memory`).

    print(plan_report(pipeline, "pretrain", gpus=32))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamagene.errors import ConfigError
from llamagene.training.batch_plan import BatchPlan, launcher_processes

if TYPE_CHECKING:
    from llamagene.pipeline import Pipeline


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
    return "\n".join(lines) + "\n"
