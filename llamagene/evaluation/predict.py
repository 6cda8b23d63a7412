"""One model's predictions on every row: choice scores and a greedy answer, parsed.

For binary and multiclass rows the model's prediction is the choice with the highest summed
log-probability (``choice``) and, as lm-evaluation-harness's ``acc_norm``, the highest
log-probability per character of the choice (``choice_norm``). Every row is also answered
greedily (the generation view): the answer is decoded, normalised and parsed by its task's kind
(:mod:`llamagene.evaluation.answers`); an answer that does not parse is ``None`` and counts as
wrong. Generation, regression, multilabel and token tasks are scored on the greedy answer only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamagene.errors import StageError
from llamagene.evaluation.rows import EvalRow, EvalTask
from llamagene.prompt_format import FormatError, Message, PromptFormat

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass
class RowPrediction:
    """What one model did on one row."""

    generated: str | None
    """The greedy answer; None for a classification row when the generation view is off."""
    parsed: Any
    """The greedy answer parsed for its kind: a class index, a set of classes, a number, a
    sequence or text; None when it does not parse."""
    scores: list[float] | None = None
    choice: int | None = None
    choice_norm: int | None = None


@dataclass(frozen=True)
class ModelRunner:
    """A loaded model with what scoring it needs."""

    model: PreTrainedModel
    format: PromptFormat
    context: int | None
    pad_id: int
    suppress: tuple[int, ...] = ()
    batch_tokens: int = 8192


def prompt_ids(fmt: PromptFormat, row: EvalRow) -> list[int]:
    try:
        return fmt.prompt_ids([Message("user", row.prompt)], row.markup)
    except FormatError as err:
        raise StageError(f"{row.where}: {err}") from None


def predict(
    runner: ModelRunner,
    tasks: Mapping[str, EvalTask],
    max_new_tokens: Mapping[str, int],
    progress: Callable[[int], None] | None = None,
    *,
    generation_view: bool = True,
) -> dict[str, list[RowPrediction]]:
    """Predictions for every row of every task, in row order; classification rows are answered
    greedily too unless ``generation_view`` is off."""
    from llamagene.evaluation.scoring import ChoiceRequest, check_context, score_choices

    fmt = runner.format
    requests: list[ChoiceRequest] = []
    choice_rows: list[tuple[str, int]] = []
    prompts: list[list[int]] = []
    caps: list[int] = []
    generate: list[bool] = []
    for task_id, task in tasks.items():
        for number, row in enumerate(task.rows):
            ids = prompt_ids(fmt, row)
            prompts.append(ids)
            caps.append(max_new_tokens[task_id])
            generate.append(generation_view or task.kind != "choice")
            if task.kind == "choice":
                assert row.choices is not None
                choice_ids = fmt.text_ids(row.choices, row.markup)
                requests.append(ChoiceRequest(ids, choice_ids, row.where))
                choice_rows.append((task_id, number))
    check_context(requests, runner.context)
    if runner.context is not None:
        for ids, cap, where, answered in zip(prompts, caps, _wheres(tasks), generate, strict=True):
            if answered and len(ids) + cap > runner.context:
                raise StageError(
                    f"{where}: the prompt ({len(ids)} tokens) and up to {cap} answer tokens do not "
                    f"fit the model's context of {runner.context}: nothing is cut; lower "
                    "evaluate.max_new_tokens or shorten the row"
                )
    scores = score_choices(
        runner.model, requests, pad_id=runner.pad_id, batch_tokens=runner.batch_tokens,
        progress=progress,
    )  # fmt: skip
    chosen = [i for i, answered in enumerate(generate) if answered]
    texts: list[str | None] = [None] * len(prompts)
    answers = generate_answers(runner, [prompts[i] for i in chosen], [caps[i] for i in chosen],
                               progress)  # fmt: skip
    for i, text in zip(chosen, answers, strict=True):
        texts[i] = text
    out: dict[str, list[RowPrediction]] = {}
    flat = iter(texts)
    for task_id, task in tasks.items():
        out[task_id] = [
            RowPrediction(text, None if text is None else parse_answer(task, row, text))
            for row, text in zip(task.rows, flat, strict=False)
        ]
    for (task_id, number), row_scores in zip(choice_rows, scores, strict=True):
        row = tasks[task_id].rows[number]
        assert row.choices is not None and row.choice_classes is not None
        best = max(range(len(row_scores)), key=lambda c: row_scores[c])
        norm = [s / max(1, len(text)) for s, text in zip(row_scores, row.choices, strict=True)]
        best_norm = max(range(len(norm)), key=lambda c: norm[c])
        prediction = out[task_id][number]
        prediction.scores = row_scores
        prediction.choice = row.choice_classes[best]
        prediction.choice_norm = row.choice_classes[best_norm]
    return out


def generate_answers(
    runner: ModelRunner,
    prompts: Sequence[list[int]],
    caps: Sequence[int],
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy answers, decoded (sequence pieces come back as letters)."""
    from llamagene.evaluation.scoring import generate_greedy

    if not prompts:
        return []
    ids = generate_greedy(
        runner.model, prompts, caps, eos_id=runner.format.eos_id, pad_id=runner.pad_id,
        suppress=runner.suppress, batch_tokens=runner.batch_tokens, progress=progress,
    )  # fmt: skip
    tokenizer = runner.format.tokenizer
    return [tokenizer.decode(answer, skip_special_tokens=True).strip() for answer in ids]


def parse_answer(task: EvalTask, row: EvalRow, text: str) -> Any:
    """A greedy answer in the form of its row's gold answer, or None."""
    from llamagene.evaluation.answers import (
        parse_choice,
        parse_labels,
        parse_number,
        parse_sequence,
    )

    kind = task.kind
    if kind == "choice":
        assert row.choices is not None and row.choice_classes is not None
        index = parse_choice(text, row.choices)
        return None if index is None else row.choice_classes[index]
    if kind == "multilabel":
        assert row.choices is not None and row.choice_classes is not None
        labels = parse_labels(text, row.choices)
        return None if labels is None else frozenset(row.choice_classes[i] for i in labels)
    if kind == "regression":
        return parse_number(text)
    if kind == "sequence":
        return parse_sequence(text) or None
    return text


def _wheres(tasks: Mapping[str, EvalTask]) -> list[str]:
    return [row.where for task in tasks.values() for row in task.rows]
