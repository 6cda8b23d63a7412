"""Runs that survive kill -9, full disks and odd configs, and rerun only what changed.

One test (or a few) per case of the reliability issue, numbered as there:
1. workers never outlive a killed run, nor keep its lock (build_sft, corpus tokenizing);
2. checkpoints: tests/stages/test_reliability_checkpoints.py;
3. every structural fault of the manifest is a "corrupt manifest" error naming the field;
4. an unusable run folder or a full disk is one line, and leaves the manifest valid;
5. an empty stage body, or no stages, is an error;
6. early cutoff, and stray files reported, not taken for a change;
7. byte-identical outputs in two run folders;
8. leftover temporary folders, ``status`` of a live run, a deleted ``.lock``;
9. hints and input checks: tests/stages/test_reliability_checks.py.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FIXTURES, GENOMES, write_pipeline
from pretrain_setup import PRETRAIN

from llamagene import locks
from llamagene.cli import main
from llamagene.errors import ConfigError, LlamageneError, ManifestError, StageError
from llamagene.faults import FAULT_ENV
from llamagene.manifest import Manifest, is_volatile
from llamagene.pipeline import Pipeline, load_pipeline
from llamagene.stages.train_bpe import STAGE as TRAIN_BPE

REPO = Path(__file__).resolve().parents[2]
MARK_ENV = "LLAMAGENE_TEST_MARK"
PROMOTER = {"source": "table", "spec": str(FIXTURES / "tasks" / "table" / "promoter.yaml")}
TINY_PRETRAIN: dict[str, Any] = {
    **PRETRAIN,
    "data_workers": 2,  # tokenizing in forked workers: the case that orphaned them
    "export_merged": False,
    "training": {"max_steps": 2, "micro_batch_size": 2, "global_batch_size": 2},
}
TINY_RECIPE = {
    "seed": 7,
    "validation_fraction": 0.1,
    "sources": [
        {"name": "dna", "kind": "dna", "paths": [str(GENOMES / "genes_a.fa")],
         "window_chars": 256},
        {"name": "protein", "kind": "protein", "paths": [str(GENOMES / "proteins.faa")]},
    ],
}  # fmt: skip


def _llamagene(*args: str, mark: str = "", fault: str = "") -> subprocess.CompletedProcess[str]:
    """``llamagene ARGS`` in a subprocess. Its output goes to files, not pipes: a worker left
    alive would hold a pipe open and keep the caller waiting."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", MARK_ENV: mark or uuid.uuid4().hex}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = subprocess.run(
            [sys.executable, "-m", "llamagene", *args],
            stdout=out, stderr=err, text=True, env=env, timeout=600, check=False,
        )  # fmt: skip
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(done.args, done.returncode, out.read(), err.read())


def _marked_processes(mark: str) -> list[int]:
    """Live processes started with ``MARK_ENV=mark`` (zombies have no environment to read)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if f"{MARK_ENV}={mark}".encode() in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def _wait_until_gone(mark: str, seconds: float = 10.0) -> list[int]:
    """The marked processes still alive after ``seconds``; they are killed before returning."""
    deadline = time.monotonic() + seconds
    while (left := _marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def _output_hashes(run_dir: Path, stage: str) -> dict[str, str]:
    record = Manifest.load(run_dir).stages[stage]
    assert record.status == "done"
    return {key: rec.sha256 for key, rec in record.outputs.items()}


def _kill_and_rerun(pipeline: Path, stage: str, fault: str) -> subprocess.CompletedProcess[str]:
    """Kill a run of ``stage`` at ``fault``; check its workers die with it; rerun it."""
    mark = uuid.uuid4().hex
    killed = _llamagene("run", str(pipeline), "--only", stage, "--force", mark=mark, fault=fault)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _wait_until_gone(mark) == [], "workers outlived the killed run"
    start = time.monotonic()
    rerun = _llamagene("run", str(pipeline), "--only", stage)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "another `llamagene run`" not in rerun.stderr
    assert time.monotonic() - start < 300
    return rerun


# ---- 1. workers die with the run and never hold its lock ----------------------------------


def test_killed_build_sft_leaves_no_workers_and_reruns_to_the_same_rows(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(
        yaml.safe_dump({"seed": 3, "tasks": [{"data": PROMOTER}]})
    )
    pipeline = write_pipeline(tmp_path, build_sft={"recipe": "recipe.yaml", "workers": 2})
    done = _llamagene("run", str(pipeline))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    want = _output_hashes(run_dir, "build_sft")

    _kill_and_rerun(pipeline, "build_sft", "build_sft.render")
    assert _output_hashes(run_dir, "build_sft") == want
    assert not list(run_dir.glob(".*.tmp-*"))


def test_killed_corpus_tokenizing_leaves_no_workers_and_reruns_the_same(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(TINY_RECIPE))
    pipeline = write_pipeline(tmp_path, pretrain=TINY_PRETRAIN)
    done = _llamagene("run", str(pipeline))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    want = _output_hashes(run_dir, "pretrain")
    cache = run_dir / ".cache" / "corpus"
    shutil.rmtree(cache)  # so the forced run tokenizes again

    mark = uuid.uuid4().hex
    killed = _llamagene(
        "run", str(pipeline), "--only", "pretrain", "--force", mark=mark, fault="corpus.tokenize"
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _wait_until_gone(mark) == [], "tokenizing workers outlived the killed run"
    assert list(cache.glob(".tmp-*")), "the kill did not happen while the corpus was built"
    rerun = _llamagene("run", str(pipeline), "--only", "pretrain")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not [p for p in cache.glob(".tmp-*")], "the killed build's folder was left behind"
    assert _output_hashes(run_dir, "pretrain") == want


def test_forked_children_do_not_hold_the_run_lock(tmp_path: Path) -> None:
    lock = locks.try_acquire(tmp_path / ".lock", "test")
    assert lock is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait for the parent's signal, then report whether it holds it
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    try:
        lock.release()  # the parent lets go while the child still lives
        again = locks.try_acquire(tmp_path / ".lock", "test")
        assert again is not None, "a forked child kept the lock"
        again.release()
    finally:
        os.write(write_end, b"x")
        os.waitpid(pid, 0)


def test_a_launcher_is_stopped_when_llamagene_dies(tmp_path: Path) -> None:
    # pretrain starts torchrun / deepspeed with this preexec_fn; kill the starter, see it go
    script = (
        "import os, signal, subprocess, sys\n"
        "from llamagene import locks\n"
        "child = subprocess.Popen(['sleep', '120'], preexec_fn=locks.terminate_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -9, done.stderr
    pid = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the launcher outlived the process that started it"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ---- 3. the manifest loads through a typed schema -----------------------------------------


@pytest.fixture(scope="module")
def done_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train_bpe and merge_vocab run once; tests copy the folder before changing it."""
    root = tmp_path_factory.mktemp("done")
    load_pipeline(write_pipeline(root)).run()
    return root


@pytest.fixture
def done(done_run: Path, tmp_path: Path) -> Pipeline:
    shutil.copytree(done_run, tmp_path / "copy", symlinks=True)
    return load_pipeline(tmp_path / "copy" / "pipeline.yaml")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.update(stages=[]), "stages"),
        (lambda m: m["stages"].update(train_bpe="done"), "stages.train_bpe"),
        (lambda m: m["stages"]["train_bpe"].update(outputs=[]), "stages.train_bpe.outputs"),
        (lambda m: m["stages"]["train_bpe"].update(status="finished"), "stages.train_bpe.status"),
        (lambda m: m["stages"]["merge_vocab"].update(upstream=None), "stages.merge_vocab.upstream"),
        (
            lambda m: next(iter(m["stages"]["train_bpe"]["outputs"].values())).update(size="9"),
            "stages.train_bpe.outputs.train_bpe/config.json.size",
        ),
        (lambda m: m["stages"]["train_bpe"].pop("run_id"), "stages.train_bpe.run_id"),
        (lambda m: m["stages"]["train_bpe"].update(colour="red"), "stages.train_bpe.colour"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_a_corrupt_manifest(
    done: Pipeline, edit: Any, field: str
) -> None:
    path = done.run_dir / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    for command in (done.status, done.run):
        with pytest.raises(ManifestError, match="corrupt manifest") as caught:
            command()
        assert f"({field}: " in str(caught.value)
        assert "\n" not in str(caught.value)


# ---- 4. the run folder is checked first; a full disk is one line --------------------------


def test_a_run_dir_that_is_a_file_is_refused_by_validate_and_run(
    make_pipeline: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "run").write_text("not a folder")
    path = str(make_pipeline())
    for command in ("validate", "run"):
        assert main([command, path]) == 2
        err = capsys.readouterr().err
        assert "run_dir:" in err and "is a file, not a folder" in err
        assert "Traceback" not in err
    (tmp_path / "run").unlink()
    (tmp_path / "run").symlink_to(tmp_path / "pipeline.yaml")  # a link to a file is no better
    assert main(["validate", path]) == 2


def _as_unprivileged_user(command: list[str]) -> tuple[int, str]:
    """``main(command)`` in a forked child that runs as user ``nobody`` when the tests run as
    root (root writes anywhere); its exit code and what it printed to stderr."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, run, send back (code, stderr)
        code, err = 3, ""
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            buffer = io.StringIO()
            with contextlib.redirect_stderr(buffer):
                code = main(command)
            err = buffer.getvalue()
        except BaseException as exc:  # report, never run the parent's test code
            err = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, json.dumps([code, err]).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    code, err = json.loads(data)
    return int(code), str(err)


def test_a_run_dir_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="llamagene-readonly-"))  # reachable by `nobody`
    try:
        os.chmod(root, 0o755)
        pipeline = write_pipeline(root)
        assert main(["validate", str(pipeline)]) == 0  # imports all it needs, as root
        (root / "run").mkdir()
        os.chmod(root / "run", 0o555)
        for command in ("validate", "run"):
            code, err = _as_unprivileged_user([command, str(pipeline)])
            assert code == 2, err
            assert f"run_dir: {root / 'run'} is not writable" in err, err
            assert "Traceback" not in err and err.count("\n") <= 3
        shutil.rmtree(root / "run")
        os.chmod(root, 0o555)  # a run_dir that would have to be created in a read-only folder
        code, err = _as_unprivileged_user(["validate", str(pipeline)])
        assert code == 2 and f"cannot be created in {root}" in err, err
    finally:
        os.chmod(root, 0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_a_full_disk_during_a_stage_is_one_line_and_the_manifest_stays_valid(
    done: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (done.run_dir / "train_bpe" / "dna.model").read_bytes()

    def full_disk(cfg: Any, ctx: Any) -> None:
        (ctx.out_dir / "dna.model").write_bytes(b"half")
        with open("/dev/full", "wb") as disk:  # a real ENOSPC from the kernel
            disk.write(b"x" * 65536)
            disk.flush()

    monkeypatch.setattr(TRAIN_BPE, "run", full_disk)
    assert main(["run", str(done.path), "--force", "--only", "train_bpe"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("error:")] == err[-1:]
    message = err[-1]
    assert message.startswith("error: train_bpe: no space left on the device")
    assert str(done.run_dir) in message
    assert not any("Traceback" in line for line in err)
    manifest = Manifest.load(done.run_dir)  # still valid
    assert manifest.stages["train_bpe"].status == "failed"
    assert {st.name: st.state for st in done.status()}["train_bpe"] == "failed"
    assert (done.run_dir / "train_bpe" / "dna.model").read_bytes() == before
    assert not list(done.run_dir.glob(".*.tmp-*"))


def test_a_full_disk_is_refused_before_any_work(
    make_pipeline: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(make_pipeline())
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10, 9, 1 << 20))  # type: ignore[attr-defined]
    for command in ("validate", "run"):
        assert main([command, path]) == 2
        err = capsys.readouterr().err
        assert "run_dir: the disk holding" in err and "is full (1.0 MiB free)" in err


def test_a_library_failing_on_a_full_disk_is_reported_as_a_full_disk(
    done: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    def torch_save_on_a_full_disk(cfg: Any, ctx: Any) -> None:
        usage = shutil._ntuple_diskusage(10, 10, 0)  # type: ignore[attr-defined]
        monkeypatch.setattr(shutil, "disk_usage", lambda _: usage)
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64")

    monkeypatch.setattr(TRAIN_BPE, "run", torch_save_on_a_full_disk)
    with pytest.raises(StageError) as caught:
        done.run(only=["train_bpe"], force=True)
    message = str(caught.value)
    assert message.startswith("train_bpe: no space left on the device (")
    assert "it said RuntimeError: [enforce fail" in message
    assert Manifest.load(done.run_dir).stages["train_bpe"].status == "failed"


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.EACCES, "permission denied"), (errno.EDQUOT, "disk quota exceeded")],
)
def test_disk_and_permission_errors_in_a_stage_name_the_path_and_stage(
    done: Pipeline, monkeypatch: pytest.MonkeyPatch, code: int, words: str
) -> None:
    def refused(cfg: Any, ctx: Any) -> None:
        raise OSError(code, os.strerror(code), str(ctx.out_dir / "dna.model"))

    monkeypatch.setattr(TRAIN_BPE, "run", refused)
    with pytest.raises(StageError) as caught:
        done.run(only=["train_bpe"], force=True)
    message = str(caught.value)
    assert message.startswith(f"train_bpe: {words} (")
    assert "dna.model" in message and "\n" not in message
    assert Manifest.load(done.run_dir).stages["train_bpe"].status == "failed"


# ---- 5. an empty stage body, or no stages, is an error ------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "run_dir: run\nstages:\n  merge_vocab:\n",
            "stages.merge_vocab: the stage has no settings",
        ),
        ("run_dir: run\nstages: {}\n", "stages: no stages configured"),
        ("run_dir: run\nstages:\n", "stages: no stages configured"),
    ],
)
def test_empty_stages_are_errors(
    tmp_path: Path, text: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_pipeline(path)
    for command in ("validate", "run", "status"):
        assert main([command, str(path)]) == 2
        assert problem in capsys.readouterr().err


def test_an_empty_body_beside_a_real_stage_is_named(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path)
    data = yaml.safe_load(pipeline.read_text())
    data["stages"]["merge_vocab"] = None
    pipeline.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as caught:
        load_pipeline(pipeline)
    assert caught.value.problems == [
        "stages.merge_vocab: the stage has no settings (an empty body); give its settings, "
        "`merge_vocab: {}` for the defaults, or remove the key"
    ]


# ---- 6. early cutoff; stray files are reported, not a change ------------------------------


def _statuses(pipeline: Pipeline) -> dict[str, tuple[str, list[str], list[str]]]:
    return {st.name: (st.state, st.reasons, st.notes) for st in pipeline.status()}


def test_a_stage_that_reruns_to_identical_outputs_leaves_later_stages_alone(
    done: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    with (done.run_dir / "train_bpe" / "dna.vocab").open("a") as vocab:
        vocab.write("x")
    statuses = _statuses(done)
    assert statuses["train_bpe"][:2] == ("stale", ["output train_bpe/dna.vocab changed"])
    merge_record = Manifest.load(done.run_dir).stages["merge_vocab"]
    caplog.set_level("INFO", logger="llamagene")
    ran = [r.name for r in done.run() if r.state == "ran"]
    assert ran == ["train_bpe"]
    assert "train_bpe: re-ran with outputs identical to the last run" in caplog.text
    assert "merge_vocab: train_bpe re-ran with identical outputs" in caplog.text
    statuses = _statuses(done)
    assert statuses["merge_vocab"] == (
        "up to date",
        [],
        ["train_bpe re-ran with identical outputs"],
    )
    assert Manifest.load(done.run_dir).stages["merge_vocab"] == merge_record  # untouched


def test_a_stray_file_in_an_output_folder_is_reported_not_rerun(done: Pipeline) -> None:
    (done.run_dir / "train_bpe" / "notes.txt").write_text("my notes\n")
    statuses = _statuses(done)
    assert statuses["train_bpe"][:2] == ("up to date", [])
    assert statuses["train_bpe"][2] == [
        "stray file train_bpe/notes.txt (not written by llamagene): ignored, and removed when "
        "train_bpe re-runs"
    ]
    assert statuses["merge_vocab"][:2] == ("up to date", [])
    assert [r.name for r in done.run() if r.state == "ran"] == []


def test_status_says_stray_files_on_the_command_line(
    done: Pipeline, capsys: pytest.CaptureFixture[str]
) -> None:
    (done.run_dir / "merge_vocab" / "notes.txt").write_text("my notes\n")
    assert main(["status", str(done.path)]) == 0
    out = capsys.readouterr().out
    assert "merge_vocab  up to date" in out
    assert "note: stray file merge_vocab/notes.txt" in out


# ---- 7. outputs are byte-identical on a clean rerun ---------------------------------------


def test_demo_first_two_stages_give_the_same_output_hashes_in_two_folders(tmp_path: Path) -> None:
    demo = REPO / "pipelines" / "demo" / "pipeline.yaml"
    hashes = []
    for name in ("a", "b"):
        pipeline = load_pipeline(demo, [f"run_dir={tmp_path / name}"])
        pipeline.run(only=["train_bpe", "merge_vocab"])
        hashes.append(
            {
                stage: _output_hashes(tmp_path / name, stage)
                for stage in ("train_bpe", "merge_vocab")
            }
        )
    assert hashes[0] == hashes[1]
    assert all(hashes[0].values())
    assert (tmp_path / "a" / "train_bpe" / "timings.json").is_file()  # kept, but not hashed
    assert not any(is_volatile(key) for stage in hashes[0].values() for key in stage)


# ---- 8. cleanup, status of a live run, a deleted .lock ------------------------------------


@pytest.fixture
def held() -> Iterator[list[locks.Lock]]:
    """Locks a test takes as if another live run held them; released at the end."""
    taken: list[locks.Lock] = []
    yield taken
    for lock in taken:
        lock.release()


def test_leftover_temporary_folders_are_removed_unless_owned(
    done: Pipeline, held: list[locks.Lock]
) -> None:
    cache = done.run_dir / ".cache" / "corpus"
    dead, live = cache / ".tmp-0123456789abcdef-1-dead", cache / ".tmp-0123456789abcdef-2-live"
    stage_dead = done.run_dir / ".train_bpe.tmp-dead"
    for folder in (dead, live, stage_dead):
        folder.mkdir(parents=True)
        (folder / "train.bin").write_bytes(b"half")
    lock = locks.try_acquire(locks.owned_path(live), "corpus build")
    assert lock is not None
    held.append(lock)
    done.run()
    assert not dead.exists() and not stage_dead.exists()
    assert live.is_dir() and (live / "train.bin").is_file()


def test_status_tells_a_live_run_from_an_interrupted_one(
    done: Pipeline, held: list[locks.Lock], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = Manifest.load(done.run_dir)
    record = manifest.stages["merge_vocab"]
    record.status, record.pid = "running", os.getpid()
    manifest.save()
    lock = locks.try_acquire(done.run_dir / ".lock", "llamagene run")
    assert lock is not None
    held.append(lock)
    statuses = _statuses(done)
    assert statuses["merge_vocab"][0] == "running"
    assert statuses["merge_vocab"][1][0].startswith(f"running (pid {os.getpid()}, since 20")
    assert main(["status", str(done.path)]) == 0
    assert f"running (pid {os.getpid()}, since" in capsys.readouterr().out
    with pytest.raises(
        LlamageneError,
        match=f"another `llamagene run` is using this run folder \\(pid {os.getpid()}",
    ):
        done.run()
    lock.release()
    statuses = _statuses(done)
    assert statuses["merge_vocab"][0] == "stale"
    assert statuses["merge_vocab"][1][0].startswith("did not finish")


def test_a_deleted_lock_does_not_let_a_second_run_delete_the_first_runs_folder(
    done: Pipeline, held: list[locks.Lock]
) -> None:
    working = done.run_dir / ".merge_vocab.tmp-0123456789ab"
    lock = locks.try_acquire(locks.owned_path(working), "llamagene run: merge_vocab")
    assert lock is not None
    held.append(lock)
    working.mkdir()
    (working / "tokenizer.model").write_bytes(b"being written")
    (done.run_dir / ".lock").unlink(missing_ok=True)  # someone cleans up by hand mid-run
    with pytest.raises(LlamageneError, match="another `llamagene run` is using this run folder"):
        done.run(force=True)
    assert (working / "tokenizer.model").read_bytes() == b"being written"
    lock.release()
    done.run()
    assert not working.exists()
