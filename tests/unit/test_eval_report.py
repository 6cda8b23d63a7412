"""Task results and the report from fixed predictions: views, n/a reasons, baselines, published
references, per-template medians and the charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llamagene.evaluation.baselines import BaselineResult
from llamagene.evaluation.predict import RowPrediction
from llamagene.evaluation.references import load_published
from llamagene.evaluation.report import write_charts, write_report
from llamagene.evaluation.results import task_results
from llamagene.evaluation.rows import EvalRow, EvalTask
from llamagene.tasks import ClassInfo, TaskInfo


def _task(task_id: str, golds: list[int], templates: list[str]) -> EvalTask:
    info = TaskInfo(
        id=task_id, task_type="binary", description="", fields=("sequence", "label"),
        sequence_fields={"sequence": "dna"}, metric="mcc",
        classes=(ClassInfo("0", "no"), ClassInfo("1", "yes")),
    )  # fmt: skip
    rows = [
        EvalRow(
            where=f"test.jsonl:{n + 1}",
            index=n // len(templates),
            copy="r0",
            template=templates[n % len(templates)],
            prompt="p",
            answer=["no", "yes"][g],
            markup=True,
            fields={"sequence": "ACGT", "label": str(g)},
            choices=["no", "yes"],
            choice_classes=[0, 1],
            gold=g,
        )
        for n, g in enumerate(golds)
    ]
    return EvalTask(info, rows)


def _pred(choice: int, generated: str) -> RowPrediction:
    parsed = {"no": 0, "yes": 1}.get(generated)
    return RowPrediction(generated, parsed, [0.0, 0.0], choice, choice)


def _metrics(tasks: dict[str, Any]) -> dict[str, Any]:
    return {
        "split": "test", "split_file": "run/build_sft/test.jsonl", "rows": 8,
        "models": ["tuned"], "baselines": ["majority"], "eval_templates": "all",
        "bootstrap": {"resamples": 100, "seed": 0}, "tasks": tasks,
        "references": {"source": "DNABERT-2 paper", "models": list(load_published().models)},
        "english": {"text": None, "tokens": 0, "perplexity": {}},
    }  # fmt: skip


def test_one_class_mcc_is_na_and_unparseable_answers_count_wrong(tmp_path: Path) -> None:
    task = _task("t/one", [1, 1, 1, 1], ["a"])
    preds = [_pred(1, "yes"), _pred(1, "yes"), _pred(0, "maybe"), _pred(1, "")]
    majority = BaselineResult("majority", [1, 1, 1, 1], {"class": "1"})
    entry = task_results(
        task, {"tuned": preds}, [majority], regression_fallback=None, per_template=False,
        resamples=100, seed=0,
    )  # fmt: skip
    choice = entry["models"]["tuned"]["choice"]
    assert choice["mcc"]["value"] is None and choice["mcc"]["na"] == "one class"
    assert choice["accuracy"]["value"] == 0.75
    generation = entry["models"]["tuned"]["generation"]
    assert generation["exact_match"]["value"] == 0.5
    assert generation["unparseable"]["value"] == 0.5
    assert entry["baselines"]["majority"]["scores"]["mcc"]["na"] == "one class"
    text = write_report(_metrics({"t/one": entry | {"references": []}}), tmp_path / "r.md", [])
    assert "n/a (one class)" in text and "0.750 [" in text
    assert "| tuned above majority? |" in text  # "-": the majority's MCC is n/a too


def test_gue_rows_show_published_references_and_template_medians(tmp_path: Path) -> None:
    golds = [0, 0, 1, 1] * 2  # each template (a: even rows, b: odd rows) sees both classes
    task = _task("gue/prom/prom_300_all", golds, ["a", "b"])
    preds = [_pred(g if n % 2 == 0 else 1, "yes") for n, g in enumerate(golds)]
    entry = task_results(
        task, {"tuned": preds}, [], regression_fallback=None, per_template=True, resamples=100,
        seed=0,
    )  # fmt: skip
    per = entry["per_template"]
    assert per["tuned"] == {"a": 1.0, "b": 0.0} and per["median"]["tuned"] == 0.5
    entry["references"] = [vars(p) for p in load_published().for_task("gue/prom/prom_300_all")]
    metrics = _metrics({"gue/prom/prom_300_all": entry})
    text = write_report(metrics, tmp_path / "report.md", [])
    header = next(line for line in text.splitlines() if line.startswith("| task |"))
    assert "DNABERT-2 (117M)" in header and "NT-2500M-multi" in header
    assert "| 0.868 | 0.910 |" in text  # 86.77 and 91.01, on the report's 0-1 scale
    assert "**median** | 0.500" in text and "pool all renderings of a row" in text
    charts = write_charts(metrics, tmp_path / "charts", {})
    assert [c.name for c in charts] == ["scores.png"] and charts[0].stat().st_size > 1000
    json.dumps(metrics)  # everything the report reads is plain JSON


def test_pretraining_validation_loss_per_source_is_reported(tmp_path: Path) -> None:
    task = _task("t/one", [1, 0], ["a"])
    entry = task_results(
        task, {"tuned": [_pred(1, "yes"), _pred(0, "no")]}, [], regression_fallback=None,
        per_template=False, resamples=10, seed=0,
    )  # fmt: skip
    metrics = _metrics({"t/one": entry | {"references": []}})
    assert "validation loss per source" not in write_report(metrics, tmp_path / "a.md", [])
    metrics["pretrain_validation"] = {"dna": 1.25, "english": 3.5, "protein": 2.0}
    text = write_report(metrics, tmp_path / "b.md", [])
    assert "Pretraining's final validation loss per source" in text
    assert "| english | 3.5000 |" in text and "| dna | 1.2500 |" in text
