"""The stage graph: load a pipeline file, say what is stale and why, run what is stale in order.

    pipeline = load_pipeline(Path("pipelines/demo/pipeline.yaml"), overrides=["train_bpe.seed=1"])
    for st in pipeline.status(): print(st.name, st.state, st.reasons)
    pipeline.run()                      # every stale stage, in order
    pipeline.run(only={"merge_vocab"})  # just that one (its upstream must have run once)

A stage runs in a temporary folder next to its output folder; only when it succeeds does the
folder replace ``<run_dir>/<stage>/`` and the manifest say ``done``. A stage that fails, or a
process that is killed, leaves the previous output (if any) in place and the stage stale.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from llamagene.config import (
    InputPath,
    StrictModel,
    apply_overrides,
    format_validation_error,
    load_yaml,
    to_plain,
)
from llamagene.errors import ConfigError, LlamageneError, NotImplementedStageError, StageError
from llamagene.manifest import (
    Manifest,
    StageRecord,
    changed_files,
    config_changes,
    record_paths,
    write_text_atomic,
)
from llamagene.stages import PLANNED_STAGES, WORK_DIR, Stage, StageContext, all_stages
from llamagene.stages.build_sft import BuildSftConfig
from llamagene.stages.merge_vocab import MergeVocabConfig
from llamagene.stages.pretrain import PretrainConfig
from llamagene.stages.train_bpe import TrainBpeConfig

log = logging.getLogger("llamagene")
#: A stage as ``status`` sees it; ``run`` reports "ran" for the stages it ran.
State = Literal["up to date", "stale", "failed", "ran"]
_TRACKED_PACKAGES = ("sentencepiece", "tokenizers", "transformers", "torch", "peft", "deepspeed")


class StagesConfig(StrictModel):
    """The stages a pipeline runs; leave a stage out to not run it."""

    train_bpe: TrainBpeConfig | None = None
    merge_vocab: MergeVocabConfig | None = None
    pretrain: PretrainConfig | None = None
    build_sft: BuildSftConfig | None = None


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
    reasons: list[str] = field(default_factory=list)


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
        problems: list[str] = []
        names = {stage.name for stage, _ in self.stages()}
        for stage, cfg in self.stages():
            for up in stage.upstream:
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
        statuses: list[StageStatus] = []
        rerun: set[str] = set()
        for stage, cfg in self.stages():
            reasons = why_stale(stage, cfg, manifest, self.run_dir, rerun)
            record = manifest.stages.get(stage.name)
            state: State = "up to date"
            if record is not None and record.status == "failed":
                state = "failed"
            elif reasons:
                state = "stale"
            if reasons:
                rerun.add(stage.name)
            statuses.append(StageStatus(stage.name, state, reasons))
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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        done: list[StageStatus] = []
        with _run_lock(self.run_dir):
            _remove_leftovers(self.run_dir)
            manifest = Manifest.load(self.run_dir)
            rerun: set[str] = set()
            feeds_selected = {up for s, _ in self.stages() if s.name in only for up in s.upstream}
            for stage, cfg in self.stages():
                reasons = why_stale(stage, cfg, manifest, self.run_dir, rerun)
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
                    done.append(StageStatus(stage.name, "up to date"))
                    continue
                reasons = reasons or ["forced"]
                log.info("%s: running (%s)", stage.name, "; ".join(reasons))
                _run_stage(stage, cfg, manifest, self.run_dir, launcher)
                rerun.add(stage.name)
                done.append(StageStatus(stage.name, "ran", reasons))
        return done


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
                f"{_version('llamagene')}; the built stages are {', '.join(names)}"
            )
    try:
        config = PipelineConfig.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err)) from None
    return Pipeline(path=path, config=config)


def why_stale(
    stage: Stage, cfg: Any, manifest: Manifest, run_dir: Path, rerun: set[str]
) -> list[str]:
    """Reasons the stage must run again, in words; empty when it is up to date."""
    record = manifest.stages.get(stage.name)
    if record is None:
        return ["never run"]
    if record.status == "running":
        return [f"did not finish (started {record.started_at}, then interrupted)"]
    if record.status == "failed":
        return [f"failed last time: {record.error}"]
    reasons = [f"config changed: {c}" for c in config_changes(record.config, to_plain(cfg))]
    reasons += [f"input {c}" for c in changed_files(record.inputs, stage.inputs(cfg))]
    reasons += [
        f"output {c}" for c in changed_files(record.outputs, {stage.name: run_dir / stage.name})
    ]
    for up in stage.upstream:
        up_record = manifest.stages.get(up)
        if up in rerun:
            reasons.append(f"upstream stage {up} is stale and will re-run")
        elif up_record is None or up_record.run_id != record.upstream.get(up):
            reasons.append(f"upstream stage {up} re-ran since")
    return reasons


def _run_stage(
    stage: Stage, cfg: Any, manifest: Manifest, run_dir: Path, launcher: Sequence[str] | None
) -> None:
    upstream_dirs: dict[str, Path] = {}
    for up in stage.upstream:
        up_record = manifest.stages.get(up)
        if up_record is None or up_record.status != "done":
            raise StageError(
                f"{stage.name} needs the output of {up}, which has not finished: "
                f"run `llamagene run` without --only, or with --only {up} first"
            )
        upstream_dirs[up] = run_dir / up
    previous = manifest.stages.get(stage.name)
    record = StageRecord(
        status="running",
        run_id=uuid.uuid4().hex[:12],
        config=to_plain(cfg),
        inputs=record_paths(stage.inputs(cfg), previous.inputs if previous else None),
        upstream={up: manifest.stages[up].run_id for up in stage.upstream},
        started_at=_now(),
        versions=_versions(),
        git_commit=_git_commit(),
    )
    manifest.stages[stage.name] = record
    manifest.save()
    tmp_dir = run_dir / f".{stage.name}.tmp-{record.run_id}"
    tmp_dir.mkdir(parents=True)
    ctx = StageContext(
        stage.name, run_dir, tmp_dir, upstream_dirs, launcher=list(launcher) if launcher else None
    )
    start = time.perf_counter()
    try:
        stage.run(cfg, ctx)
        write_text_atomic(tmp_dir / "config.json", _json(record.config))
        _publish(tmp_dir, run_dir / stage.name)
        shutil.rmtree(run_dir / WORK_DIR / stage.name, ignore_errors=True)
    except BaseException as err:
        record.status = "failed"
        record.error = _describe(err)
        record.ended_at = _now()
        manifest.save()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    record.outputs = record_paths({stage.name: run_dir / stage.name})
    record.report = {**ctx.report, "wall_time_s": round(time.perf_counter() - start, 2)}
    record.status = "done"
    record.ended_at = _now()
    manifest.save()


def _publish(tmp_dir: Path, final_dir: Path) -> None:
    """Swap the finished folder into place; the old output is removed only after the swap."""
    old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(run_dir: Path) -> None:
    """Temporary folders of runs that were killed (the manifest already calls them stale)."""
    for leftover in run_dir.glob(".*.tmp-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    for leftover in run_dir.glob(".*.old-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One ``llamagene run`` per run folder at a time: two would write the same paths."""
    with (run_dir / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LlamageneError(
                f"{run_dir}: another `llamagene run` is using this run folder; wait for it to "
                f"finish, or give this pipeline its own run_dir"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _describe(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _versions() -> dict[str, str]:
    import platform

    versions = {"python": platform.python_version(), "llamagene": _version("llamagene")}
    versions.update({name: _version(name) for name in _TRACKED_PACKAGES})
    return versions


def _git_commit() -> str:
    from llamagene.shipped import is_checkout

    if not is_checkout():  # an installed copy: a git folder above it is not llamagene's
        return ""
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
