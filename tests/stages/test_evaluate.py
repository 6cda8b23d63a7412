"""The ``evaluate`` stage: choice scoring equals a one-row reference, the stage's outputs, and
the bad inputs it must refuse (or mark n/a) in one line."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from finetune_setup import REPO, setup_pipeline
from pretrain_setup import run_cli

from llamagene.errors import StageError
from llamagene.evaluation.rows import load_tasks_json, read_split
from llamagene.evaluation.scoring import (
    ChoiceRequest,
    generate_greedy,
    score_choices,
    score_choices_full,
)
from llamagene.prompt_format import Message, PromptFormat

HELDOUT = REPO / "data_recipes" / "english" / "heldout.txt"


def tiny_model(vocab_size: int, seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_batched_choice_scores_equal_the_one_row_reference(merged_tokenizer_dir: Path) -> None:
    """Real prompts and multi-token choices through the prompt format: the KV-cache batches
    (several widths, so rows are padded) give the one-forward-per-choice scores to 1e-4."""
    fmt = PromptFormat.from_dir(merged_tokenizer_dir)
    model = tiny_model(fmt.tokenizer.get_vocab_size() + 64)
    rng = random.Random(3)
    choices = [["no", "yes"], ["frame 0", "frame 1", "frame 2"], ["acceptor", "donor", "neither"]]
    requests = []
    for number in range(24):
        dna = "".join(rng.choice("ACGT") for _ in range(rng.randrange(10, 120)))
        prompt = f"Row {number}. Is <dna>{dna}</dna> a promoter?\nAnswer:"
        row_choices = choices[number % 3]
        requests.append(
            ChoiceRequest(
                fmt.prompt_ids([Message("user", prompt)]), fmt.text_ids(row_choices), str(number)
            )
        )
    assert any(len(c) > 1 for r in requests for c in r.choices)
    reference = score_choices_full(model, requests)
    for batch_tokens in (64, 400, 100_000):
        batched = score_choices(model, requests, pad_id=fmt.eos_id, batch_tokens=batch_tokens)
        pairs = zip(batched, reference, strict=True)
        worst = max(abs(a - b) for x, y in pairs for a, b in zip(x, y, strict=True))
        assert worst < 1e-4, (batch_tokens, worst)


def test_batched_greedy_answers_equal_one_row_generation(merged_tokenizer_dir: Path) -> None:
    fmt = PromptFormat.from_dir(merged_tokenizer_dir)
    model = tiny_model(fmt.tokenizer.get_vocab_size() + 64, seed=1)
    prompts = [
        fmt.prompt_ids([Message("user", f"Translate <dna>{'ATG' * n}</dna>")]) for n in range(1, 9)
    ]
    batched = generate_greedy(model, prompts, [6] * 8, eos_id=fmt.eos_id, pad_id=fmt.eos_id)
    alone = [generate_greedy(model, [p], [6], eos_id=fmt.eos_id, pad_id=fmt.eos_id)[0]
             for p in prompts]  # fmt: skip
    assert batched == alone and all(len(a) <= 6 for a in batched)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """finetune's tiny pipeline with an evaluate stage scoring the tuned model and the untuned
    base on the test split, run once from nothing."""
    root = tmp_path_factory.mktemp("evaluate")
    pipeline_path = setup_pipeline(root)
    recipe = yaml.safe_load((root / "recipe.yaml").read_text())
    recipe["tasks"] += [{"data": {"source": "table", "spec": str(spec)}} for spec in _tables(root)]
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    pipeline = yaml.safe_load(pipeline_path.read_text())
    pipeline["stages"]["evaluate"] = {
        "models": ["finetune", "base"], "base_model": str(root / "base"),
        "english_text": str(HELDOUT), "resamples": 200,
    }  # fmt: skip
    pipeline_path.write_text(yaml.safe_dump(pipeline))
    result = run_cli("run", str(pipeline_path))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def _tables(root: Path) -> list[Path]:
    """Small seeded tasks of the other types (regression, multilabel, token labelling, free
    text), each with train, dev and test files, through the generic templates."""
    rng = random.Random(11)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    specs = []
    kinds: dict[str, dict[str, Any]] = {
        "stab": {"task_type": "regression", "label": "score"},
        "go": {"task_type": "multilabel", "label": "terms", "multilabel_separator": "|",
               "classes": {"GO1": "binding", "GO2": "catalysis", "GO3": "transport"}},
        "ss": {"task_type": "token", "label": "states",
               "classes": {"H": "helix", "E": "strand", "C": "coil"}},
        "desc": {"task_type": "generation", "answer": "text"},
    }  # fmt: skip
    for name, spec in kinds.items():
        files = {}
        for split, count in (("train", 8), ("dev", 3), ("test", 4)):
            lines = [f"sequence\t{spec.get('label', 'text')}"]
            for _ in range(count):
                protein = "".join(rng.choice(letters) for _ in range(rng.randrange(12, 20)))
                value = {
                    "stab": f"{rng.uniform(-2, 2):.2f}",
                    "go": "|".join(sorted(rng.sample(["GO1", "GO2", "GO3"], rng.randrange(1, 3)))),
                    "ss": "".join(rng.choice("HEC") for _ in protein),
                    "desc": rng.choice(["a small protein", "an enzyme", "a membrane protein"]),
                }[name]
                lines.append(f"{protein}\t{value}")
            (root / f"{name}_{split}.tsv").write_text("\n".join(lines) + "\n")
            files[split] = f"{name}_{split}.tsv"
        body = {"id": f"table/{name}", "description": f"synthetic {name}", "files": files,
                "sequences": {"sequence": "protein"}, **spec}  # fmt: skip
        specs.append(root / f"{name}.yaml")
        specs[-1].write_text(yaml.safe_dump(body))
    return specs


def test_evaluate_writes_report_metrics_predictions_and_charts(evaluated: Path) -> None:
    out = evaluated / "run" / "evaluate"
    assert {p.name for p in out.iterdir()} == {
        "report.md", "metrics.json", "predictions.jsonl", "charts", "config.json"
    }  # fmt: skip
    assert {p.name for p in (out / "charts").iterdir()} == {"scores.png", "loss.png"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["models"] == ["tuned", "base"]
    promoter = metrics["tasks"]["table/promoter"]
    assert promoter["headline"] == "mcc" and promoter["kind"] == "choice"
    choice = promoter["models"]["tuned"]["choice"]
    assert set(choice) == {"accuracy", "acc_norm", "mcc", "f1_macro"}
    assert set(promoter["models"]["tuned"]["generation"]) == {"exact_match", "mcc", "unparseable"}
    assert set(promoter["baselines"]) == {"majority", "kmer"}
    translate = metrics["tasks"]["demo/translate"]
    assert translate["kind"] == "sequence"
    assert {"exact_match", "identity", "edit_distance", "is_translation"} <= set(
        translate["models"]["tuned"]["generation"]
    )
    views = {t: e["models"]["tuned"]["generation"] for t, e in metrics["tasks"].items()}
    assert set(views["table/stab"]) == {"spearman", "pearson", "rmse", "r2", "unparseable"}
    assert set(metrics["tasks"]["table/stab"]["baselines"]) == {"majority", "kmer"}
    assert {"f1_micro", "f1_macro", "unparseable"} <= set(views["table/go"])
    assert {"accuracy", "f1_macro", "unparseable"} <= set(views["table/ss"])
    assert {"exact_match", "chrf", "unparseable"} <= set(views["table/desc"])
    english = metrics["english"]["perplexity"]
    assert set(english) == {"tuned", "base"} and all(v["perplexity"] > 1 for v in english.values())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    tuned = [r for r in rows if r["model"] == "tuned" and r["task"] == "table/promoter"]
    assert tuned and all(len(r["scores"]) == 2 and r["gold"] in ("0", "1") for r in tuned)
    assert {"row", "template", "prediction", "generated"} <= set(tuned[0])
    report = (out / "report.md").read_text()
    assert "Scoring rule" in report and "summed log-probability" in report
    assert "Split **test**" in report and "| `table/promoter` |" in report
    assert "one template" in report  # the recipe renders each test row once
    status = run_cli("run", str(evaluated / "pipeline.yaml"))
    assert "everything is up to date" in status.stdout


def _cards(tmp_path: Path, task_type: str, classes: list[list[str]]) -> Path:
    card = {
        "id": "t/x", "task_type": task_type, "description": "", "fields": ["seq", "label"],
        "sequence_fields": {"seq": "dna"}, "metric": "mcc", "classes": classes,
        "label_field": "label", "answer_field": None, "strand_symmetric": False, "extra": {},
        "templates": {"t/x/q": {"version": 1, "task_type": task_type,
                                "choices": {c[0]: c[1] for c in classes} or None}},
    }  # fmt: skip
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"t/x": card}))
    return path


def _row(index: int, label: str, answer: str, choices: list[str] | None) -> str:
    return json.dumps({
        "task": "t/x", "split": "test", "index": index, "copy": "r0", "template_id": "t/x/q",
        "template_version": 1, "prompt": "<dna>ACGT</dna>?", "answer": answer,
        "choices": choices, "markup": True, "fields": {"seq": "ACGT", "label": label},
        "tokens": 5, "trimmed": None, "messages": None,
    })  # fmt: skip


def test_a_label_outside_the_choices_is_one_line_naming_the_row(tmp_path: Path) -> None:
    cards = load_tasks_json(_cards(tmp_path, "binary", [["0", "no"], ["1", "yes"]]))
    split = tmp_path / "test.jsonl"
    split.write_text(
        _row(0, "1", "yes", ["no", "yes"]) + "\n" + _row(1, "2", "maybe", ["no", "yes"])
    )
    with pytest.raises(StageError, match=rf"{split}:2: label '2' of task t/x is not one of"):
        read_split(split, cards)


def test_an_unparseable_regression_answer_is_an_error(tmp_path: Path) -> None:
    cards = load_tasks_json(_cards(tmp_path, "regression", []))
    split = tmp_path / "test.jsonl"
    split.write_text(_row(0, "0.5", "0.5", None) + "\n" + _row(1, "x", "high", None) + "\n")
    with pytest.raises(StageError, match=rf"{split}:2: the regression answer 'high' is not a"):
        read_split(split, cards)


def _rerun_with(evaluated: Path, tmp_path: Path, evaluate: dict[str, Any]) -> Path:
    """A copy of the evaluated run whose evaluate stage gets ``evaluate`` as its config."""
    root = tmp_path / "copy"
    shutil.copytree(evaluated, root)
    pipeline = yaml.safe_load((root / "pipeline.yaml").read_text())
    pipeline["stages"]["evaluate"] = evaluate
    (root / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return root


def test_an_empty_test_split_stops_the_stage(evaluated: Path, tmp_path: Path) -> None:
    root = _rerun_with(evaluated, tmp_path, {"models": ["finetune"], "resamples": 0})
    (root / "run" / "build_sft" / "test.jsonl").write_text("")
    result = run_cli("run", str(root / "pipeline.yaml"), "--only", "evaluate", "--force")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith("has no benchmark rows to score")
    assert "Traceback" not in result.stderr


def test_a_model_whose_vocabulary_does_not_match_is_refused(
    evaluated: Path, tmp_path: Path
) -> None:
    from finetune_setup import save_base

    other = tmp_path / "other"
    save_base(other, vocab_size=1000)
    root = _rerun_with(evaluated, tmp_path, {"models": ["base"], "base_model": str(other)})
    result = run_cli("run", str(root / "pipeline.yaml"), "--only", "evaluate")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "do not belong together" in result.stderr.strip().splitlines()[-1]


def test_export_lm_eval_from_the_command_line(evaluated: Path, tmp_path: Path) -> None:
    """``llamagene evaluate --export-lm-eval DIR``: the test split as lm-eval tasks (their
    contents are checked in tests/unit/test_lm_eval_export.py)."""
    out = tmp_path / "lm_eval"
    result = run_cli("evaluate", str(evaluated / "pipeline.yaml"), "--export-lm-eval", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lm-evaluation-harness tasks" in result.stdout
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "llamagene_tasks.py", "llamagene.yaml"} <= names
    assert any(n.startswith("llamagene_table_promoter") for n in names)


def test_without_the_generation_view_classification_is_scored_by_choices_alone(
    evaluated: Path, tmp_path: Path
) -> None:
    config = {"models": ["finetune"], "resamples": 0, "generation_view": False, "baselines": False}
    root = _rerun_with(evaluated, tmp_path, config)
    result = run_cli("run", str(root / "pipeline.yaml"), "--only", "evaluate")
    assert result.returncode == 0, result.stderr[-2000:]
    out = root / "run" / "evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["tasks"]["table/promoter"]["models"]["tuned"]) == {"choice"}
    assert set(metrics["tasks"]["demo/translate"]["models"]["tuned"]) == {"generation"}
    assert metrics["baselines"] == [] and metrics["tasks"]["table/promoter"]["baselines"] == {}
    assert "The generation view was off" in (out / "report.md").read_text()
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    promoter = [r for r in rows if r["task"] == "table/promoter"]
    assert promoter and all(r["generated"] is None and r["scores"] for r in promoter)
