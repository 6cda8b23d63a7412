"""report.md and the PNG charts, drawn from metrics.json's content.

The report opens with one table, task by task, of the headline metric for every model, baseline
and published reference, each model value with its 95% interval; then every metric (task x
metric), the per-template scores where build_sft rendered every template, English perplexity,
and the charts. Every value is on a 0-1 scale (published scores, given x100, are divided by 100).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llamagene.manifest import write_text_atomic

SCORING_RULE = (
    "**Scoring rule.** Classification: the answer choices are ranked by the summed "
    "log-probability of each choice's tokens given the prompt, in the prompt format the model was "
    "tuned with (lm-evaluation-harness's `acc`); `acc_norm` divides each choice's log-probability "
    "by its length in characters. Generation view (every task): a greedy answer up to the end of "
    "the answer, normalised (Unicode NFKC, case folded, spaces collapsed, one trailing period "
    "dropped) and compared exactly; an answer that does not parse counts as wrong and the "
    "`unparseable` row gives their share. Intervals: 95% percentile bootstrap over rows."
)


def fmt_score(score: Mapping[str, Any] | None) -> str:
    if not score:
        return ""
    if score.get("value") is None:
        return f"n/a ({score['na']})" if score.get("na") else "n/a"
    text = f"{score['value']:.3f}"
    if score.get("low") is not None and score.get("high") is not None:
        text += f" [{score['low']:.2f}, {score['high']:.2f}]"
    return text


def _view(entry: Mapping[str, Any]) -> str:
    return "choice" if entry["kind"] == "choice" else "generation"


def _reference(entry: Mapping[str, Any], model: str) -> str:
    for ref in entry.get("references", []):
        if ref["model"] == model:
            return f"{ref['value'] / 100:.3f}"
    return ""


def headline_table(metrics: Mapping[str, Any]) -> str:
    models = list(metrics["models"])
    baselines = list(metrics["baselines"])
    refs = list(metrics["references"]["models"])
    used_refs = [r for r in refs if any(_reference(e, r) for e in metrics["tasks"].values())]
    head = ["task", "rows", "metric", *models, *baselines, *used_refs]
    if "majority" in baselines:
        head.append(f"{models[0]} above majority?")
    lines = [_row(head), _row(["---"] * len(head))]
    for task_id, entry in metrics["tasks"].items():
        metric = entry["headline"]
        view = _view(entry)
        cells = [f"`{task_id}`", str(entry["rows"]), f"{metric} ({view})"]
        cells += [fmt_score(entry["models"][m][view].get(metric)) for m in models]
        cells += [
            fmt_score(entry["baselines"].get(b, {}).get("scores", {}).get(metric)) or "-"
            for b in baselines
        ]
        cells += [_reference(entry, r) or "-" for r in used_refs]
        if "majority" in baselines:
            cells.append(above_majority(entry, models[0]))
        lines.append(_row(cells))
    return "\n".join(lines)


def above_majority(entry: Mapping[str, Any], model: str) -> str:
    """Whether ``model``'s headline beats the majority baseline: its whole 95% interval above
    the majority's value (below it, for a metric where lower is better)."""
    from llamagene.evaluation.metrics import HIGHER_IS_BETTER

    metric = entry["headline"]
    ours = entry["models"][model][_view(entry)].get(metric) or {}
    majority = entry["baselines"].get("majority", {}).get("scores", {}).get(metric) or {}
    if majority.get("value") is None:
        return "-"
    if ours.get("low") is None or ours.get("high") is None:
        return "n/a (no interval)"
    if HIGHER_IS_BETTER.get(metric, True):
        return "**yes**" if ours["low"] > majority["value"] else "no"
    return "**yes**" if ours["high"] < majority["value"] else "no"


def metric_table(metrics: Mapping[str, Any]) -> str:
    models = list(metrics["models"])
    baselines = list(metrics["baselines"])
    head = ["task", "view", "metric", *models, *baselines]
    lines = [_row(head), _row(["---"] * len(head))]
    for task_id, entry in metrics["tasks"].items():
        for view in ("choice", "generation"):
            names: list[str] = []
            for m in models:
                names += [n for n in entry["models"][m].get(view, {}) if n not in names]
            for name in names:
                cells = [f"`{task_id}`", view, name]
                cells += [fmt_score(entry["models"][m].get(view, {}).get(name)) for m in models]
                cells += [
                    fmt_score(entry["baselines"].get(b, {}).get("scores", {}).get(name))
                    if view == _view(entry) else ""
                    for b in baselines
                ]  # fmt: skip
                lines.append(_row(cells))
    return "\n".join(lines)


def _templates_section(metrics: Mapping[str, Any]) -> list[str]:
    if metrics["eval_templates"] != "all":
        return [
            "Each test row was rendered with one template (build_sft's `eval_templates: one`), so "
            "there are no per-template scores; set `eval_templates: all` in the recipe to score "
            "every row through every template and get the median over templates.",
        ]
    lines = [
        "Every test row was scored through every template (`eval_templates: all`). The tables "
        "above pool all renderings of a row, and their intervals resample rendered rows; here is "
        "each template's headline alone, and the median over templates.",
        "",
    ]
    for task_id, entry in metrics["tasks"].items():
        per = entry.get("per_template") or {}
        models = [m for m in per if m != "median"]
        if not models:
            continue
        templates = sorted({t for m in models for t in per[m]})
        lines += [f"`{task_id}` ({entry['headline']}):", ""]
        lines += [_row(["template", *models]), _row(["---"] * (len(models) + 1))]
        for template in templates:
            values = [per[m].get(template) for m in models]
            lines.append(_row([f"`{template}`", *[_number(v) for v in values]]))
        lines.append(_row(["**median**", *[_number(per["median"].get(m)) for m in models]]))
        lines.append("")
    return lines


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def write_report(metrics: Mapping[str, Any], path: Path, charts: Sequence[Path]) -> str:
    """Write report.md; returns its text."""
    tasks = metrics["tasks"]
    lines = [
        "# Evaluation report",
        "",
        f"Split **{metrics['split']}** (`{metrics['split_file']}`): {metrics['rows']} rows of "
        f"{len(tasks)} tasks. Models: {', '.join(metrics['models'])}. Baselines, fitted in this "
        f"run on the train split: {', '.join(metrics['baselines']) or 'none'}.",
        "",
        SCORING_RULE + f" {metrics['bootstrap']['resamples']} resamples, seed "
        f"{metrics['bootstrap']['seed']}."
        + (
            ""
            if metrics.get("config", {}).get("generation_view", True)
            else " The generation view was off for classification rows (`generation_view: "
            "false`): they are scored by their choices alone."
        ),
        "",
        "## Headline (value [95% interval])",
        "",
        headline_table(metrics),
        "",
    ]
    if any(e.get("references") for e in tasks.values()):
        lines += [f"Published scores: {metrics['references']['source']} (x100 there).", ""]
    lines += ["## Every metric", "", metric_table(metrics), "", "## Per template", ""]
    lines += _templates_section(metrics)
    english = metrics["english"]
    lines += ["", "## English kept", ""]
    if english["perplexity"]:
        lines += [
            f"Perplexity on `{english['text']}` ({english['tokens']} tokens, never trained on); "
            "lower is better.",
            "",
            _row(["model", "perplexity"]),
            _row(["---", "---"]),
        ]
        lines += [_row([m, f"{v['perplexity']:.2f}"]) for m, v in english["perplexity"].items()]
    else:
        lines.append("No held-out English text was given (`evaluate.english_text`).")
    validation = metrics.get("pretrain_validation") or {}
    if validation:
        lines += [
            "",
            "Pretraining's final validation loss per source (mean token cross-entropy on "
            "held-out records of each source; a rising English loss is forgetting):",
            "",
            _row(["source", "validation loss"]),
            _row(["---", "---"]),
        ]
        lines += [_row([name, f"{loss:.4f}"]) for name, loss in validation.items()]
    if charts:
        lines += ["", "## Charts", ""]
        lines += [f"![{c.stem}]({c.parent.name}/{c.name})" for c in charts]
    text = "\n".join(lines) + "\n"
    write_text_atomic(path, text)
    return text


def write_charts(
    metrics: Mapping[str, Any], out_dir: Path, loss_logs: Mapping[str, Path]
) -> list[Path]:
    """scores.png (each task's headline: models, baselines, references) and loss.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tasks = metrics["tasks"]
    columns = min(3, len(tasks))
    rows = -(-len(tasks) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (task_id, entry) in zip(axes.flat, tasks.items(), strict=False):
        names, values, errors, colours = _bars(metrics, entry)
        ax.bar(range(len(names)), values, yerr=errors, color=colours, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task_id}\n{entry['headline']}", fontsize=9)
        ax.axhline(0, color="black", linewidth=0.5)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "scores.png"))
    plt.close(fig)
    curves = {stage: _loss_points(path) for stage, path in loss_logs.items() if path.is_file()}
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.4), squeeze=False)
        for ax, (stage, (train, dev)) in zip(axes.flat, curves.items(), strict=True):
            if train:
                ax.plot(*zip(*train, strict=True), label="train loss")
            if dev:
                ax.plot(*zip(*dev, strict=True), "o-", label="dev loss")
            ax.set_title(f"{stage} loss")
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "loss.png"))
        plt.close(fig)
    return written


def _bars(
    metrics: Mapping[str, Any], entry: Mapping[str, Any]
) -> tuple[list[str], list[float], list[list[float]], list[str]]:
    metric, view = entry["headline"], _view(entry)
    names: list[str] = []
    values: list[float] = []
    low: list[float] = []
    high: list[float] = []
    colours: list[str] = []
    scored = [(m, entry["models"][m][view].get(metric), "tab:blue") for m in metrics["models"]]
    scored += [(b, v["scores"].get(metric), "tab:gray") for b, v in entry["baselines"].items()]
    for name, score, colour in scored:
        if score and score.get("value") is not None:
            value = score["value"]
            names.append(name)
            values.append(value)
            low.append(value - (score["low"] if score.get("low") is not None else value))
            high.append((score["high"] if score.get("high") is not None else value) - value)
            colours.append(colour)
    for ref in entry.get("references", []):
        names.append(ref["model"])
        values.append(ref["value"] / 100)
        low.append(0.0)
        high.append(0.0)
        colours.append("tab:orange")
    return names, values, [low, high], colours


def _loss_points(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train, dev = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "loss" in record and "step" in record:
            train.append((int(record["step"]), float(record["loss"])))
        if "eval_loss" in record and "step" in record:
            dev.append((int(record["step"]), float(record["eval_loss"])))
    return train, dev


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path
