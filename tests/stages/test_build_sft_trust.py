"""build_sft's data can be trusted: trimming keeps each task's signal and says so, leaks of test
sequences are caught by kind (as real GUE is built), test rows stay as they are, every template
for every eval row on request, English stays text. On a small GUE-layout tree made here."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FIXTURES, write_pipeline

from llamagene.errors import ConfigError
from llamagene.pipeline import load_pipeline
from llamagene.sequences import reverse_complement

LENGTHS = {"prom/prom_300_all": 300, "prom/prom_core_all": 70, "splice/reconstructed": 400,
           "virus/covid": 1000, "EMP/H3": 500}  # fmt: skip
LABELS = {"prom/prom_300_all": "01", "prom/prom_core_all": "01", "splice/reconstructed": "012",
          "virus/covid": "012345678", "EMP/H3": "01"}  # fmt: skip
ROWS = 6


def _dna(rng: random.Random, n: int) -> str:
    return "".join(rng.choices("ACGT", k=n))


def _tree(root: Path, rng: random.Random) -> dict[tuple[str, str], list[list[str]]]:
    """Rows (sequence, label) per (dataset, split) of GUE's layout and lengths."""
    return {
        (name, split): [[_dna(rng, n), rng.choice(LABELS[name])] for _ in range(ROWS)]
        for name, n in LENGTHS.items()
        for split in ("train", "dev", "test")
    }


def _write(root: Path, rows: dict[tuple[str, str], list[list[str]]]) -> None:
    for (name, split), table in rows.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["sequence,label", *(f"{seq},{label}" for seq, label in table)]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("build_sft_trust")
    promoter = {"source": "table", "spec": str(FIXTURES / "tasks" / "table" / "promoter.yaml")}
    (root / "recipe.yaml").write_text(yaml.safe_dump({"tasks": [{"data": promoter}]}))
    write_pipeline(root, build_sft={"recipe": "recipe.yaml"})
    load_pipeline(root / "pipeline.yaml").run(only=["train_bpe", "merge_vocab"])
    return root


def _build(root: Path, **recipe: Any) -> Path:
    (root / "recipe.yaml").write_text(yaml.safe_dump({"seed": 5, **recipe}))
    load_pipeline(root / "pipeline.yaml").run(only=["build_sft"], force=True)
    return root / "run" / "build_sft"


def _rows(out: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def _gue(tree: Path, *datasets: str) -> dict[str, Any]:
    return {"source": "gue", "root": str(tree), "datasets": list(datasets)}


def test_trimmed_rows_keep_their_signal_and_state_their_true_length(
    workspace: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "GUE"
    original = _tree(tree, random.Random(1))
    _write(tree, original)
    data = _gue(tree, "prom/prom_300_all", "splice/reconstructed", "virus/covid")
    out = _build(workspace, tasks=[{"data": data}],
                 length={"max_tokens": 140, "eval_overflow": "trim"})  # fmt: skip
    seen = set()
    for split in ("train", "dev", "test"):
        for row in _rows(out, split):
            name = row["task"].removeprefix("gue/")
            sequence = original[(name, split)][row["index"]][0]
            assert row["tokens"] <= 140
            if row["trimmed"] is None:
                assert row["fields"]["sequence"] == sequence
                continue
            record = row["trimmed"]["sequence"]
            start, end = record["kept"]
            assert record["length"] == len(sequence) == LENGTHS[name]
            assert row["fields"]["sequence"] == sequence[start:end]
            assert f"<dna>{sequence[start:end]}</dna>" in row["prompt"]
            if name == "prom/prom_300_all":  # the TSS, base 249, is kept
                assert start <= 249 < end and f"{end - start} bp" in row["prompt"]
                assert "300 bp" not in row["prompt"]
            elif name == "splice/reconstructed":  # the centre, where the splice site is
                assert abs((start + end) / 2 - 200) <= 12
            else:  # covid: the start
                assert start == 0
            seen.add(name)
    assert seen == {"prom/prom_300_all", "splice/reconstructed", "virus/covid"}


def test_leaks_of_test_sequences_are_dropped_and_counted_by_kind(
    workspace: Path, tmp_path: Path
) -> None:
    rng = random.Random(2)
    tree = tmp_path / "GUE"
    rows = _tree(tree, rng)
    core_test = [seq for seq, _ in rows[("prom/prom_core_all", "test")]]
    prom_train = rows[("prom/prom_300_all", "train")]
    for i, offset in enumerate((0, 117, 230)):  # prom_core test 70-mers inside 300 bp windows
        core = core_test[i] if i != 1 else reverse_complement(core_test[i])
        prom_train[i][0] = prom_train[i][0][:offset] + core + prom_train[i][0][offset + 70 :]
    splice_test = rows[("splice/reconstructed", "test")]
    rows[("splice/reconstructed", "train")][0][0] = reverse_complement(splice_test[0][0])
    rows[("splice/reconstructed", "dev")][0][0] = splice_test[1][0]  # dev is checked too
    covid_test = rows[("virus/covid", "test")][0][0]
    rows[("virus/covid", "train")][0][0] = covid_test[300:420]  # a piece of a test sequence
    emp_test = rows[("EMP/H3", "test")][0][0]  # augmenting this row would rebuild the test row
    rows[("EMP/H3", "train")][0][0] = reverse_complement(emp_test)
    _write(tree, rows)
    tasks = [{"data": _gue(tree, "prom/prom_300_all", "prom/prom_core_all",
                           "splice/reconstructed", "virus/covid")},
             {"data": _gue(tree, "EMP/H3"), "reverse_complement": True}]  # fmt: skip
    out = _build(workspace, tasks=tasks, length={"max_tokens": 512})
    summary = json.loads((out / "summary.json").read_text())["tasks"]
    kinds = ("exact", "reverse_complement", "contained", "contains")

    def leaks(task: str, split: str) -> list[int]:
        return [summary[f"gue/{task}"][split]["leaks"][k] for k in kinds]

    assert leaks("prom/prom_300_all", "train") == [0, 0, 0, 3]
    assert leaks("splice/reconstructed", "train") == [0, 1, 0, 0]
    assert leaks("splice/reconstructed", "dev") == [1, 0, 0, 0]
    assert leaks("virus/covid", "train") == [0, 0, 1, 0]
    # the row that is the test row's reverse complement, and its augmented copy (the test row)
    assert leaks("EMP/H3", "train") == [1, 1, 0, 0]
    emp = summary["gue/EMP/H3"]["train"]
    assert emp["written"] == 2 * (ROWS - 1)
    for task, splits in summary.items():  # test rows are never dropped
        assert splits["test"]["written"] == splits["test"]["rows_read"] == ROWS, task
        assert splits["test"]["dropped_leaks"] == 0
    test_sequences = {r["fields"]["sequence"] for r in _rows(out, "test")}
    for split in ("train", "dev"):
        for row in _rows(out, split):
            seq = row["fields"]["sequence"]
            assert seq not in test_sequences and reverse_complement(seq) not in test_sequences
    table = (out / "summary.md").read_text()
    assert "| leaks: exact | reverse complement | contained | contains |" in table
    assert "| gue/prom/prom_300_all | train | 6 | 3 | 0 | 0 | 0 | 0 | 0 | 3 |" in table


def test_every_template_for_every_eval_row_on_request(workspace: Path, tmp_path: Path) -> None:
    tree = tmp_path / "GUE"
    _write(tree, _tree(tree, random.Random(3)))
    data = _gue(tree, "splice/reconstructed")
    out = _build(workspace, tasks=[{"data": data}], eval_templates="all")
    templates = {"gue/splice/reconstructed/site_type", "gue/splice/reconstructed/classify"}
    for split in ("dev", "test"):
        rows = _rows(out, split)
        assert len(rows) == ROWS * len(templates)
        for index in range(ROWS):
            mine = [r for r in rows if r["index"] == index]
            assert {r["template_id"] for r in mine} == templates
            assert len({r["answer"] for r in mine}) == 2  # each template's own answer text
    train = _rows(out, "train")
    assert len(train) == ROWS and len({r["index"] for r in train}) == ROWS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_templates"] == "all"
    assert summary["tasks"]["gue/splice/reconstructed"]["test"]["templates"] == dict.fromkeys(
        sorted(templates), ROWS
    )


def test_english_markup_stays_text_and_long_rows_are_counted(
    workspace: Path, tmp_path: Path, merged_tokenizer_dir: Path
) -> None:
    tree = tmp_path / "GUE"
    _write(tree, _tree(tree, random.Random(4)))
    english = tmp_path / "english.jsonl"
    entries = [
        {"instruction": "Quote the tag", "input": "", "output": "Write <dna>hello world</dna>."},
        {"instruction": "Repeat", "input": "", "output": "word " * 800},  # over the limit
        *({"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(10)),
    ]
    english.write_text("".join(json.dumps(e) + "\n" for e in entries))
    recipe = {
        "tasks": [{"data": _gue(tree, "splice/reconstructed")}],
        "english": [{"path": str(english), "format": "alpaca"}],
        "english_share": 0.9,
    }
    out = _build(workspace, **recipe)
    english_rows = [r for r in _rows(out, "train") if r["task"] == "english/english"]
    assert all(r["markup"] is False for r in english_rows)
    tagged = next(r for r in english_rows if "<dna>hello" in r["answer"])
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_tokenizer_dir))
    messages = [
        {"role": "user", "content": tagged["prompt"], "markup": False},  # plain text
        {"role": "assistant", "content": tagged["answer"], "markup": False},
    ]
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert tagged["tokens"] == len(ids)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["english"] == {"available": 12, "wanted": 54, "written": 11,
                                  "dropped_too_long": 1}  # fmt: skip
    assert (
        "11 written of 54 wanted (12 available, 1 over 512 tokens dropped)"
        in (out / "summary.md").read_text()
    )
    assert all(r["markup"] is True for r in _rows(out, "test"))


def test_recipes_with_the_old_length_and_leak_keys_say_what_replaced_them(
    tmp_path: Path,
) -> None:
    from llamagene.sft.recipe import load_sft_recipe

    task = {"data": {"source": "table", "spec": "x.yaml"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"tasks": [task], "length": {"trim_from": "both"}}))
    with pytest.raises(ConfigError, match="trim_from is gone: each task declares"):
        load_sft_recipe(path)
    path.write_text(yaml.safe_dump({"tasks": [task], "dedupe_against_test": True}))
    with pytest.raises(ConfigError, match="dedupe_against_test is now leak_check"):
        load_sft_recipe(path)
