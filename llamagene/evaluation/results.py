"""Metrics of every model and baseline on one task, as the JSON that metrics.json holds.

Per task::

    {"task_type", "kind", "rows", "unique_rows", "headline", "templates_scored",
     "models":    {model: {"choice": {metric: score}, "generation": {metric: score}}},
     "baselines": {"majority": {"scores": {...}, "detail": {...}}, "kmer": {...}},
     "per_template": {model: {template: {metric: score}}, "median": {model: value}},
     "references": [{"model", "metric", "value", "source"}]}

where a score is ``{"value", "low", "high", "na"}`` (:class:`~llamagene.evaluation.metrics.Score`)
on the 0-1 scale. ``choice`` is the log-likelihood view (classification only), ``generation``
the greedy-answer view (every task). Baselines predict each source row once (a row rendered
through several templates is one row to them).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from llamagene.evaluation.baselines import BaselineResult
from llamagene.evaluation.metrics import (
    Score,
    classification_scores,
    mean_scores,
    multilabel_scores,
    regression_scores,
    sequence_scores,
    text_scores,
    token_scores,
)
from llamagene.evaluation.predict import RowPrediction
from llamagene.evaluation.rows import EvalTask

#: The metric a task's card may name, as the key this package reports it under.
_ALIASES = {"f1": "f1_macro", "acc": "accuracy", "exact": "exact_match", "mse": "rmse"}
#: The headline metric of each kind when the task names one that the kind does not report.
_DEFAULT_HEADLINE = {
    "choice": "mcc", "multilabel": "f1_macro", "regression": "spearman", "token": "accuracy",
    "sequence": "exact_match", "text": "exact_match",
}  # fmt: skip


def headline_metric(task: EvalTask) -> str:
    metric = _ALIASES.get(task.info.metric, task.info.metric)
    known = {
        "choice": ("mcc", "accuracy", "f1_macro"),
        "multilabel": ("f1_macro", "f1_micro", "exact_match"),
        "regression": ("spearman", "pearson", "rmse", "r2"),
        "token": ("accuracy", "f1_macro"),
        "sequence": ("exact_match", "identity", "edit_distance"),
        "text": ("exact_match", "chrf"),
    }[task.kind]
    return metric if metric in known else _DEFAULT_HEADLINE[task.kind]


def task_results(
    task: EvalTask,
    predictions: Mapping[str, Sequence[RowPrediction]],
    baselines: Sequence[BaselineResult],
    *,
    regression_fallback: float | None,
    per_template: bool,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """The metrics.json entry of one task (see the module doc)."""
    headline = headline_metric(task)
    gold = [row.gold for row in task.rows]
    models = {
        name: _model_scores(task, gold, preds, regression_fallback, resamples, seed)
        for name, preds in predictions.items()
    }
    unique = unique_rows(task)
    unique_gold = [task.rows[i].gold for i in unique]
    base: dict[str, Any] = {}
    for result in baselines:
        scores = _baseline_scores(task, unique_gold, result, regression_fallback, resamples, seed)
        base[result.name] = {"scores": _plain(scores), "detail": result.detail}
    entry: dict[str, Any] = {
        "task_type": task.info.task_type, "kind": task.kind, "rows": len(task.rows),
        "unique_rows": len(unique), "headline": headline,
        "templates_scored": sorted({row.template for row in task.rows}),
        "models": models, "baselines": base,
    }  # fmt: skip
    if per_template:
        entry["per_template"] = _per_template(task, predictions, regression_fallback, headline)
    return entry


def _model_scores(
    task: EvalTask,
    gold: Sequence[Any],
    preds: Sequence[RowPrediction],
    fallback: float | None,
    resamples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    parsed = [p.parsed for p in preds]
    views: dict[str, dict[str, Score]] = {}
    kind = task.kind
    if kind == "choice":
        n = task.n_classes
        choice = classification_scores(
            gold, [p.choice for p in preds], n, resamples=resamples, seed=seed
        )
        choice.pop("unparseable", None)
        norm = classification_scores(
            gold, [p.choice_norm for p in preds], n, resamples=resamples, seed=seed
        )
        views["choice"] = {"accuracy": choice["accuracy"], "acc_norm": norm["accuracy"],
                           "mcc": choice["mcc"], "f1_macro": choice["f1_macro"]}  # fmt: skip
        if all(p.generated is not None for p in preds):
            generated = classification_scores(gold, parsed, n, resamples=resamples, seed=seed)
            views["generation"] = {"exact_match": generated["accuracy"], "mcc": generated["mcc"],
                                   "unparseable": generated["unparseable"]}  # fmt: skip
    else:
        views["generation"] = _generation_scores(task, gold, parsed, fallback, resamples, seed)
    return {view: _plain(scores) for view, scores in views.items()}


def _generation_scores(
    task: EvalTask,
    gold: Sequence[Any],
    parsed: Sequence[Any],
    fallback: float | None,
    resamples: int,
    seed: int,
) -> dict[str, Score]:
    kind = task.kind
    if kind == "multilabel":
        return multilabel_scores(gold, parsed, task.n_classes, resamples=resamples, seed=seed)
    if kind == "regression":
        mean = fallback if fallback is not None else 0.0
        return regression_scores(gold, parsed, fallback=mean, resamples=resamples, seed=seed)
    if kind == "token":
        return token_scores(gold, parsed, resamples=resamples, seed=seed)
    if kind == "sequence":
        from llamagene.evaluation.answers import parse_sequence

        scores = sequence_scores(
            [parse_sequence(g) for g in gold], parsed, resamples=resamples, seed=seed
        )
        translations = _translations(task)
        if translations is not None:
            hits = [float(p == t) for p, t in zip(parsed, translations, strict=True)]
            scores["is_translation"] = mean_scores(hits, resamples=resamples, seed=seed)
        return scores
    return text_scores(gold, parsed, resamples=resamples, seed=seed)


def _translations(task: EvalTask) -> list[str] | None:
    """For a task whose gold answers are the translation (bacterial code) of its DNA input, the
    translation of each row's DNA; else None."""
    from Bio.Seq import Seq

    from llamagene.evaluation.answers import parse_sequence

    dna_fields = [f for f, kind in task.info.sequence_fields.items() if kind == "dna"]
    if len(dna_fields) != 1 or task.info.answer_field in dna_fields:
        return None
    out = []
    for row in task.rows:
        dna = str(row.fields.get(dna_fields[0], ""))
        usable = dna[: len(dna) - len(dna) % 3]
        out.append(str(Seq(usable).translate(table=11)).rstrip("*"))  # type: ignore[no-untyped-call]
    gold = [parse_sequence(str(row.gold)) for row in task.rows]
    return out if out == gold else None


def _baseline_scores(
    task: EvalTask,
    gold: Sequence[Any],
    result: BaselineResult,
    fallback: float | None,
    resamples: int,
    seed: int,
) -> dict[str, Score]:
    preds = list(result.predictions)
    if task.kind == "regression":
        mean = fallback if fallback is not None else 0.0
        return regression_scores(gold, preds, fallback=mean, resamples=resamples, seed=seed)
    classes = [int(p) for p in preds]
    scores = classification_scores(gold, classes, task.n_classes, resamples=resamples, seed=seed)
    scores.pop("unparseable", None)
    return scores


def _per_template(
    task: EvalTask,
    predictions: Mapping[str, Sequence[RowPrediction]],
    fallback: float | None,
    headline: str,
) -> dict[str, Any]:
    """Each template's headline metric (no intervals) and the median over templates."""
    view = "choice" if task.kind == "choice" else "generation"
    out: dict[str, Any] = {}
    medians: dict[str, float | None] = {}
    for model, preds in predictions.items():
        by_template: dict[str, Any] = {}
        for template in sorted({row.template for row in task.rows}):
            keep = [i for i, row in enumerate(task.rows) if row.template == template]
            sub = EvalTask(task.info, [task.rows[i] for i in keep], task.templates)
            scores = _model_scores(sub, [r.gold for r in sub.rows], [preds[i] for i in keep],
                                   fallback, 0, 0)  # fmt: skip
            by_template[template] = scores[view].get(headline, {"value": None})["value"]
        out[model] = by_template
        values = [v for v in by_template.values() if v is not None]
        medians[model] = statistics.median(values) if values else None
    out["median"] = medians
    return out


def unique_rows(task: EvalTask) -> list[int]:
    """The first rendered row of each source row (index, copy): what baselines predict."""
    seen: dict[tuple[int, str], int] = {}
    for number, row in enumerate(task.rows):
        seen.setdefault((row.index, row.copy), number)
    return list(seen.values())


def _plain(scores: Mapping[str, Score]) -> dict[str, Any]:
    return {name: score.to_json() for name, score in scores.items()}
