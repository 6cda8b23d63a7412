"""The manifest: atomic writes, hash reuse, change detection, corrupt files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llamagene.errors import ManifestError
from llamagene.manifest import (
    FileRecord,
    Manifest,
    StageRecord,
    changed_files,
    config_changes,
    record_file,
    record_paths,
    write_text_atomic,
)


def test_round_trip_is_byte_identical(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path / "manifest.json")
    manifest.stages["a"] = StageRecord(
        status="done", run_id="r1", config={"x": 1},
        inputs={"in": FileRecord(3, 4, "ab" * 32)}, report={"pieces": 5},
    )  # fmt: skip
    manifest.save()
    first = manifest.path.read_bytes()
    again = Manifest.load(tmp_path)
    assert again.stages["a"].inputs["in"] == FileRecord(3, 4, "ab" * 32)
    again.save()
    assert manifest.path.read_bytes() == first


@pytest.mark.parametrize(
    "content",
    ['{"format": "llamagene-manifest", "version": 1, "stages": {"a": {"status": "odd"}}}',
     '{"format": "other"}', "not json", '{"format": "llamagene-manifest", "version": 9}',
     '{"format": "llamagene-manifest", "version": 1, "stages": {"a": {"status": "done"}}}'],
)  # fmt: skip
def test_corrupt_manifest(tmp_path: Path, content: str) -> None:
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=r"manifest.json: corrupt manifest .*Move it aside"):
        Manifest.load(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m.json"
    write_text_atomic(target, "old")

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_hash_reused_when_size_and_mtime_match(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("abc")
    first = record_file(path)
    fake = FileRecord(first.size, first.mtime_ns, "0" * 64)
    assert record_file(path, fake) is fake  # not re-read
    os.utime(path, ns=(1, 1))
    assert record_file(path, fake).sha256 == first.sha256


def test_changed_files_for_files_and_folders(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "a").write_text("1")
    (folder / "b").write_text("2")
    single = tmp_path / "s"
    single.write_text("x")
    paths = {"dir": folder, "one": single}
    recorded = record_paths(paths)
    assert set(recorded) == {"dir/a", "dir/b", "one"}
    assert changed_files(recorded, paths) == []
    (folder / "a").write_text("changed")
    (folder / "b").unlink()
    (folder / "c").write_text("3")
    single.unlink()
    assert changed_files(recorded, paths) == [
        "dir/a changed", "dir/c is new", f"one ({single}) is missing", "dir/b was removed",
    ]  # fmt: skip


def test_config_changes_are_dotted() -> None:
    old = {"a": 1, "b": {"c": [1, 2], "d": "x"}}
    new = {"a": 1, "b": {"c": [1, 3], "e": 2}}
    assert config_changes(old, new) == [
        "b.c: [1, 2] -> [1, 3]",
        'b.d: "x" -> null',
        "b.e: null -> 2",
    ]
    assert json.dumps(config_changes(old, old)) == "[]"
