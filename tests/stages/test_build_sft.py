"""Stage ``build_sft`` end to end on the tiny GUE tree and table tasks of tests/fixtures/tasks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FIXTURES, write_pipeline

from llamagene.errors import StageError
from llamagene.pipeline import load_pipeline
from llamagene.templates import load_templates, render, shipped_templates_dir
from llamagene.templates.lock import LOCK_NAME, write_lock

TASKS = FIXTURES / "tasks"
GUE = {"source": "gue", "root": str(TASKS / "GUE")}
PROMOTER = {"source": "table", "spec": str(TASKS / "table" / "promoter.yaml")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder where train_bpe and merge_vocab already ran; tests rewrite recipe.yaml."""
    root = tmp_path_factory.mktemp("build_sft")
    _recipe(root, tasks=[{"data": PROMOTER}])
    pipeline = write_pipeline(root, build_sft={"recipe": "recipe.yaml"})
    load_pipeline(pipeline).run(only=["train_bpe", "merge_vocab"])
    return root


def _recipe(root: Path, **recipe: Any) -> None:
    (root / "recipe.yaml").write_text(yaml.safe_dump({"seed": 3, **recipe}))


def _build(root: Path, **recipe: Any) -> Path:
    _recipe(root, **recipe)
    load_pipeline(root / "pipeline.yaml").run(only=["build_sft"], force=True)
    return root / "run" / "build_sft"


def _rows(out: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def test_gue_and_table_tasks_become_instruction_rows(workspace: Path) -> None:
    out = _build(workspace, tasks=[{"data": GUE}, {"data": PROMOTER}])
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["tasks"]) == 29  # all 28 GUE datasets and the table task
    templates = {t.id: t for t in load_templates(shipped_templates_dir())}
    for split in ("train", "dev", "test"):
        rows = _rows(out, split)
        assert rows, split
        for row in rows:
            assert row["answer"] in row["choices"], row  # every task here is a classification
            template = templates[row["template_id"]]
            assert row["template_version"] == template.version
            assert row["tokens"] <= 512
    splice = [r for r in _rows(out, "train") if r["task"] == "gue/splice/reconstructed"]
    meaning = {"0": "acceptor", "1": "donor", "2": "non-splice"}
    for row in splice:  # the answer names the real class of the label (0 acceptor, 1 donor)
        assert meaning[row["fields"]["label"]].split("-")[0] in row["answer"].lower() or (
            row["fields"]["label"] == "2"
        )
    totals = summary["totals"]
    assert totals["written"] == sum(len(_rows(out, s)) for s in ("train", "dev", "test"))
    assert "| gue/splice/reconstructed | train |" in (out / "summary.md").read_text()


def test_rows_render_with_their_template_and_rebuild_identically(workspace: Path) -> None:
    from llamagene.tasks.registry import TableSource, load_tasks
    from llamagene.templates import templates_for

    out = _build(workspace, tasks=[{"data": PROMOTER}])
    first = {s: (out / f"{s}.jsonl").read_bytes() for s in ("train", "dev", "test")}
    task = load_tasks([TableSource.model_validate(PROMOTER)])[0]
    bound = {t.id: t for t in templates_for(task.info, load_templates(shipped_templates_dir()))}
    for row in _rows(out, "test"):
        again = render(bound[row["template_id"]], row["fields"])
        assert (again.prompt, again.answer) == (row["prompt"], row["answer"])
    out = _build(workspace, tasks=[{"data": PROMOTER}])
    assert {s: (out / f"{s}.jsonl").read_bytes() for s in first} == first


def test_long_rows_are_trimmed_never_the_answer(workspace: Path) -> None:
    length = {"max_tokens": 72, "eval_overflow": "trim"}
    out = _build(workspace, tasks=[{"data": GUE}], length=length)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["trimmed"] > 0
    originals = _originals()
    trimmed = 0
    for split in ("train", "dev", "test"):
        for row in _rows(out, split):
            assert row["tokens"] <= 72 and row["answer"] in row["choices"]
            original = originals[(row["task"], split, row["index"])]
            if row["trimmed"] is None:
                assert row["fields"]["sequence"] == original
                continue
            trimmed += 1
            start, end = row["trimmed"]["sequence"]["kept"]
            assert row["trimmed"]["sequence"]["length"] == len(original)
            assert row["fields"]["sequence"] == original[start:end] != original
    assert trimmed == summary["totals"]["trimmed"]
    length = {"max_tokens": 48, "overflow": "drop", "eval_overflow": "drop"}
    out = _build(workspace, tasks=[{"data": GUE}], length=length)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["dropped_too_long"] > 0 and summary["totals"]["trimmed"] == 0
    assert summary["tasks"]["gue/EMP/H3"]["test"]["dropped_too_long"] > 0


def test_dev_and_test_rows_are_not_trimmed_by_default(workspace: Path) -> None:
    with pytest.raises(StageError) as caught:
        _build(workspace, tasks=[{"data": GUE}], length={"max_tokens": 48})
    message = str(caught.value)
    assert "length.max_tokens (48)" in message and "eval_overflow" in message
    assert "rows are longer than" in message and "/dev.csv:2" in message  # task, row, limit
    assert message.startswith("task gue/") and "\n" not in message


def _originals() -> dict[tuple[str, str, int], str]:
    """(task, split, row index) -> the sequence as the fixture GUE tree has it."""
    from llamagene.tasks.registry import GueSource, load_tasks

    out = {}
    for task in load_tasks([GueSource.model_validate(GUE)]):
        for split in task.splits():
            for example in task.examples(split):
                out[(task.info.id, split, example.index)] = example.fields["sequence"]
    return out


def test_training_rows_sharing_a_test_sequence_are_dropped(workspace: Path, tmp_path: Path) -> None:
    spec_dir = tmp_path / "leak"
    shutil.copytree(TASKS / "table" / "promoter", spec_dir / "promoter")
    spec = yaml.safe_load((TASKS / "table" / "promoter.yaml").read_text())
    spec["id"] = "table/leak"
    (spec_dir / "leak.yaml").write_text(yaml.safe_dump(spec))
    test_seq = _rows(_build(workspace, tasks=[{"data": GUE}]), "test")[0]["fields"]["sequence"]
    with (spec_dir / "promoter" / "train.csv").open("a") as handle:
        handle.write(f"leak0,{test_seq.lower()},1,human\n")
    leak = {"source": "table", "spec": str(spec_dir / "leak.yaml")}
    out = _build(workspace, tasks=[{"data": GUE}, {"data": leak}])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tasks"]["table/leak"]["train"]["leaks"]["exact"] == 1
    assert summary["totals"]["dropped_leaks"] == summary["totals"]["leaks_exact"] == 1


def test_reverse_complements_only_for_strand_symmetric_tasks(workspace: Path) -> None:
    emp = {**GUE, "datasets": ["EMP/H3"]}
    out = _build(workspace, tasks=[{"data": emp, "reverse_complement": True}])
    summary = json.loads((out / "summary.json").read_text())["tasks"]["gue/EMP/H3"]["train"]
    assert summary["reverse_complements"] == summary["rows_read"]
    assert summary["written"] == 2 * summary["rows_read"]
    with pytest.raises(StageError, match="labels depend on the strand"):
        _build(workspace, tasks=[{"data": PROMOTER, "reverse_complement": True}])


def test_editing_a_template_makes_build_sft_stale(workspace: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(shipped_templates_dir(), templates)
    _recipe(workspace, tasks=[{"data": PROMOTER}])
    overrides = [f"build_sft.templates_dir={templates}"]
    load_pipeline(workspace / "pipeline.yaml", overrides).run(only=["build_sft"], force=True)
    statuses = {s.name: s for s in load_pipeline(workspace / "pipeline.yaml", overrides).status()}
    assert statuses["build_sft"].state == "up to date"
    unused = templates / "gue" / "EMP" / "H3.yaml"  # no task of this recipe uses it
    unused.write_text(unused.read_text() + "\n# edited\n")
    statuses = {s.name: s for s in load_pipeline(workspace / "pipeline.yaml", overrides).status()}
    assert statuses["build_sft"].state == "up to date"
    generic = templates / "generic" / "binary.yaml"  # the promoter table task's templates
    generic.write_text(generic.read_text() + "\n# edited\n")
    statuses = {s.name: s for s in load_pipeline(workspace / "pipeline.yaml", overrides).status()}
    assert statuses["build_sft"].state == "stale"
    assert any("templates/generic/binary.yaml changed" in r for r in statuses["build_sft"].reasons)


def test_a_label_outside_the_choices_names_the_row(workspace: Path, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    (templates / "table").mkdir(parents=True)
    (templates / "table" / "promoter.yaml").write_text(yaml.safe_dump({"templates": [{
        "id": "table/promoter/narrow", "version": 1, "task": "table/promoter",
        "task_type": "binary", "prompt": "Promoter? {{ seq | dna }}\\nAnswer:",
        "answer_choices": {"0": "no"}, "metrics": ["mcc"],
    }]}))  # fmt: skip
    write_lock(templates / LOCK_NAME, load_templates(templates))
    _recipe(workspace, tasks=[{"data": PROMOTER}])
    with pytest.raises(StageError) as caught:
        load_pipeline(workspace / "pipeline.yaml", [f"build_sft.templates_dir={templates}"]).run(
            only=["build_sft"], force=True
        )
    message = str(caught.value)
    assert "promoter/train.csv:3" in message and "label 1 has no answer choice" in message
