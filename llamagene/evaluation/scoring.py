"""Model calls of the evaluation: choice log-likelihoods, greedy answers, and perplexity.

**Choices** (classification): each choice is ranked by the summed log-probability of its tokens
given the prompt, ``sum_j log p(choice_j | prompt, choice_<j)``, with the prompt's ids from the
prompt format (``PromptFormat.prompt_ids``: BOS ... cue) and the choice's ids as the format
encodes an answer (``text_ids``: a word-start mark first, no EOS) — lm-evaluation-harness's
``acc`` rule. The prompt is computed **once per row**: rows are sorted by length and batched
(left-padded) into one forward pass that keeps its KV cache and gives the first token of every
choice; the cache is then repeated for each (row, choice) pair and the rest of the choices' tokens
run in a second, short pass. Choices of one token (most binary tasks) need no second pass. A
prompt plus choice that does not fit the model's context is an error, never cut.

:func:`score_choices_full` is the plain way (one full forward of prompt + choice for every choice,
as lm-evaluation-harness does): the reference the tests compare with, and a benchmark baseline.

**Greedy answers** (the generation view and generation tasks): ``model.generate`` without
sampling from the same prompt ids, up to EOS (the format's stop) or a cap on new tokens; rows are
sorted by length and batched with left padding.

**Perplexity** of a text: ``exp`` of the mean negative log-likelihood per token, over
non-overlapping windows of the model's context that each start with BOS (BOS is not scored).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llamagene.errors import StageError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

#: Tokens (rows x padded length) in one forward pass of prompts.
BATCH_TOKENS = 8192
#: At most this many rows in one pass.
MAX_BATCH_ROWS = 64


@dataclass(frozen=True)
class ChoiceRequest:
    """One row to score: its prompt ids and the ids of each choice; ``where`` names the row."""

    prompt: list[int]
    choices: list[list[int]]
    where: str = ""


Progress = Callable[[int], None]


def check_context(requests: Sequence[ChoiceRequest], context: int | None) -> None:
    """Stop on a row whose prompt and longest choice do not fit the model's context."""
    if context is None:
        return
    for request in requests:
        need = len(request.prompt) + max((len(c) for c in request.choices), default=0)
        if need > context:
            raise StageError(
                f"{request.where}: the prompt and its longest choice take {need} tokens, more than "
                f"the model's context of {context}: nothing is cut; shorten the row in build_sft "
                "(length.max_tokens) or use a model with a longer context"
            )


def batches_by_length(lengths: Sequence[int], batch_tokens: int, max_rows: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length, longest first, each batch holding
    at most ``batch_tokens`` padded tokens and ``max_rows`` rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * width > batch_tokens or len(current) >= max_rows):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def score_choices(
    model: PreTrainedModel,
    requests: Sequence[ChoiceRequest],
    *,
    pad_id: int,
    batch_tokens: int = BATCH_TOKENS,
    max_rows: int = MAX_BATCH_ROWS,
    progress: Progress | None = None,
) -> list[list[float]]:
    """The summed log-probability of every choice of every row (see the module doc)."""
    import torch

    scores: list[list[float]] = [[0.0] * len(r.choices) for r in requests]
    lengths = [len(r.prompt) for r in requests]
    device = _device(model)
    with torch.inference_mode():
        for batch in batches_by_length(lengths, batch_tokens, max_rows):
            _score_batch(model, [requests[i] for i in batch], batch, scores, pad_id, device)
            if progress is not None:
                progress(len(batch))
    return scores


def _score_batch(
    model: PreTrainedModel,
    rows: Sequence[ChoiceRequest],
    at: Sequence[int],
    scores: list[list[float]],
    pad_id: int,
    device: torch.device,
) -> None:
    import torch

    ids, mask = _left_padded([r.prompt for r in rows], pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # the cache is kept only for choices of several tokens (a binary task's rarely need it)
    longer_choices = any(len(choice) > 1 for row in rows for choice in row.choices)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=longer_choices,
        logits_to_keep=1,
    )  # fmt: skip
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (rows, vocab)
    pairs = [(r, c) for r, row in enumerate(rows) for c in range(len(row.choices))]
    for r, c in pairs:
        scores[at[r]][c] = float(first[r, rows[r].choices[c][0]])
    longer = [(r, c) for r, c in pairs if len(rows[r].choices[c]) > 1]
    if not longer:
        return
    cache = _output_cache(out)
    cache.reorder_cache(torch.tensor([r for r, _ in longer], device=device))
    rest = [rows[r].choices[c] for r, c in longer]
    width = max(len(choice) - 1 for choice in rest)
    inputs = torch.full((len(rest), width), pad_id, dtype=torch.long, device=device)
    rest_mask = torch.zeros((len(rest), width), dtype=torch.long, device=device)
    for k, choice in enumerate(rest):
        inputs[k, : len(choice) - 1] = torch.tensor(choice[:-1], device=device)
        rest_mask[k, : len(choice) - 1] = 1
    pair_rows = torch.tensor([r for r, _ in longer], device=device)
    full_mask = torch.cat([mask[pair_rows], rest_mask], dim=1)
    start = mask[pair_rows].sum(-1, keepdim=True)
    rest_positions = start + torch.arange(width, device=device)
    logits = model(
        input_ids=inputs, attention_mask=full_mask, position_ids=rest_positions, use_cache=True,
        **{_cache_argument(model): cache},
    ).logits  # fmt: skip
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    for k, ((r, c), choice) in enumerate(zip(longer, rest, strict=True)):
        targets = torch.tensor(choice[1:], device=device)
        picked = logprobs[k, torch.arange(len(choice) - 1, device=device), targets]
        scores[at[r]][c] += float(picked.sum())


def score_choices_full(
    model: PreTrainedModel, requests: Sequence[ChoiceRequest], progress: Progress | None = None
) -> list[list[float]]:
    """The same scores, one full forward of prompt + choice per choice, no batching."""
    import torch

    device = _device(model)
    scores: list[list[float]] = []
    with torch.inference_mode():
        for request in requests:
            row = []
            for choice in request.choices:
                ids = torch.tensor([request.prompt + choice], device=device)
                logits = model(input_ids=ids, use_cache=False).logits[0].float()
                logprobs = torch.log_softmax(logits[len(request.prompt) - 1 : -1], dim=-1)
                targets = torch.tensor(choice, device=device)
                row.append(float(logprobs[torch.arange(len(choice)), targets].sum()))
            scores.append(row)
            if progress is not None:
                progress(1)
    return scores


def generate_greedy(
    model: PreTrainedModel,
    prompts: Sequence[list[int]],
    max_new_tokens: Sequence[int],
    *,
    eos_id: int,
    pad_id: int,
    suppress: Sequence[int] = (),
    batch_tokens: int = BATCH_TOKENS,
    max_rows: int = MAX_BATCH_ROWS,
    progress: Progress | None = None,
) -> list[list[int]]:
    """Greedy answer ids of every prompt (without the EOS that ended it)."""
    import torch

    answers: list[list[int]] = [[] for _ in prompts]
    lengths = [len(p) + n for p, n in zip(prompts, max_new_tokens, strict=True)]
    device = _device(model)
    extra: dict[str, Any] = {"suppress_tokens": list(suppress)} if suppress else {}
    with torch.inference_mode():
        for batch in batches_by_length(lengths, batch_tokens, max_rows):
            ids, mask = _left_padded([prompts[i] for i in batch], pad_id, device)
            out = model.generate(  # type: ignore[operator]
                input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                max_new_tokens=max(max_new_tokens[i] for i in batch), eos_token_id=eos_id,
                pad_token_id=pad_id, temperature=None, top_p=None, top_k=None, **extra,
            )  # fmt: skip
            for k, index in enumerate(batch):
                new = out[k, ids.shape[1] :].tolist()
                new = new[: max_new_tokens[index]]
                answers[index] = new[: new.index(eos_id)] if eos_id in new else new
            if progress is not None:
                progress(len(batch))
    return answers


def perplexity(
    model: PreTrainedModel, ids: Sequence[int], *, bos_id: int, context: int
) -> tuple[float, int]:
    """(perplexity, tokens scored) of ``ids`` (a text's ids without BOS); see the module doc."""
    import math

    import torch

    window = max(2, context) - 1
    device = _device(model)
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids), window):
            chunk = [bos_id, *ids[start : start + window]]
            if len(chunk) < 2:
                continue
            tensor = torch.tensor([chunk], device=device)
            logits = model(input_ids=tensor, use_cache=False).logits[0, :-1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            picked = logprobs[torch.arange(len(chunk) - 1), tensor[0, 1:]]
            total -= float(picked.sum())
            count += len(chunk) - 1
    if count == 0:
        raise StageError("the English text for perplexity has no tokens")
    return math.exp(total / count), count


def _left_padded(
    rows: Sequence[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for k, row in enumerate(rows):
        ids[k, width - len(row) :] = torch.tensor(row, device=device)
        mask[k, width - len(row) :] = 1
    return ids, mask


def _cache_argument(model: PreTrainedModel) -> str:
    """transformers renamed ``past_key_values`` to ``cache`` within 5.x: take the model's."""
    parameters = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device
