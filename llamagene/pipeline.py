"""The stage graph: load a pipeline file, say what is stale and why, run what is stale in order.

    pipeline = load_pipeline(Path("pipelines/demo/pipeline.yaml"), overrides=["train_bpe.seed=1"])
    for st in pipeline.status(): print(st.name, st.state, st.reasons)
    pipeline.run()                      # every stale stage, in order
    pipeline.run(only={"merge_vocab"})  # just that one (its upstream must have run once)

A stage is stale (:func:`assess`) when it never finished, its config, inputs or outputs changed,
or an upstream stage re-ran with different outputs or will re-run; a stage that re-runs with
byte-identical outputs leaves the stages after it up to date. How a stage runs in the run folder
(a temporary folder swapped in on success, one run per folder, leftovers of killed runs, disk
errors) is :mod:`llamagene.rundir`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from llamagene import locks
from llamagene.config import (
    InputPath,
    StrictModel,
    apply_overrides,
    format_validation_error,
    load_yaml,
    to_plain,
)
from llamagene.errors import ConfigError, NotImplementedStageError
from llamagene.manifest import (
    Manifest,
    changed_files,
    config_changes,
    output_changes,
    outputs_digest,
)
from llamagene.rundir import (
    MIN_FREE_BYTES,
    RUN_LOCK,
    package_version,
    remove_leftovers,
    run_dir_problems,
    run_lock,
    run_stage,
    runs_stage,
)
from llamagene.stages import PLANNED_STAGES, Stage, all_stages
from llamagene.stages.build_sft import BuildSftConfig
from llamagene.stages.evaluate import EvaluateConfig
from llamagene.stages.finetune import FinetuneConfig
from llamagene.stages.merge_vocab import MergeVocabConfig
from llamagene.stages.pretrain import PretrainConfig
from llamagene.stages.train_bpe import TrainBpeConfig
from llamagene.training.batch_plan import launcher_processes, settle_batch

__all__ = [
    "MIN_FREE_BYTES",
    "RUN_LOCK",
    "Pipeline",
    "PipelineConfig",
    "StageStatus",
    "StagesConfig",
    "State",
    "assess",
    "load_pipeline",
    "run_dir_problems",
]

log = logging.getLogger("llamagene")
#: A stage as ``status`` sees it; ``run`` reports "ran" for the stages it ran.
State = Literal["up to date", "stale", "failed", "running", "ran"]


class StagesConfig(StrictModel):
    """The stages a pipeline runs; leave a stage out to not run it."""

    train_bpe: TrainBpeConfig | None = None
    merge_vocab: MergeVocabConfig | None = None
    pretrain: PretrainConfig | None = None
    build_sft: BuildSftConfig | None = None
    finetune: FinetuneConfig | None = None
    evaluate: EvaluateConfig | None = None


class PipelineConfig(StrictModel):
    """A whole pipeline file."""

    run_dir: InputPath
    """Where every stage writes ``<run_dir>/<stage>/`` and the manifest lives."""
    description: str = ""
    stages: StagesConfig


@dataclass(frozen=True)
class StageStatus:
    name: str
    state: State
    #: Why the stage is stale (empty when it is up to date).
    reasons: list[str] = field(default_factory=list)
    #: Facts that do not make it stale: an upstream stage re-ran with identical outputs, stray
    #: files in its output folder.
    notes: list[str] = field(default_factory=list)


@dataclass
class Pipeline:
    """A loaded pipeline file, ready to report status or run."""

    path: Path
    config: PipelineConfig

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    def stages(self) -> list[tuple[Stage, Any]]:
        """``(stage, config)`` for every configured stage, in running order."""
        configured = []
        for stage in all_stages():
            cfg = getattr(self.config.stages, stage.name)
            if cfg is not None:
                configured.append((stage, cfg))
        return configured

    def check(self) -> list[str]:
        """Every problem with inputs and stage wiring, found without running anything."""
        problems = run_dir_problems(self.run_dir)
        names = {stage.name for stage, _ in self.stages()}
        for stage, cfg in self.stages():
            for up in stage.upstream(cfg):
                if up not in names:
                    problems.append(
                        f"stages.{stage.name}: needs stage '{up}', which is not configured"
                    )
            problems.extend(f"stages.{stage.name}: {p}" for p in stage.check(cfg))
            for name, path in stage.inputs(cfg).items():
                owner = self._output_owner(path)
                if owner:
                    problems.append(
                        f"stages.{stage.name}.{name}: {path} is inside {owner}'s output folder, "
                        f"which llamagene replaces when {owner} runs; copy the file elsewhere"
                    )
        return problems

    def _output_owner(self, path: Path) -> str | None:
        """The stage whose output folder holds ``path`` (stages own their folders whole)."""
        for stage in all_stages():
            if path.resolve().is_relative_to((self.run_dir / stage.name).resolve()):
                return stage.name
        return None

    def status(self) -> list[StageStatus]:
        manifest = Manifest.load(self.run_dir)
        owner = locks.holder(self.run_dir / RUN_LOCK)
        statuses: list[StageStatus] = []
        rerun: set[str] = set()
        for stage, cfg in self.stages():
            record = manifest.stages.get(stage.name)
            if record is not None and record.status == "running" and runs_stage(owner, record):
                assert owner is not None
                statuses.append(
                    StageStatus(stage.name, "running", [f"running ({owner.describe()})"])
                )
                rerun.add(stage.name)
                continue
            reasons, notes = assess(stage, cfg, manifest, self.run_dir, rerun)
            state: State = "up to date"
            if record is not None and record.status == "failed":
                state = "failed"
            elif reasons:
                state = "stale"
            if reasons:
                rerun.add(stage.name)
            statuses.append(StageStatus(stage.name, state, reasons, notes))
        return statuses

    def run(
        self,
        only: Sequence[str] = (),
        force: bool = False,
        launcher: Sequence[str] | None = None,
    ) -> list[StageStatus]:
        """Run the stale stages (or those in ``only``), in order; return what each did.

        ``launcher`` is the command prefix that starts training workers (see StageContext)."""
        configured = {stage.name for stage, _ in self.stages()}
        unknown = [name for name in only if name not in configured]
        if unknown:
            raise ConfigError(
                str(self.path),
                [
                    f"--only {name}: not a stage of this pipeline ({', '.join(sorted(configured))})"
                    for name in unknown
                ],
            )
        problems = self.check()
        if problems:
            raise ConfigError(str(self.path), problems)
        processes = launcher_processes(launcher)
        for stage, cfg in self.stages():  # an impossible batch plan stops the run up front
            if processes and stage.name in TRAINING_STAGES and (not only or stage.name in only):
                settle_batch(cfg.training, processes, f"{stage.name}.training")
        done: list[StageStatus] = []
        with run_lock(self.run_dir):
            remove_leftovers(self.run_dir)
            manifest = Manifest.load(self.run_dir)
            rerun: set[str] = set()
            feeds_selected = {
                up for s, c in self.stages() if s.name in only for up in s.upstream(c)
            }
            for stage, cfg in self.stages():
                reasons, notes = assess(stage, cfg, manifest, self.run_dir, rerun)
                for note in notes:
                    log.info("%s: %s", stage.name, note)
                selected = not only or stage.name in only
                if not selected:
                    if reasons:
                        rerun.add(stage.name)
                    if reasons and stage.name in feeds_selected:
                        log.warning(
                            "%s is stale (%s) but not selected: later stages use its last output",
                            stage.name, "; ".join(reasons),
                        )  # fmt: skip
                    continue
                if not reasons and not force:
                    log.info("%s: up to date, nothing to do", stage.name)
                    done.append(StageStatus(stage.name, "up to date", notes=notes))
                    continue
                reasons = reasons or ["forced"]
                log.info("%s: running (%s)", stage.name, "; ".join(reasons))
                run_stage(stage, cfg, manifest, self.run_dir, launcher)
                done.append(StageStatus(stage.name, "ran", reasons))
        return done

    def upstream_closure(self, name: str) -> list[str]:
        """The configured stages ``name`` reads from, directly or not, in running order."""
        configs = {stage.name: (stage, cfg) for stage, cfg in self.stages()}
        needed: set[str] = set()
        todo = [name]
        while todo:
            stage, cfg = configs[todo.pop()]
            for up in stage.upstream(cfg):
                if up in configs and up not in needed:
                    needed.add(up)
                    todo.append(up)
        return [stage.name for stage, _ in self.stages() if stage.name in needed]

    def prepare(self, name: str) -> list[StageStatus]:
        """Everything before ``name``'s training that needs no GPU: its stale upstream stages
        (which must not train) and its own preparation (``pretrain``: the tokenized corpus,
        in the cache). A cluster runs this as a CPU job ahead of the GPU job."""
        configs = {stage.name: (stage, cfg) for stage, cfg in self.stages()}
        if name not in configs:
            raise ConfigError(
                str(self.path),
                [f"--stage {name}: not a stage of this pipeline ({', '.join(configs)})"],
            )
        upstream = self.upstream_closure(name)
        states = {st.name: st for st in self.status()}
        training = [up for up in upstream if up in TRAINING_STAGES]
        for up in training:
            if states[up].state != "up to date":
                raise ConfigError(
                    str(self.path),
                    [f"{up} is {states[up].state} and trains (a GPU job): run it before "
                     f"preparing {name}"],
                )  # fmt: skip
        done = []
        cpu_stages = [up for up in upstream if up not in TRAINING_STAGES]
        if cpu_stages:
            done = self.run(only=cpu_stages)
        stage, cfg = configs[name]
        prepare = getattr(stage, "prepare", None)
        if prepare is not None:
            prepare(cfg, self.run_dir)
        return done


#: Stages that train (on GPUs, under a launcher).
TRAINING_STAGES = ("pretrain", "finetune")


def load_pipeline(path: Path, overrides: Sequence[str] = ()) -> Pipeline:
    """Read, override and validate a pipeline file; :class:`ConfigError` lists every problem."""
    path = path.resolve()
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the file should be a mapping with run_dir and stages"])
    names = [s.name for s in all_stages()]
    data = apply_overrides(data, overrides, [*names, *PLANNED_STAGES])
    stages = data.get("stages")
    if isinstance(stages, dict):
        planned = [name for name in stages if name in PLANNED_STAGES]
        if planned:
            raise NotImplementedStageError(
                f"{path}: stage {', '.join(planned)} is not implemented yet in llamagene "
                f"{package_version('llamagene')}; the built stages are {', '.join(names)}"
            )
    if "stages" in data and not stages:
        raise ConfigError(
            str(path),
            [f"stages: no stages configured; add at least one of {', '.join(names)}"],
        )
    if isinstance(stages, dict):
        empty = [
            f"stages.{name}: the stage has no settings (an empty body); give its settings, "
            f"`{name}: {{}}` for the defaults, or remove the key"
            for name, body in stages.items()
            if body is None
        ]
        if empty:
            raise ConfigError(str(path), empty)
    try:
        config = PipelineConfig.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err, model=PipelineConfig)) from None
    return Pipeline(path=path, config=config)


def assess(
    stage: Stage, cfg: Any, manifest: Manifest, run_dir: Path, rerun: set[str]
) -> tuple[list[str], list[str]]:
    """``(reasons, notes)``: why the stage must run again, in words (empty when it is up to
    date), and facts that do not make it stale. ``rerun`` names the stages known to re-run."""
    record = manifest.stages.get(stage.name)
    if record is None:
        return ["never run"], []
    if record.status == "running":
        return [f"did not finish (started {record.started_at}, then interrupted)"], []
    if record.status == "failed":
        return [f"failed last time: {record.error}"], []
    reasons = [f"config changed: {c}" for c in config_changes(record.config, to_plain(cfg))]
    reasons += [f"input {c}" for c in changed_files(record.inputs, stage.inputs(cfg))]
    changes, stray = output_changes(record.outputs, stage.name, run_dir / stage.name)
    reasons += [f"output {c}" for c in changes]
    notes = [
        f"stray file {key} (not written by llamagene): ignored, and removed when "
        f"{stage.name} re-runs"
        for key in stray
    ]
    for up in stage.upstream(cfg):
        up_record = manifest.stages.get(up)
        if up in rerun:
            reasons.append(
                f"upstream stage {up} is stale and will re-run "
                f"(this one follows only if {up}'s outputs change)"
            )
        elif up_record is None or up_record.status != "done":
            reasons.append(f"upstream stage {up} has no finished output")
        elif up_record.run_id != record.upstream.get(up):
            recorded = record.upstream_outputs.get(up)
            if recorded is None:  # recorded by an older llamagene: only the run id is known
                reasons.append(f"upstream stage {up} re-ran since")
            elif recorded == outputs_digest(up_record.outputs):
                notes.append(f"{up} re-ran with identical outputs")
            else:
                reasons.append(f"upstream stage {up} re-ran since, with different outputs")
    return reasons, notes
