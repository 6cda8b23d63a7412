"""The training stages' work key: what restarts training and what resumes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamagene.training.run import work_key


def _key(tmp_path: Path, **training: Any) -> str:
    (tmp_path / "tokenizer.json").write_text("{}")
    settings = {
        "learning_rate": 0.001, "save_every_steps": 10, "keep_checkpoints": 2,
        "log_every_steps": 5, "eval_every_steps": 10, "keep_best_checkpoint": False,
    }  # fmt: skip
    config = {"lora": {"r": 8}, "training": settings | training, "data_workers": 2}
    return work_key(config, "data", tmp_path)


def test_checkpoint_and_logging_cadence_do_not_restart_training(tmp_path: Path) -> None:
    key = _key(tmp_path)
    for change in ({"save_every_steps": 50}, {"keep_checkpoints": 5}, {"log_every_steps": 1},
                   {"eval_every_steps": 25}):  # fmt: skip
        assert _key(tmp_path, **change) == key, change


def test_what_changes_the_weights_restarts_training(tmp_path: Path) -> None:
    key = _key(tmp_path)
    assert _key(tmp_path, learning_rate=0.002) != key
    # the export is the checkpoint with the lowest dev loss: when it is measured matters
    best = _key(tmp_path, keep_best_checkpoint=True)
    assert _key(tmp_path, keep_best_checkpoint=True, eval_every_steps=25) != best
