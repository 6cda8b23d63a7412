"""Checkpoints are trusted only when complete, and pretrain's outputs are byte-reproducible.

A kill or a full disk during a save leaves a checkpoint with files missing or cut short; a
rerun skips it (one log line says why), removes it, and resumes from the previous complete one.
Synthetic checkpoint folders check each kind of damage; one end-to-end run damages two real
checkpoints and must still end with the uninterrupted run's adapter, bit for bit. Two identical
runs must write identical files, but for the volatile ``timings.json`` and ``logs/``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pretrain_setup import PRETRAIN, logged_losses, reference_run, run_cli, setup_pipeline
from safetensors.torch import save_file

from llamagene.training.checkpoints import checkpoint_problem, resume_checkpoint, trim_metrics
from llamagene.training.export import normalize_adapter_config
from llamagene.training.spec import KILL_AFTER_SAVE_ENV
from llamagene.training.worker import _mean_train_loss

ZERO2: dict[str, Any] = {"zero_optimization": {"stage": 2}}
VOLATILE = ("timings.json", "logs/")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_run(tmp_path_factory)


def _checkpoint(root: Path, step: int, deepspeed: bool = False) -> Path:
    """A complete checkpoint as HF Trainer writes it (one process; or DeepSpeed ZeRO, 2 ranks)."""
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    state = {"global_step": step, "log_history": [{"loss": 1.0, "step": step}]}
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2))
    save_file(
        {"a": torch.ones(8, 4), "b": torch.zeros(3)}, str(folder / "adapter_model.safetensors")
    )
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    if not deepspeed:
        torch.save({"cpu": torch.get_rng_state()}, folder / "rng_state.pth")
    if deepspeed:
        (folder / "latest").write_text(f"global_step{step}")
        states = folder / f"global_step{step}"
        states.mkdir()
        torch.save({"module": {"w": torch.ones(4)}}, states / "mp_rank_00_model_states.pt")
        for rank in (0, 1):
            torch.save({"state": torch.ones(4)},
                       states / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")  # fmt: skip
            torch.save({"cpu": torch.get_rng_state()}, folder / f"rng_state_{rank}.pth")
    else:
        torch.save({"state": {0: torch.ones(4)}, "param_groups": []}, folder / "optimizer.pt")
    return folder


def _cut(path: Path, keep: int | None = None) -> None:
    """Truncate ``path`` to ``keep`` bytes (default: half of it; negative: all but the last
    ``-keep``), as a kill or a full disk mid-write does."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


Damage = Callable[[Path], None]
PLAIN_DAMAGE: dict[str, tuple[Damage, str]] = {
    "state cut short": (
        lambda d: _cut(d / "trainer_state.json"),
        "trainer_state.json is truncated (not valid JSON)",
    ),
    "state empty": (lambda d: _cut(d / "trainer_state.json", 0), "trainer_state.json is empty"),
    "state missing": (
        lambda d: (d / "trainer_state.json").unlink(), "trainer_state.json is missing",
    ),
    "state not an object": (
        lambda d: (d / "trainer_state.json").write_text("[8]"),
        "trainer_state.json is not a JSON object",
    ),
    "state of another step": (
        lambda d: (d / "trainer_state.json").write_text('{"global_step": 4}'),
        "trainer_state.json is of step 4",
    ),
    "optimizer missing": (lambda d: (d / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "optimizer cut short": (
        lambda d: _cut(d / "optimizer.pt"),
        "optimizer.pt is truncated (not a complete torch archive)",
    ),
    "scheduler missing": (lambda d: (d / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    "rng state cut short": (
        lambda d: _cut(d / "rng_state.pth"),
        "rng_state.pth is truncated (not a complete torch archive)",
    ),
    "rng state missing": (lambda d: (d / "rng_state.pth").unlink(), "rng_state.pth is missing"),
    "weights missing": (
        lambda d: (d / "adapter_model.safetensors").unlink(), "the model weights are missing",
    ),
    "weights data cut short": (
        lambda d: _cut(d / "adapter_model.safetensors", -4),
        "adapter_model.safetensors is truncated (",
    ),
    "weights header cut short": (
        lambda d: _cut(d / "adapter_model.safetensors", 20),
        "adapter_model.safetensors is truncated (incomplete header)",
    ),
    "weights length field cut short": (
        lambda d: _cut(d / "adapter_model.safetensors", 5),
        "adapter_model.safetensors is truncated (incomplete header)",
    ),
    "shard of an index missing": (
        lambda d: (d / "model.safetensors.index.json").write_text(
            '{"weight_map": {"w": "model-00001-of-00002.safetensors"}}'
        ),
        "model-00001-of-00002.safetensors is missing",
    ),
}  # fmt: skip
DEEPSPEED_DAMAGE: dict[str, tuple[Damage, str]] = {
    "latest missing": (lambda d: (d / "latest").unlink(), "latest is missing"),
    "latest names nothing": (
        lambda d: (d / "latest").write_text("global_step99"),
        "latest names 'global_step99', which is not a folder of the checkpoint",
    ),
    "model states cut short": (
        lambda d: _cut(d / "global_step8" / "mp_rank_00_model_states.pt"),
        "global_step8/mp_rank_00_model_states.pt is truncated",
    ),
    "model states missing": (
        lambda d: (d / "global_step8" / "mp_rank_00_model_states.pt").unlink(),
        "global_step8/ has no model states",
    ),
    "the first optimizer shard missing": (
        lambda d: (d / "global_step8" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink(),
        "global_step8/ lacks the ZeRO optimizer states of rank 0",
    ),
    "the last optimizer shard missing": (
        lambda d: (d / "global_step8" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(),
        "global_step8/ lacks the ZeRO optimizer states of rank 1",
    ),
    "the RNG states of a rank missing": (
        lambda d: (d / "rng_state_1.pth").unlink(), "rng_state_1.pth is missing",
    ),
    "the RNG states of a rank cut short": (
        lambda d: _cut(d / "rng_state_0.pth"),
        "rng_state_0.pth is truncated (not a complete torch archive)",
    ),
    "an optimizer shard cut short": (
        lambda d: _cut(d / "global_step8" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"),
        "global_step8/zero_pp_rank_1_mp_rank_00_optim_states.pt is truncated",
    ),
    "scheduler cut short": (
        lambda d: _cut(d / "scheduler.pt"),
        "scheduler.pt is truncated (not a complete torch archive)",
    ),
}  # fmt: skip


def test_complete_checkpoints_pass(tmp_path: Path) -> None:
    assert checkpoint_problem(_checkpoint(tmp_path / "plain", 8)) is None
    assert checkpoint_problem(_checkpoint(tmp_path / "ds", 8, deepspeed=True), ZERO2) is None
    # HF writes no scheduler.pt when the DeepSpeed config brings its own scheduler
    own_scheduler = _checkpoint(tmp_path / "ds-scheduler", 8, deepspeed=True)
    (own_scheduler / "scheduler.pt").unlink()
    assert checkpoint_problem(own_scheduler, {**ZERO2, "scheduler": {"type": "WarmupLR"}}) is None


@pytest.mark.parametrize("damage", PLAIN_DAMAGE)
def test_each_kind_of_damage_is_named(tmp_path: Path, damage: str) -> None:
    folder = _checkpoint(tmp_path, 8)
    harm, why = PLAIN_DAMAGE[damage]
    harm(folder)
    problem = checkpoint_problem(folder)
    assert problem is not None and problem.startswith(why), problem


@pytest.mark.parametrize("damage", DEEPSPEED_DAMAGE)
def test_each_kind_of_deepspeed_damage_is_named(tmp_path: Path, damage: str) -> None:
    folder = _checkpoint(tmp_path, 8, deepspeed=True)
    harm, why = DEEPSPEED_DAMAGE[damage]
    harm(folder)
    problem = checkpoint_problem(folder, ZERO2)
    assert problem is not None and problem.startswith(why), problem


def test_the_newest_complete_checkpoint_is_chosen_by_step(tmp_path: Path) -> None:
    assert resume_checkpoint(tmp_path / "none", tidy=False) is None
    for step in (9, 10, 100):
        _checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-200").write_text("a file, not a folder")
    _checkpoint(tmp_path / "x", 300)
    shutil.move(tmp_path / "x" / "checkpoint-300", tmp_path / "checkpoint-latest")
    # by step, not in lexical order
    assert (
        resume_checkpoint(tmp_path, tidy=False) == tmp_path / "checkpoint-100"
    )  # not lexical order
    _cut(tmp_path / "checkpoint-100" / "trainer_state.json")
    assert resume_checkpoint(tmp_path, tidy=False) == tmp_path / "checkpoint-10"
    (tmp_path / "checkpoint-10" / "optimizer.pt").unlink()
    assert resume_checkpoint(tmp_path, tidy=False) == tmp_path / "checkpoint-9"


def test_incomplete_newest_checkpoints_are_logged_and_removed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for step in (4, 8, 12):
        _checkpoint(tmp_path, step)
    _cut(tmp_path / "checkpoint-12" / "trainer_state.json")
    (tmp_path / "checkpoint-8" / "optimizer.pt").unlink()
    _cut(tmp_path / "checkpoint-4" / "optimizer.pt")
    _checkpoint(tmp_path, 2)
    (tmp_path / ".incomplete-checkpoint-6").mkdir()  # a removal cut short by a kill

    with caplog.at_level(logging.INFO, logger="llamagene"):  # another rank: looks, touches nothing
        assert (
            resume_checkpoint(tmp_path, stage="pretrain", tidy=False) == tmp_path / "checkpoint-2"
        )
    assert caplog.messages == [] and (tmp_path / "checkpoint-12").is_dir()

    with caplog.at_level(logging.INFO, logger="llamagene"):
        assert resume_checkpoint(tmp_path, stage="pretrain") == tmp_path / "checkpoint-2"
    assert caplog.messages == [
        "pretrain: skipping checkpoint-12: trainer_state.json is truncated (not valid JSON); "
        "resuming from checkpoint-2",
        "pretrain: skipping checkpoint-8: optimizer.pt is missing; resuming from checkpoint-2",
        "pretrain: skipping checkpoint-4: optimizer.pt is truncated (not a complete torch "
        "archive); resuming from checkpoint-2",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]

    caplog.clear()
    _cut(tmp_path / "checkpoint-2" / "scheduler.pt")
    with caplog.at_level(logging.INFO, logger="llamagene"):
        assert resume_checkpoint(tmp_path, stage="pretrain") is None
    assert caplog.messages == [
        "pretrain: skipping checkpoint-2: scheduler.pt is truncated (not a complete torch "
        "archive); starting from step 0"
    ]


def test_metrics_log_is_trimmed_past_the_checkpoint_and_tolerates_a_cut_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 4, 6)]
    path.write_text("\n".join(lines) + "\n" + lines[-1][:9])  # killed mid-line
    trim_metrics(path, 4)
    assert path.read_text() == "".join(f"{line}\n" for line in lines[:3])
    trim_metrics(path, 0)  # a fresh start keeps nothing
    assert path.read_text() == ""
    trim_metrics(tmp_path / "absent.jsonl", 4)
    assert not (tmp_path / "absent.jsonl").exists()


def test_train_loss_is_the_mean_over_every_logged_step() -> None:
    history = [{"loss": 4.0, "step": 1}, {"eval_loss": 9.0, "step": 2}, {"loss": 2.0, "step": 3}]
    assert _mean_train_loss(history, this_run=0.0) == pytest.approx((4.0 + 2 * 2.0) / 3)
    assert _mean_train_loss([], this_run=1.5) == 1.5


def test_adapter_config_is_written_in_one_order_and_loads(tmp_path: Path) -> None:
    from peft import LoraConfig

    names = ["v_proj", "q_proj", "down_proj", "k_proj"]
    LoraConfig(target_modules=names, r=4, task_type="CAUSAL_LM").save_pretrained(str(tmp_path))
    path = tmp_path / "adapter_config.json"
    normalize_adapter_config(path, "/models/base")
    first = path.read_text()
    assert json.loads(first)["target_modules"] == sorted(names)
    assert json.loads(first)["base_model_name_or_path"] == "/models/base"
    assert list(json.loads(first)) == sorted(json.loads(first))
    normalize_adapter_config(path, "/models/base")
    assert path.read_text() == first
    assert LoraConfig.from_pretrained(str(tmp_path)).target_modules == set(names)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` but the volatile ones, by relative path."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(rel == v or rel.startswith(v) for v in VOLATILE):
            files[rel] = path.read_bytes()
    return files


def test_damaged_checkpoints_are_skipped_and_the_run_ends_as_if_uninterrupted(
    reference: Path, tmp_path: Path
) -> None:
    """Killed after its last checkpoint (12; 4 and 8 kept too), with checkpoint-12's trainer
    state cut short, checkpoint-8's optimizer state gone and the last metrics line cut: the
    rerun resumes from 4 and writes the reference's files (adapter, merged model, report),
    byte for byte."""
    training = {**PRETRAIN["training"], "keep_checkpoints": 3}
    pipeline = setup_pipeline(tmp_path, training=training)
    killed = run_cli("run", str(pipeline), env={KILL_AFTER_SAVE_ENV: "12"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    (work,) = (tmp_path / "run" / ".work" / "pretrain").iterdir()
    checkpoints = work / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "checkpoint-12", "checkpoint-4", "checkpoint-8",
    ]  # fmt: skip
    _cut(checkpoints / "checkpoint-12" / "trainer_state.json")
    (checkpoints / "checkpoint-8" / "optimizer.pt").unlink()
    metrics = work / "logs" / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-20])

    resumed = run_cli("run", str(pipeline))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    skipped = [line for line in resumed.stderr.splitlines() if "skipping checkpoint" in line]
    assert skipped == [
        "pretrain: skipping checkpoint-12: trainer_state.json is truncated (not valid JSON); "
        "resuming from checkpoint-4",
        "pretrain: skipping checkpoint-8: optimizer.pt is missing; resuming from checkpoint-4",
    ], resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    out, want = tmp_path / "run" / "pretrain", reference / "pretrain"
    assert json.loads((out / "timings.json").read_text())["resumed_from_step"] == 4
    got_files, want_files = _files(out), _files(want)
    del got_files["config.json"], want_files["config.json"]  # keep_checkpoints differs
    assert sorted(got_files) == sorted(want_files)
    assert [name for name in want_files if got_files[name] != want_files[name]] == []
    assert logged_losses(tmp_path / "run") == logged_losses(reference)


def test_two_identical_runs_write_identical_files(reference: Path, tmp_path: Path) -> None:
    """Only timings.json and logs/ may differ (wall clock, throughput, memory, timestamps)."""
    recipe = reference.parent / "recipe.yaml"  # the same input path: config.json names it
    done = run_cli("run", str(setup_pipeline(tmp_path, data_recipe=str(recipe))))
    assert done.returncode == 0, done.stderr[-3000:]
    out, want = tmp_path / "run" / "pretrain", reference / "pretrain"
    got_files, want_files = _files(out), _files(want)
    assert sorted(got_files) == sorted(want_files)
    assert [name for name in want_files if got_files[name] != want_files[name]] == []
    assert (out / "timings.json").is_file() and (out / "logs" / "metrics.jsonl").is_file()
    timings = json.loads((out / "timings.json").read_text())
    assert {"train_seconds_this_run", "tokens_per_s", "peak_rss_mb_rank0", "export_seconds"} <= (
        timings.keys()
    )
