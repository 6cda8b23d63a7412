"""English instruction rows, and the summary that says what happened to every row.

English rows (:func:`english_rows`) are plain text: llamagene reads no sequence markup in them
(``<dna>hello world</dna>`` in an Alpaca answer stays those very characters), so they are
written with ``"markup": false`` and counted as plain text; rows over ``max_tokens`` are
dropped and counted. A chat row keeps every turn in ``messages``, and finetune trains every
assistant turn of it. ``summary.json`` and ``summary.md`` (:func:`summary`, :func:`markdown`)
count, per task and split, the rows read, written, trimmed, dropped as too long and dropped as
leaks of a test sequence by kind, and the templates used.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from llamagene.prompt_format import messages_of
from llamagene.sft.leaks import LEAK_KINDS
from llamagene.sft.lengths import TokenCounter
from llamagene.sft.recipe import SftRecipe
from llamagene.sft.rows import SplitCounts, row_line

log = logging.getLogger("llamagene")


def english_rows(
    recipe: SftRecipe, counter: TokenCounter, task_rows: int
) -> tuple[list[str], dict[str, int]]:
    """The English training lines (``english_share`` of all training rows) and their counts:
    ``available``, ``wanted``, ``written``, ``dropped_too_long``."""
    from llamagene.tasks.instructions import load_instructions

    counts = {"available": 0, "wanted": 0, "written": 0, "dropped_too_long": 0}
    if recipe.english_share <= 0 or not recipe.english:
        return [], counts
    wanted = round(recipe.english_share / (1 - recipe.english_share) * task_rows)
    pool = [ex for e in recipe.english for ex in load_instructions(e.path, e.format)]
    chosen = random.Random(f"{recipe.seed}/english").sample(pool, min(wanted, len(pool)))
    if len(chosen) < wanted:
        log.warning("build_sft: english: %d rows wanted, %d available", wanted, len(pool))
    tokens = counter.count_conversations([messages_of(ex.fields) for ex in chosen], markup=False)
    lines = []
    for ex, n in zip(chosen, tokens, strict=True):
        if n > recipe.length.max_tokens:
            continue
        prompt, answer = ex.fields["prompt"], ex.fields["answer"]
        messages = ex.fields.get("messages")
        lines.append(row_line(ex.task, "train", ex.index, "r0", prompt, answer, n,
                              messages=messages))  # fmt: skip
    counts.update(
        available=len(pool),
        wanted=wanted,
        written=len(lines),
        dropped_too_long=len(chosen) - len(lines),
    )
    return lines, counts


def summary(
    counts: Mapping[tuple[str, str], SplitCounts], english: Mapping[str, int], recipe: SftRecipe
) -> dict[str, Any]:
    """What ``summary.json`` holds: per task and split, and totals."""
    per_task: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    for (task, split), c in sorted(counts.items()):
        entry: dict[str, Any] = {
            "rows_read": c.rows_read,
            "written": c.written,
            "trimmed": c.trimmed,
            "dropped_too_long": c.dropped_too_long,
            "dropped_leaks": sum(c.leaks.values()),
            "leaks": {kind: c.leaks.get(kind, 0) for kind in LEAK_KINDS},
            "reverse_complements": c.reverse_complements,
            "templates": dict(sorted(c.templates.items())),
        }
        per_task.setdefault(task, {})[split] = entry
        totals.update({k: v for k, v in entry.items() if isinstance(v, int)})
        totals.update({f"leaks_{kind}": n for kind, n in entry["leaks"].items()})
    totals["english_rows"] = english.get("written", 0)
    rule = recipe.leak_check
    return {
        "max_tokens": recipe.length.max_tokens,
        "overflow": recipe.length.overflow,
        "eval_overflow": recipe.length.eval_overflow,
        "eval_templates": recipe.eval_templates,
        "leak_check": rule.model_dump(),
        "tasks": per_task,
        "english": dict(english),
        "totals": dict(totals),
    }


def markdown(report: Mapping[str, Any]) -> str:
    """``summary.md``: one table row per task and split, then the leak rule and English."""
    rule = report["leak_check"]
    leak_rule = (
        f"train and dev rows dropped when a sequence equals a test sequence, is its reverse "
        f"complement, or lies inside or around one (at least {rule['min_overlap_bp']} bp / "
        f"{rule['min_overlap_aa']} aa)"
        if rule["enabled"]
        else "leak check off"
    )
    lines = [
        f"# build_sft summary (max {report['max_tokens']} tokens; train: {report['overflow']}, "
        f"dev/test: {report['eval_overflow']}; eval templates: {report['eval_templates']})",
        "",
        f"Leaks: {leak_rule}. Test rows are never dropped or changed.",
        "",
        "| task | split | read | written | trimmed | too long | leaks: exact | reverse "
        "complement | contained | contains | templates |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, splits in report["tasks"].items():
        for split, c in splits.items():
            used = ", ".join(f"{t.rsplit('/', 1)[-1]} {n}" for t, n in c["templates"].items())
            leaks = " | ".join(str(c["leaks"][kind]) for kind in LEAK_KINDS)
            lines.append(
                f"| {task} | {split} | {c['rows_read']} | {c['written']} | {c['trimmed']} | "
                f"{c['dropped_too_long']} | {leaks} | {used} |"
            )
    english = report["english"]
    lines += [
        "",
        f"English instruction rows (train): {english.get('written', 0)} written of "
        f"{english.get('wanted', 0)} wanted ({english.get('available', 0)} available, "
        f"{english.get('dropped_too_long', 0)} over {report['max_tokens']} tokens dropped)",
        "",
    ]
    return "\n".join(lines)
