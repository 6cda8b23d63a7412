"""Who owns a run folder or a temporary folder, and whether that owner is still alive.

    lock = try_acquire(run_dir / ".lock", "llamagene run")  # None: a live process has it
    ...
    lock.release()
    holder(run_dir / ".lock")   # -> Holder(pid, host, since, what) while someone holds it
    remove_unowned(cache_dir, ".tmp-*")   # temporary folders whose owner died

A lock is an exclusive ``flock`` on a file, so the kernel drops it the moment its process dies:
there is no stale pid file to clean up after a ``kill -9``. The file holds the owner's pid,
host and start time for ``llamagene status``.

Forked children never hold their parent's locks. A ``flock`` belongs to the open file, which a
fork shares, so a worker left running after its parent was killed would keep the run folder
locked; :func:`_after_fork_in_child` closes the child's copy of every held lock. While a lock is
held, forked children (worker pools: ``datasets`` tokenizing, build_sft rendering) also get
``PR_SET_PDEATHSIG`` on Linux, so they are killed when the process that forked them dies
instead of waiting forever on a pipe nobody reads.

A temporary folder ``X`` is owned through ``X.lock`` beside it: the owner takes the lock before
it creates the folder, and :func:`remove_unowned` removes a folder only when it can take that
lock itself, so a run never deletes a folder another live process is still writing, even when
someone deleted the run folder's ``.lock`` meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("llamagene")

LOCK_SUFFIX = ".lock"
_PR_SET_PDEATHSIG = 1
#: Open lock files of this process, by file descriptor.
_held: dict[int, Path] = {}
#: The pid that forked, seen by the child (set just before each fork).
_forking_pid = 0


@dataclass(frozen=True)
class Holder:
    """The live owner of a lock, as its lock file describes it."""

    pid: int | None
    host: str
    since: str
    what: str

    def describe(self) -> str:
        """``pid 123 on node7, since 2026-12-02T07:45:00+00:00``"""
        where = f" on {self.host}" if self.host and self.host != socket.gethostname() else ""
        pid = f"pid {self.pid}" if self.pid is not None else "pid unknown"
        return f"{pid}{where}, since {self.since or 'unknown'}"


class Lock:
    """A held lock; :func:`try_acquire` gives one, :meth:`release` ends it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def release(self, remove: bool = False) -> None:
        """Drop the lock; ``remove`` also deletes the lock file (while still holding it, so
        no other process can be holding a lock on the file that disappears)."""
        if self.fd is None or self.fd not in _held:  # gone, or closed in a forked child
            self.fd = None
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        _held.pop(self.fd, None)
        os.close(self.fd)  # closing the last descriptor of the open file releases the flock
        self.fd = None


def try_acquire(path: Path, what: str) -> Lock | None:
    """Take the lock on ``path`` (created if needed), or None when a live process holds it."""
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        locked = False
        try:
            for attempt in range(5):  # a `status` probe holds a shared lock for microseconds
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                    break
                except BlockingIOError:
                    time.sleep(0.02 * (attempt + 1))
            if not locked:
                os.close(fd)
                return None
            if not _same_file(fd, path):  # removed or replaced between open and flock
                os.close(fd)
                continue
        except BaseException:
            os.close(fd)
            raise
        _describe_owner(fd, what)
        _held[fd] = path
        return Lock(path, fd)
    raise OSError(errno.EAGAIN, "the lock file keeps being replaced", str(path))


def holder(path: Path) -> Holder | None:
    """Who holds the lock on ``path`` now; None when nobody does (or there is no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def owned_path(folder: Path) -> Path:
    """The lock file that says who owns a temporary folder."""
    return folder.with_name(folder.name + LOCK_SUFFIX)


def remove_unowned(parent: Path, pattern: str) -> list[Path]:
    """Remove the folders matching ``pattern`` in ``parent`` whose owner is gone; return them.

    A folder with a live owner is left alone. One without a lock file at all is also removed:
    owners take their lock before they create their folder."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for folder in sorted(parent.glob(pattern)):
        if folder.name.endswith(LOCK_SUFFIX) or not folder.is_dir():
            continue
        lock = try_acquire(owned_path(folder), "cleanup")
        if lock is None:
            continue  # its owner is alive
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            lock.release(remove=True)
        removed.append(folder)
    for orphan in parent.glob(f"{pattern}{LOCK_SUFFIX}"):  # lock files whose folder is gone
        folder = orphan.with_name(orphan.name.removesuffix(LOCK_SUFFIX))
        if not folder.exists() and (lock := try_acquire(orphan, "cleanup")) is not None:
            lock.release(remove=True)
    return removed


def live_owners(parent: Path, pattern: str) -> list[tuple[Path, Holder]]:
    """Folders matching ``pattern`` in ``parent`` that a live process owns."""
    found = []
    for folder in sorted(parent.glob(pattern)):
        if folder.name.endswith(LOCK_SUFFIX):
            continue
        owner = holder(owned_path(folder))
        if owner is not None:
            found.append((folder, owner))
    return found


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux only); exit
    at once if the parent is already gone. For ``preexec_fn`` and forked workers."""
    parent = _forking_pid or os.getppid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def terminate_with_parent() -> None:
    """``preexec_fn`` for a launcher (torchrun, deepspeed): SIGTERM when llamagene dies, which
    it handles by stopping its own workers."""
    die_with_parent(signal.SIGTERM)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _describe_owner(fd: int, what: str) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "what": what,
    }
    data = (json.dumps(info) + "\n").encode()
    with contextlib.suppress(OSError):  # a full disk must not stop the lock from working
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def _read_owner(fd: int) -> Holder:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        if not isinstance(info, dict):
            raise ValueError
    except (OSError, ValueError):
        info = {}  # written by an older llamagene, or caught mid-write
    pid = info.get("pid")
    return Holder(
        pid if isinstance(pid, int) else None,
        str(info.get("host", "")),
        str(info.get("since", "")),
        str(info.get("what", "")),
    )


def _before_fork() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _after_fork_in_child() -> None:
    if not _held:
        return
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)  # the parent's open file keeps the lock; this copy must not
    _held.clear()
    die_with_parent()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
