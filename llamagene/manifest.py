"""The run record: ``<run_dir>/manifest.json``, written by the machine, DVC-lock style.

For every stage it keeps the resolved config, each input and output file with its size,
modification time and SHA-256, the upstream stages' run ids and output digests, tool versions,
the git commit, the status (``running``, ``done``, ``failed``) and the process that set it, start
and end times, and the stage's report (figures such as bases/token or token id ranges).

A stage is stale when it never ran, did not finish, its config changed, an input or an output
changed, or an upstream stage's outputs changed or may change; ``llamagene.pipeline.assess``
says which, in words. Downstream stages follow their upstream's output *content*
(:func:`outputs_digest`), not its run id: a stage that re-runs and writes byte-identical outputs
leaves the stages after it up to date (an early cutoff, as in DVC and Bazel). Volatile files
(``timings.json``, ``logs/``: wall-clock figures) are neither recorded nor compared, and files
nobody recorded in an output folder are reported as stray, not taken for a change.

Files are re-hashed only when their size or modification time moved, so checking a run with a
3 GB genome input costs a ``stat``, not a read. The file is replaced atomically (temp + rename),
so a killed process never leaves it half-written. Loading checks every field against the
schema of :class:`StageRecord`; any fault is a "corrupt manifest" error naming the field.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from llamagene.errors import ManifestError

MANIFEST_NAME = "manifest.json"
FORMAT = "llamagene-manifest"
VERSION = 1
Status = Literal["running", "done", "failed"]
_CHUNK = 1 << 20
#: Output files whose content is expected to differ between identical runs (timings, logs):
#: paths relative to the stage's output folder, a trailing ``/`` for a whole folder.
VOLATILE_OUTPUTS = ("timings.json", "logs/")
_SCHEMA = ConfigDict(strict=True, extra="forbid")


@with_config(_SCHEMA)
@dataclass(frozen=True)
class FileRecord:
    """One file as last seen: where, how big, when modified, and its content hash."""

    size: int
    mtime_ns: int
    sha256: str


@with_config(_SCHEMA)
@dataclass
class StageRecord:
    """What the manifest knows about one stage's last run."""

    status: Status
    run_id: str
    config: dict[str, Any]
    inputs: dict[str, FileRecord] = field(default_factory=dict)
    #: Run id of each upstream stage when this one ran.
    upstream: dict[str, str] = field(default_factory=dict)
    #: :func:`outputs_digest` of each upstream stage when this one ran (its early cutoff).
    upstream_outputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, FileRecord] = field(default_factory=dict)
    started_at: str = ""
    ended_at: str = ""
    error: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str = ""
    #: The process that ran (or runs) the stage, so ``status`` can tell running from killed.
    pid: int = 0
    host: str = ""


@with_config(_SCHEMA)
@dataclass
class _ManifestFile:
    """The manifest file's layout, for validation on load."""

    format: Literal["llamagene-manifest"]
    version: Literal[1]
    stages: dict[str, StageRecord]


_MANIFEST_SCHEMA = TypeAdapter(_ManifestFile)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def iter_files(path: Path) -> Iterator[tuple[str, Path]]:
    """``(key, file)`` for a file, or for every file under a folder (keys relative, sorted)."""
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            yield child.relative_to(path).as_posix(), child
    else:
        yield "", path


def record_file(path: Path, previous: FileRecord | None = None) -> FileRecord:
    """Stat ``path``; hash it unless ``previous`` has the same size and mtime (then reuse)."""
    st = path.stat()
    if previous is not None and previous.size == st.st_size and previous.mtime_ns == st.st_mtime_ns:
        return previous
    return FileRecord(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256_file(path))


def record_paths(
    paths: Mapping[str, Path], previous: Mapping[str, FileRecord] | None = None
) -> dict[str, FileRecord]:
    """Records for named input paths; a folder contributes one entry per file (``name/rel``)."""
    previous = previous or {}
    records: dict[str, FileRecord] = {}
    for name, path in paths.items():
        for rel, file in iter_files(path):
            key = f"{name}/{rel}" if rel else name
            records[key] = record_file(file, previous.get(key))
    return records


def changed_files(
    recorded: Mapping[str, FileRecord], current_paths: Mapping[str, Path]
) -> list[str]:
    """Names of files whose content differs from the record (missing, new or edited)."""
    changes: list[str] = []
    seen: set[str] = set()
    for name, path in current_paths.items():
        if not path.exists():
            changes.append(f"{name} ({path}) is missing")
            seen.update(k for k in recorded if k == name or k.startswith(f"{name}/"))
            continue
        for rel, file in iter_files(path):
            key = f"{name}/{rel}" if rel else name
            seen.add(key)
            old = recorded.get(key)
            if old is None:
                changes.append(f"{key} is new")
            elif record_file(file, old).sha256 != old.sha256:
                changes.append(f"{key} changed")
    changes.extend(f"{key} was removed" for key in recorded if key not in seen)
    return changes


def is_volatile(key: str) -> bool:
    """Whether an output key (``<stage>/<path>``) names a volatile file (timings, logs)."""
    _, _, rel = key.partition("/")
    return any(rel == v or (v.endswith("/") and rel.startswith(v)) for v in VOLATILE_OUTPUTS)


def record_outputs(stage: str, folder: Path) -> dict[str, FileRecord]:
    """Records of a stage's output folder, volatile files left out."""
    records = record_paths({stage: folder})
    return {key: rec for key, rec in records.items() if not is_volatile(key)}


def output_changes(
    recorded: Mapping[str, FileRecord], stage: str, folder: Path
) -> tuple[list[str], list[str]]:
    """``(changes, stray)``: recorded output files that changed or went missing, and files in
    the folder that no run recorded (volatile files are neither)."""
    if not folder.is_dir():
        return [f"{stage} ({folder}) is missing"], []
    changes: list[str] = []
    present = {key: file for key, file in _keyed_files(stage, folder) if not is_volatile(key)}
    for key, old in recorded.items():
        if is_volatile(key):
            continue  # recorded by an older llamagene
        file = present.get(key)
        if file is None:
            changes.append(f"{key} was removed")
        elif record_file(file, old).sha256 != old.sha256:
            changes.append(f"{key} changed")
    stray = sorted(key for key in present if key not in recorded)
    return changes, stray


def _keyed_files(name: str, path: Path) -> Iterator[tuple[str, Path]]:
    for rel, file in iter_files(path):
        yield (f"{name}/{rel}" if rel else name), file


def outputs_digest(outputs: Mapping[str, FileRecord]) -> str:
    """One hash of a stage's recorded outputs: their names and contents, nothing else."""
    digest = hashlib.sha256()
    for key in sorted(outputs):
        if not is_volatile(key):
            digest.update(f"{key}\0{outputs[key].sha256}\n".encode())
    return digest.hexdigest()


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes.extend(config_changes(a, b, prefix=f"{path}."))
        elif a != b:
            changes.append(f"{path}: {_short(a)} -> {_short(b)}")
    return changes


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Manifest:
    """The manifest of one run folder. Load with :meth:`load`, change records, :meth:`save`."""

    def __init__(self, path: Path, stages: dict[str, StageRecord] | None = None) -> None:
        self.path = path
        self.stages: dict[str, StageRecord] = stages or {}

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        path = run_dir / MANIFEST_NAME
        if not path.exists():
            return cls(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f'not a llamagene manifest (no "format": "{FORMAT}")')
            if data.get("version") != VERSION:
                raise ValueError(f"manifest version {data.get('version')!r}, expected {VERSION}")
            stages = _MANIFEST_SCHEMA.validate_json(text).stages
        except ValidationError as err:
            raise _corrupt(path, _first_problem(err)) from None
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise _corrupt(path, str(err)) from None
        return cls(path, stages)

    def save(self) -> None:
        data = {
            "format": FORMAT,
            "version": VERSION,
            "stages": {name: asdict(rec) for name, rec in sorted(self.stages.items())},
        }
        write_text_atomic(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _corrupt(path: Path, problem: str) -> ManifestError:
    return ManifestError(
        f"{path}: corrupt manifest ({problem}). Move it aside to start the run record afresh "
        f"(every stage will then re-run), or restore it from a backup."
    )


def _first_problem(err: ValidationError) -> str:
    """``stages.train_bpe.outputs: Input should be an object (and 2 more problems)``"""
    problems = err.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a part."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
