"""The stage graph: load a pipeline file, say what is stale and why, run what is stale in order.

    pipeline = load_pipeline(Path("pipelines/demo/pipeline.yaml"), overrides=["train_bpe.seed=1"])
    for st in pipeline.status(): print(st.name, st.state, st.reasons)
    pipeline.run()                      # every stale stage, in order
    pipeline.run(only={"merge_vocab"})  # just that one (its upstream must have run once)

A stage runs in a temporary folder next to its output folder; only when it succeeds does the
folder replace ``<run_dir>/<stage>/`` and the manifest say ``done``. A stage that fails, or a
process that is killed, leaves the previous output (if any) in place and the stage stale.

One ``llamagene run`` at a time uses a run folder (``<run_dir>/.lock``, :mod:`llamagene.locks`:
released by the kernel when the process dies, never held by its workers). Temporary folders are
owned the same way, so leftovers of a killed run are removed and those of a live one never are.
A stage that re-runs with byte-identical outputs leaves the stages after it up to date.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from llamagene import faults, locks
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
    output_changes,
    outputs_digest,
    record_outputs,
    record_paths,
    write_text_atomic,
)
from llamagene.stages import PLANNED_STAGES, WORK_DIR, Stage, StageContext, all_stages
from llamagene.stages.build_sft import BuildSftConfig
from llamagene.stages.finetune import FinetuneConfig
from llamagene.stages.merge_vocab import MergeVocabConfig
from llamagene.stages.pretrain import PretrainConfig
from llamagene.stages.train_bpe import TrainBpeConfig

log = logging.getLogger("llamagene")
#: A stage as ``status`` sees it; ``run`` reports "ran" for the stages it ran.
State = Literal["up to date", "stale", "failed", "running", "ran"]
_TRACKED_PACKAGES = ("sentencepiece", "tokenizers", "transformers", "torch", "peft", "deepspeed")
RUN_LOCK = ".lock"
#: Temporary folders of the stages (``.<stage>.tmp-<run id>``) and of output swaps.
_TMP_PATTERN = ".*.tmp-*"
#: A run folder on a disk with less free space than this is refused before any work.
MIN_FREE_BYTES = 16 << 20
#: OS errors that are about the disk or permissions, not a bug: reported in one line.
_DISK_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or a limit",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error (a failing disk or network file system)",
}


class StagesConfig(StrictModel):
    """The stages a pipeline runs; leave a stage out to not run it."""

    train_bpe: TrainBpeConfig | None = None
    merge_vocab: MergeVocabConfig | None = None
    pretrain: PretrainConfig | None = None
    build_sft: BuildSftConfig | None = None
    finetune: FinetuneConfig | None = None


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
            if record is not None and record.status == "running" and _runs_it(owner, record):
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
        done: list[StageStatus] = []
        with _run_lock(self.run_dir):
            _remove_leftovers(self.run_dir)
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
                _run_stage(stage, cfg, manifest, self.run_dir, launcher)
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


def run_dir_problems(run_dir: Path) -> list[str]:
    """Why ``run_dir`` cannot hold a run (not a folder, not writable, a full disk), found
    without writing anything; empty when it can."""
    if run_dir.exists() and not run_dir.is_dir():
        return [f"run_dir: {run_dir} is a file, not a folder"]
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"run_dir: cannot create {run_dir}: {existing} is a file, not a folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == run_dir else f"cannot be created in {existing}"
        return [f"run_dir: {run_dir} {what} (permission denied); choose another run_dir"]
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return []
    if free < MIN_FREE_BYTES:
        return [
            f"run_dir: the disk holding {existing} is full ({free / 2**20:.1f} MiB free); "
            f"free some space or choose another run_dir"
        ]
    return []


def _run_stage(
    stage: Stage, cfg: Any, manifest: Manifest, run_dir: Path, launcher: Sequence[str] | None
) -> None:
    upstream_dirs: dict[str, Path] = {}
    upstream = stage.upstream(cfg)
    for up in upstream:
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
        upstream={up: manifest.stages[up].run_id for up in upstream},
        upstream_outputs={up: outputs_digest(manifest.stages[up].outputs) for up in upstream},
        started_at=_now(),
        versions=_versions(),
        git_commit=_git_commit(),
        pid=os.getpid(),
        host=socket.gethostname(),
    )
    tmp_dir = run_dir / f".{stage.name}.tmp-{record.run_id}"
    owner = None
    start = time.perf_counter()
    try:
        manifest.stages[stage.name] = record
        manifest.save()
        owner = locks.try_acquire(locks.owned_path(tmp_dir), f"llamagene run: {stage.name}")
        tmp_dir.mkdir(parents=True)
        ctx = StageContext(
            stage.name,
            run_dir,
            tmp_dir,
            upstream_dirs,
            launcher=list(launcher) if launcher else None,
        )
        stage.run(cfg, ctx)
        write_text_atomic(tmp_dir / "config.json", _json(record.config))
        _publish(tmp_dir, run_dir / stage.name)
        shutil.rmtree(run_dir / WORK_DIR / stage.name, ignore_errors=True)
        record.outputs = record_outputs(stage.name, run_dir / stage.name)
        record.report = {**ctx.report, "wall_time_s": round(time.perf_counter() - start, 2)}
        record.status = "done"
        record.ended_at = _now()
        manifest.save()
    except BaseException as err:
        record.status = "failed"
        record.error = _describe(err)
        record.ended_at = _now()
        with contextlib.suppress(OSError):  # on a full disk the old manifest stays, still valid
            manifest.save()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in _DISK_ERRORS:
            raise StageError(_disk_error(stage.name, err, run_dir)) from None
        if not isinstance(err, LlamageneError | KeyboardInterrupt) and _disk_full(run_dir):
            # libraries report a full disk in their own words (torch: "file write failed")
            full = OSError(errno.ENOSPC, "disk full", str(run_dir))
            message = f"{_disk_error(stage.name, full, run_dir)} (it said {_describe(err)})"
            raise StageError(message) from None
        raise
    finally:
        if owner is not None:
            owner.release(remove=True)
    if _same_outputs(previous, record):
        log.info(
            "%s: re-ran with outputs identical to the last run; the stages after it that were "
            "up to date stay so",
            stage.name,
        )


def _same_outputs(previous: StageRecord | None, record: StageRecord) -> bool:
    if previous is None or previous.status != "done":
        return False
    return outputs_digest(previous.outputs) == outputs_digest(record.outputs)


def _disk_full(run_dir: Path) -> bool:
    try:
        return shutil.disk_usage(run_dir).free < MIN_FREE_BYTES
    except OSError:
        return False


def _disk_error(stage: str, err: OSError, run_dir: Path) -> str:
    """``train_bpe: no space left on the device writing /run/x (errno 28); ...``"""
    what = _DISK_ERRORS[err.errno or 0]
    path = err.filename or run_dir
    return (
        f"{stage}: {what} ({path}); the stage is marked failed and the outputs of its last "
        f"successful run are kept; fix it and run again"
    )


def _publish(tmp_dir: Path, final_dir: Path) -> None:
    """Swap the finished folder into place; the old output is removed only after the swap."""
    old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(run_dir: Path) -> None:
    """Temporary folders of runs that were killed (the manifest already calls them stale), and
    of corpus builds in the default cache; never one that a live process owns."""
    for folder in locks.remove_unowned(run_dir, _TMP_PATTERN):
        log.info("removed %s, left by a run that was killed", folder)
    for leftover in run_dir.glob(".*.old-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    cache = run_dir / ".cache" / "corpus"
    for folder in locks.remove_unowned(cache, ".tmp-*"):
        log.info("removed %s, left by a corpus build that was killed", folder)


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """One ``llamagene run`` per run folder at a time: two would write the same paths."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = locks.try_acquire(run_dir / RUN_LOCK, "llamagene run")
    except OSError as err:
        reason = _DISK_ERRORS.get(err.errno or 0) or err.strerror or str(err)
        raise LlamageneError(f"run_dir: cannot use {run_dir}: {reason}") from None
    if lock is None:
        owner = locks.holder(run_dir / RUN_LOCK)
        who = f" ({owner.describe()})" if owner and owner.pid is not None else ""
        raise LlamageneError(
            f"{run_dir}: another `llamagene run` is using this run folder{who}; wait for it "
            f"to finish, or give this pipeline its own run_dir"
        )
    faults.arm()
    try:
        busy = locks.live_owners(run_dir, _TMP_PATTERN)
        if busy:  # its .lock was deleted under it
            folder, owner = busy[0]
            raise LlamageneError(
                f"{run_dir}: another `llamagene run` is using this run folder "
                f"({owner.describe()}, writing {folder.name}); wait for it to finish"
            )
        yield
    finally:
        lock.release()


def _runs_it(owner: locks.Holder | None, record: StageRecord) -> bool:
    """Whether the live holder of the run lock is the process that started this stage."""
    if owner is None:
        return False
    if owner.pid is None or not record.pid:
        return True  # an older record or lock file: the lock alone says a run is live
    return owner.pid == record.pid and (not record.host or owner.host == record.host)


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
