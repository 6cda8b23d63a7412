"""Stage ``build_sft`` against hostile and unlocked templates: one line naming file, id and row.

The issue's hostile cases go through the real stage (``load_pipeline(...).run``) with a
templates folder of their own; so do the lock rules: an edited text under an old version, a
template missing from the lock, a folder with no lock.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FIXTURES, write_pipeline
from hostile_templates import hostile_cases

from llamagene.errors import ConfigError, StageError
from llamagene.pipeline import load_pipeline
from llamagene.templates import TemplateError, load_templates, show_path
from llamagene.templates.lock import LOCK_NAME, write_lock

PROMOTER = {"source": "table", "spec": str(FIXTURES / "tasks" / "table" / "promoter.yaml")}
#: The row every hostile case stops at: build_sft renders the train split first, in file order.
FIRST_ROW = "promoter/train.csv:2"
PROMPT = "Is this DNA a promoter? {{ seq | dna }}\nAnswer yes or no.\nAnswer:"
#: The issue's hostile cases; the first training row's sequence has 36 letters.
HOSTILE = hostile_cases("seq", 36)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder where train_bpe and merge_vocab already ran, with a promoter recipe."""
    root = tmp_path_factory.mktemp("build_sft_templates")
    (root / "recipe.yaml").write_text(yaml.safe_dump({"seed": 3, "tasks": [{"data": PROMOTER}]}))
    pipeline = write_pipeline(root, build_sft={"recipe": "recipe.yaml"})
    load_pipeline(pipeline).run(only=["train_bpe", "merge_vocab"])
    return root


def _entry(template_id: str, prompt: str, version: int = 1) -> dict[str, Any]:
    return {
        "id": template_id,
        "version": version,
        "task": "table/promoter",
        "task_type": "binary",
        "prompt": prompt,
        "answer_choices": {"0": "no", "1": "yes"},
        "metrics": ["mcc"],
    }


def _templates(folder: Path, *entries: dict[str, Any]) -> Path:
    """``folder/table/promoter.yaml`` holding ``entries``; returns the file."""
    path = folder / "table" / "promoter.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"templates": list(entries)}, sort_keys=False))
    return path


def _lock(folder: Path) -> None:
    write_lock(folder / LOCK_NAME, load_templates(folder))


def _build(workspace: Path, folder: Path) -> Path:
    overrides = [f"build_sft.templates_dir={folder}"]
    load_pipeline(workspace / "pipeline.yaml", overrides).run(only=["build_sft"], force=True)
    return workspace / "run" / "build_sft"


def _refusal(workspace: Path, folder: Path) -> str:
    with pytest.raises(StageError) as caught:
        _build(workspace, folder)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def _lock_refusal(workspace: Path, folder: Path) -> str:
    """A template out of step with the lock is refused before anything runs (``llamagene
    validate`` and ``run`` check it), in one line naming the template and the fix; the stage
    itself checks again before it renders."""
    with pytest.raises(ConfigError) as caught:
        _build(workspace, folder)
    (problem,) = caught.value.problems
    assert problem.startswith("stages.build_sft: templates_dir: ") and "\n" not in problem
    from llamagene.templates import load_templates
    from llamagene.templates.lock import check_locked

    with pytest.raises(TemplateError) as again:  # what run() raises as a StageError
        check_locked(load_templates(folder), folder / LOCK_NAME)
    message = problem.removeprefix("stages.build_sft: templates_dir: ")
    assert str(again.value) == message
    return message


# --- the hostile cases ------------------------------------------------------------------


@pytest.mark.parametrize(("expression", "limit"), HOSTILE)
def test_build_sft_stops_a_hostile_template_with_one_line(
    workspace: Path, tmp_path: Path, expression: str, limit: str
) -> None:
    folder = tmp_path / "templates"
    path = _templates(folder, _entry("table/promoter/hostile", expression + "\n" + PROMPT))
    _lock(folder)
    start = time.perf_counter()
    message = _refusal(workspace, folder)
    elapsed = time.perf_counter() - start
    assert message.startswith(f"{show_path(path)}: template table/promoter/hostile: prompt: ")
    assert f"{FIRST_ROW}: over a render limit: {limit}" in message
    assert elapsed < 5, f"build_sft took {elapsed:.1f} s to refuse it"


# --- the lock ----------------------------------------------------------------------------------


def test_an_edited_text_needs_a_version_bump_and_the_lock(workspace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    path = _templates(folder, _entry("table/promoter/question", PROMPT))
    _lock(folder)
    edited = PROMPT.replace("Is this DNA a promoter?", "Does this DNA start a gene?")
    _templates(folder, _entry("table/promoter/question", edited))
    message = _lock_refusal(workspace, folder)
    assert message == (
        f"{show_path(path)}: template table/promoter/question: its text differs from the text "
        f"{LOCK_NAME} records for version 1: set version: 2, then run `llamagene templates lint "
        "--update-lock`"
    )
    _templates(folder, _entry("table/promoter/question", edited, version=2))
    message = _lock_refusal(workspace, folder)  # bumped, but the lock still says version 1
    assert message == (
        f"{show_path(path)}: template table/promoter/question: {LOCK_NAME} records version 1, "
        "not 2: run `llamagene templates lint --update-lock`"
    )
    _lock(folder)
    out = _build(workspace, folder)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    promoter = [r for r in rows if r.get("task") == "table/promoter"]
    assert promoter and all(r["template_version"] == 2 for r in promoter)
    assert all(r["prompt"].startswith("Does this DNA start a gene?") for r in promoter)


def test_a_template_missing_from_the_lock_is_refused(workspace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    _templates(folder, _entry("table/promoter/question", PROMPT))
    _lock(folder)
    second = _entry("table/promoter/short", "Promoter? {{ seq | dna }}\nyes or no:")
    path = _templates(folder, _entry("table/promoter/question", PROMPT), second)
    message = _lock_refusal(workspace, folder)
    assert message == (
        f"{show_path(path)}: template table/promoter/short: not in {LOCK_NAME}: lint it, then "
        "run `llamagene templates lint --update-lock`"
    )


def test_a_templates_folder_without_a_lock_is_refused(workspace: Path, tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    _templates(folder, _entry("table/promoter/question", PROMPT))
    message = _lock_refusal(workspace, folder)
    assert message == (
        f"{show_path(folder / LOCK_NAME)}: no {LOCK_NAME} beside the templates: every "
        "template's version must be recorded before build_sft renders it; run `llamagene "
        f"templates --root {show_path(folder)} lint --update-lock`"
    )
