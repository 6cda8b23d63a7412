"""The run folder: whether it can hold a run, one run at a time in it, one stage run into it.

A stage runs in a temporary folder next to its output folder; only when it succeeds does the
folder replace ``<run_dir>/<stage>/`` and the manifest say ``done``. A stage that fails, or a
process that is killed, leaves the previous output (if any) in place and the stage stale. The
manifest records what the stage ran on: its config, inputs, upstream runs and their outputs,
package versions, git commit, pid and host; a disk or permission error is one line naming the
stage and the path.

One ``llamagene run`` at a time uses a run folder (``<run_dir>/.lock``, :mod:`llamagene.locks`:
released by the kernel when the process dies, never held by its workers). Temporary folders are
owned the same way, so leftovers of a killed run are removed and those of a live one never are.
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
from importlib import metadata
from pathlib import Path
from typing import Any

from llamagene import faults, locks
from llamagene.config import to_plain
from llamagene.errors import LlamageneError, StageError
from llamagene.manifest import (
    Manifest,
    StageRecord,
    outputs_digest,
    record_outputs,
    record_paths,
    write_text_atomic,
)
from llamagene.stages import WORK_DIR, Stage, StageContext

log = logging.getLogger("llamagene")

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


def run_stage(
    stage: Stage, cfg: Any, manifest: Manifest, run_dir: Path, launcher: Sequence[str] | None
) -> None:
    """Run ``stage`` into ``<run_dir>/<stage>/`` through a temporary folder, recording it in
    the manifest (running, then done or failed); its upstream stages must be done."""
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


def remove_leftovers(run_dir: Path) -> None:
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
def run_lock(run_dir: Path) -> Iterator[None]:
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


def runs_stage(owner: locks.Holder | None, record: StageRecord) -> bool:
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


def package_version(package: str) -> str:
    """The installed version of ``package``, or "unknown"."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _versions() -> dict[str, str]:
    import platform

    versions = {"python": platform.python_version(), "llamagene": package_version("llamagene")}
    versions.update({name: package_version(name) for name in _TRACKED_PACKAGES})
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
