"""Stage ``evaluate``: the tuned model scored on untouched held-out rows, beside baselines and
published references, in a report a newcomer reads at a glance.

Reads   ``build_sft``'s ``test.jsonl`` (``dev.jsonl`` with ``split: dev``), ``train.jsonl`` and
        ``dev.jsonl`` (baselines, answer lengths) and ``tasks.json``; ``merge_vocab``'s tokenizer;
        the models: ``finetune``'s export (``merged/``) by default, and on request
        ``pretrain``'s export and the untuned base (``models: [finetune, pretrain, base]``); an
        optional held-out English text (perplexity).
Writes  ``<run_dir>/evaluate/``:
          ``report.md``          one table of task x metric: models, baselines, references
          ``metrics.json``       every figure, with its 95% bootstrap interval
          ``predictions.jsonl``  per model and row: template, the score of each choice, the
                                 greedy answer, the prediction and the gold answer
          ``charts/``            per-task scores against baselines and references; loss curves
Run     ``llamagene run PIPELINE.yaml --only evaluate``

**Scoring rule.** Classification rows are scored by ranking the choices by the summed
log-probability of each choice's tokens given the prompt (:mod:`llamagene.evaluation.scoring`);
accuracy, acc_norm (per character), MCC and macro-F1. Every row is also answered greedily (the
generation view): exact match after normalisation, unparseable answers counted wrong and their
share reported (:mod:`llamagene.evaluation.answers`). Other task types are scored on the greedy
answer (:mod:`llamagene.evaluation.metrics`). Test rows are read as build_sft wrote them: none is
dropped, changed or cut; a row that does not fit the model's context stops the stage.

**Baselines** are fitted in the same run on the same splits: the majority class (the train mean
for regression) and a k-mer model with k chosen on dev (:mod:`llamagene.evaluation.baselines`).
GUE tasks show the scores published for DNABERT-2 and NT-2500M-multi beside ours
(:mod:`llamagene.evaluation.references`).
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from llamagene.config import InputPath, StrictModel, to_plain
from llamagene.errors import StageError
from llamagene.manifest import write_text_atomic
from llamagene.stages import StageContext

if TYPE_CHECKING:
    from llamagene.evaluation.baselines import BaselineResult, Examples
    from llamagene.evaluation.predict import ModelRunner, RowPrediction
    from llamagene.evaluation.rows import EvalTask
    from llamagene.prompt_format import PromptFormat

log = logging.getLogger("llamagene")

ModelName = Literal["finetune", "pretrain", "base"]
#: How each scored model is named in the report.
MODEL_TITLES: Mapping[str, str] = {"finetune": "tuned", "pretrain": "pretrained", "base": "base"}
#: New tokens allowed beyond the longest training answer of a task.
ANSWER_MARGIN_TOKENS = 16


class EvaluateConfig(StrictModel):
    """Config of ``evaluate``."""

    split: Literal["test", "dev"] = "test"
    """The split scored: ``test`` (the benchmark's held-out rows) or ``dev``."""
    models: list[ModelName] = Field(default_factory=lambda: ["finetune"], min_length=1)  # type: ignore[arg-type]
    """Models scored: ``finetune`` (the tuned model), ``pretrain`` (after continued
    pretraining only) and ``base`` (the untuned base, its new embedding rows composed)."""
    base_model: InputPath | None = None
    """The untuned base for ``base``; default: ``pretrain``'s ``base_model/`` (a base built from
    a config). Give the folder pretrain started from when it used a local model."""
    english_text: InputPath | None = None
    """A held-out English text (never trained on): its perplexity is reported for each model."""
    generation_view: bool = True
    """Also answer classification rows greedily and score the answers (exact match,
    unparseable share); off, they are scored by their choices alone (faster on big test sets)."""
    baselines: bool = True
    """Fit the majority and k-mer baselines on the train split (dev chooses k)."""
    resamples: int = Field(1000, ge=0, le=1000)
    """Bootstrap resamples for the 95% intervals (0: no intervals)."""
    seed: int = 0
    """Seed of the bootstrap and the baselines."""
    max_new_tokens: int | None = Field(None, ge=1)
    """Cap on a greedy answer; default per task: its longest training answer + 16 tokens."""
    batch_tokens: int = Field(8192, ge=64)
    """Prompt tokens (rows x padded length) in one forward pass."""
    charts: bool = True
    """Draw the PNG charts (matplotlib)."""


class Evaluate:
    name = "evaluate"

    def upstream(self, cfg: EvaluateConfig) -> tuple[str, ...]:
        needs_pretrain = "pretrain" in cfg.models or (
            "base" in cfg.models and cfg.base_model is None
        )
        return (
            ("merge_vocab", "build_sft")
            + (("pretrain",) if needs_pretrain else ())
            + (("finetune",) if "finetune" in cfg.models else ())
        )

    def inputs(self, cfg: EvaluateConfig) -> dict[str, Path]:
        named: dict[str, Path] = {}
        if cfg.base_model is not None:
            named["base_model"] = cfg.base_model
        if cfg.english_text is not None:
            named["english_text"] = cfg.english_text
        return named

    def check(self, cfg: EvaluateConfig) -> list[str]:
        problems = []
        if cfg.base_model is not None and not (cfg.base_model / "config.json").is_file():
            problems.append(f"base_model {cfg.base_model}: not a model folder (no config.json)")
        if cfg.english_text is not None and not cfg.english_text.is_file():
            problems.append(f"english_text {cfg.english_text}: no such file")
        if len(set(cfg.models)) != len(cfg.models):
            problems.append(f"models: a model is named twice ({', '.join(cfg.models)})")
        return problems

    def run(self, cfg: EvaluateConfig, ctx: StageContext) -> None:
        from llamagene.evaluation.models import english_perplexity
        from llamagene.evaluation.references import load_published
        from llamagene.evaluation.report import write_charts, write_report
        from llamagene.evaluation.results import task_results
        from llamagene.evaluation.rows import load_tasks_json, read_split
        from llamagene.prompt_format import PromptFormat

        sft_dir = ctx.upstream("build_sft")
        tokenizer_dir = ctx.upstream("merge_vocab") / "tokenizer"
        cards = load_tasks_json(sft_dir / "tasks.json")
        split_path = sft_dir / f"{cfg.split}.jsonl"
        tasks = read_split(split_path, cards)
        if not tasks:
            raise StageError(f"{split_path}: the {cfg.split} split has no benchmark rows to score")
        train = read_split(sft_dir / "train.jsonl", cards)
        dev = read_split(sft_dir / "dev.jsonl", cards) if cfg.split == "test" else {}
        fmt = PromptFormat.from_dir(tokenizer_dir)
        caps = {t: _answer_cap(fmt, train.get(t), task, cfg.max_new_tokens)
                for t, task in tasks.items()}  # fmt: skip
        rows = sum(len(t.rows) for t in tasks.values())
        log.info("evaluate: %d %s rows of %d tasks; models: %s", rows, cfg.split, len(tasks),
                 ", ".join(cfg.models))  # fmt: skip

        baselines = _baselines(tasks, train, dev, cfg) if cfg.baselines else {}
        english_ids = (
            fmt.text_ids([cfg.english_text.read_text(encoding="utf-8")], markup=False)[0]
            if cfg.english_text is not None
            else None
        )
        predictions: dict[str, dict[str, list[RowPrediction]]] = {}
        perplexities: dict[str, Any] = {}
        for name in cfg.models:
            title = MODEL_TITLES[name]
            runner = _load(name, cfg, ctx, fmt, tokenizer_dir)
            predictions[title] = _predict(runner, tasks, caps, title, cfg.generation_view)
            if english_ids is not None:
                perplexities[title] = english_perplexity(runner, english_ids)
            del runner
            gc.collect()

        fallbacks = {t: _train_mean(train.get(t)) for t in tasks}
        summary = json.loads((sft_dir / "summary.json").read_text(encoding="utf-8"))
        all_templates = summary.get("eval_templates") == "all"
        published = load_published()
        results: dict[str, Any] = {}
        for task_id, task in tasks.items():
            entry = task_results(
                task, {m: p[task_id] for m, p in predictions.items()}, baselines.get(task_id, []),
                regression_fallback=fallbacks[task_id], per_template=all_templates,
                resamples=cfg.resamples, seed=cfg.seed,
            )  # fmt: skip
            entry["references"] = [vars(p) for p in published.for_task(task_id)]
            results[task_id] = entry
        metrics = {
            "split": cfg.split, "split_file": str(split_path), "rows": rows,
            "models": list(predictions), "baselines": ["majority", "kmer"] if cfg.baselines else [],
            "eval_templates": "all" if all_templates else "one",
            "bootstrap": {"resamples": cfg.resamples, "seed": cfg.seed, "level": 0.95,
                          "method": "percentile, rows resampled with replacement"},
            "references": {"source": published.source, "models": list(published.models)},
            "english": {"text": str(cfg.english_text) if cfg.english_text else None,
                        "tokens": len(english_ids) if english_ids is not None else 0,
                        "perplexity": perplexities},
            "pretrain_validation": _pretrain_validation(ctx),
            "config": to_plain(cfg), "tasks": results,
        }  # fmt: skip
        out = ctx.out_dir
        write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        _write_predictions(out / "predictions.jsonl", tasks, predictions, baselines)
        charts = write_charts(metrics, out / "charts", _loss_logs(ctx)) if cfg.charts else []
        text = write_report(metrics, out / "report.md", charts)
        print(text)
        ctx.report.update(_headlines(metrics))


def _answer_cap(
    fmt: PromptFormat, train: EvalTask | None, task: EvalTask, fixed: int | None
) -> int:
    """New tokens a greedy answer may take: the longest training answer (or choice) + margin."""
    if fixed is not None:
        return fixed
    texts = [c for row in task.rows for c in (row.choices or [])]
    if train is not None:
        texts += [row.answer for row in train.rows]
    if not texts:
        return 128
    markup = task.rows[0].markup
    return max(len(ids) for ids in fmt.text_ids(sorted(set(texts)), markup)) + ANSWER_MARGIN_TOKENS


def _baselines(
    tasks: Mapping[str, EvalTask],
    train: Mapping[str, EvalTask],
    dev: Mapping[str, EvalTask],
    cfg: EvaluateConfig,
) -> dict[str, list[BaselineResult]]:
    """Majority and k-mer baselines of every classification and regression task."""
    from llamagene.evaluation.baselines import kmer_baseline, majority_baseline

    out: dict[str, list[BaselineResult]] = {}
    for task_id, task in tasks.items():
        if task.kind not in ("choice", "regression") or task_id not in train:
            continue
        regression = task.kind == "regression"
        train_set = _examples(train[task_id])
        test_set = _examples(task)
        results = [majority_baseline(train_set, len(test_set.labels), regression=regression)]
        kinds = dict(task.info.sequence_fields)
        if kinds:
            dev_set = _examples(dev[task_id]) if task_id in dev else _examples(None)
            try:
                results.append(
                    kmer_baseline(
                        train_set,
                        dev_set,
                        test_set,
                        kinds,
                        regression=regression,
                        select=_selector(task),
                        seed=cfg.seed,
                    )
                )
            except ValueError as err:
                log.warning("evaluate: %s: no k-mer baseline: %s", task_id, err)
        out[task_id] = results
    return out


def _examples(task: EvalTask | None) -> Examples:
    from llamagene.evaluation.baselines import Examples
    from llamagene.evaluation.results import unique_rows

    if task is None:
        return Examples([], [])
    fields = list(task.info.sequence_fields)
    rows = [task.rows[i] for i in unique_rows(task)]
    sequences = [{f: str(row.fields.get(f, "")) for f in fields} for row in rows]
    return Examples(sequences, [row.gold for row in rows])


def _selector(task: EvalTask) -> Callable[[Sequence[Any], Sequence[Any]], float]:
    """The headline metric as a plain function of (gold, predictions), higher is better."""
    from llamagene.evaluation.metrics import classification_scores, regression_scores
    from llamagene.evaluation.results import headline_metric

    metric = headline_metric(task)

    def select(gold: Sequence[Any], pred: Sequence[Any]) -> float:
        if task.kind == "regression":
            scores = regression_scores(gold, pred, fallback=0.0, resamples=0)
        else:
            scores = classification_scores(gold, pred, task.n_classes, resamples=0)
        value = scores[metric].value
        if value is None:
            return float("-inf")
        return -value if metric in ("rmse",) else value

    return select


def _train_mean(task: EvalTask | None) -> float | None:
    if task is None or task.kind != "regression" or not task.rows:
        return None
    return sum(float(r.gold) for r in task.rows) / len(task.rows)


def _load(
    name: str, cfg: EvaluateConfig, ctx: StageContext, fmt: PromptFormat, tokenizer_dir: Path
) -> ModelRunner:
    """A scored model, its vocabulary checked against the merged tokenizer."""
    from llamagene.evaluation.models import load_exported, load_grown_base

    if name == "base":
        folder = cfg.base_model or ctx.upstream("pretrain") / "base_model"
        return load_grown_base(folder, fmt, tokenizer_dir, cfg.batch_tokens)
    folder = ctx.upstream(name) / "merged"
    return load_exported(folder, name, fmt, tokenizer_dir, cfg.batch_tokens)


def _predict(
    runner: ModelRunner, tasks: Mapping[str, EvalTask], caps: Mapping[str, int], title: str,
    generation_view: bool,
) -> dict[str, list[RowPrediction]]:  # fmt: skip
    from tqdm.auto import tqdm

    from llamagene.evaluation.predict import predict

    choice_rows = sum(len(t.rows) for t in tasks.values() if t.kind == "choice")
    answered = sum(len(t.rows) for t in tasks.values() if generation_view or t.kind != "choice")
    with tqdm(total=answered + choice_rows, desc=f"evaluate {title}", unit="row") as bar:

        def advance(done: int) -> None:
            bar.update(done)

        return predict(runner, tasks, caps, progress=advance, generation_view=generation_view)


def _write_predictions(
    path: Path,
    tasks: Mapping[str, EvalTask],
    predictions: Mapping[str, Mapping[str, list[RowPrediction]]],
    baselines: Mapping[str, list[BaselineResult]],
) -> None:
    from llamagene.evaluation.results import unique_rows

    lines = []
    for task_id, task in tasks.items():
        for model, by_task in predictions.items():
            for row, pred in zip(task.rows, by_task[task_id], strict=True):
                record = {
                    "model": model, "task": task_id, "row": row.index, "copy": row.copy,
                    "template": row.template, "choices": row.choices, "scores": pred.scores,
                    "prediction": _shown(task, pred.choice if pred.scores else pred.parsed),
                    "generated": pred.generated, "generated_parsed": _shown(task, pred.parsed),
                    "gold": _shown(task, row.gold),
                }  # fmt: skip
                lines.append(json.dumps(record, ensure_ascii=False))
        for result in baselines.get(task_id, []):
            for i, value in zip(unique_rows(task), result.predictions, strict=True):
                row = task.rows[i]
                record = {"model": result.name, "task": task_id, "row": row.index,
                          "copy": row.copy, "prediction": _shown(task, value),
                          "gold": _shown(task, row.gold)}  # fmt: skip
                lines.append(json.dumps(record, ensure_ascii=False))
    write_text_atomic(path, "\n".join(lines) + "\n")


def _shown(task: EvalTask, value: Any) -> Any:
    """A prediction or gold answer as the task's class labels (not internal indices)."""
    labels = task.info.class_labels()
    if value is None:
        return None
    if task.kind == "choice" and isinstance(value, int):
        return labels[value]
    if task.kind == "multilabel" and isinstance(value, frozenset):
        return sorted(labels[i] for i in value)
    return value


def _pretrain_validation(ctx: StageContext) -> dict[str, float]:
    """pretrain's final validation loss per source (DNA, protein, English), when it ran."""
    if "pretrain" not in ctx.upstream_dirs:
        return {}
    path = ctx.upstream("pretrain") / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return dict(report.get("eval_loss_per_source") or {})


def _loss_logs(ctx: StageContext) -> dict[str, Path]:
    return {
        stage: ctx.upstream(stage) / "logs" / "metrics.jsonl"
        for stage in ("pretrain", "finetune")
        if stage in ctx.upstream_dirs
    }


def _headlines(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Figures for the manifest and ``llamagene status``: each task's headline, per model."""
    out: dict[str, Any] = {"rows": metrics["rows"]}
    for task_id, entry in metrics["tasks"].items():
        view = "choice" if entry["kind"] == "choice" else "generation"
        for model, views in entry["models"].items():
            value = views[view].get(entry["headline"], {}).get("value")
            out[f"{task_id} {entry['headline']} ({model})"] = value
    return out


STAGE = Evaluate()
