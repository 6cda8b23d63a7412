"""One task split -> instruction rows: pick rows, drop leaks, render, count, trim or refuse.

:class:`RowBuilder` turns the rows of one task's split into JSON lines, in this order:

1. **pick**: training rows are subsampled or repeated by the recipe's ``weight`` (each repeat
   draws a fresh template), dev and test rows are capped by ``max_eval_examples``; strand-
   symmetric training rows may be joined by their reverse complement;
2. **leaks**: a train or dev row whose sequence is related to a test sequence of any task
   (:mod:`llamagene.sft.leaks`: equal, reverse complement, contained, containing) is dropped and
   counted by kind; reverse-complement copies are checked like the rest. Test rows are never
   dropped, changed or reordered;
3. **render**: each row gets one template, drawn by weight from a hash of (seed, task, split,
   row, copy); with ``eval_templates: all``, dev and test rows are rendered through
   every template of their task;
4. **length**: counted as fine-tuning sees it (:class:`~llamagene.sft.lengths.TokenCounter`). A
   row over ``max_tokens`` follows ``overflow`` (train) or ``eval_overflow`` (dev, test: by
   default the build stops, naming the task, the row and the limit). Trimming shortens the
   prompt's longest sequence to a window placed by the task's declared signal, records the
   original length and the span kept in the row's ``trimmed``, and never touches the answer.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from llamagene.alphabets import SequenceKind
from llamagene.errors import StageError
from llamagene.sft.leaks import LEAK_KINDS, LeakIndex, LeakKind
from llamagene.sft.lengths import Pieces, TokenCounter, fit_window
from llamagene.sft.recipe import LengthPolicy, TaskEntry
from llamagene.tasks import Example, Signal, Split, Task, TaskInfo
from llamagene.templates import PromptTemplate, Rendered, TemplateError, answer_fields, render

#: Rows rendered and counted together (one SentencePiece batch).
BATCH_ROWS = 512
#: A region encoded for a long sequence is this much longer than the window expected to fit.
REGION_MARGIN = 1.1
#: Render-count-trim passes for a row whose text changes with its length (``{{ x | length }}``).
TRIM_PASSES = 3


@dataclass
class SplitCounts:
    """What happened to the rows of one task's split."""

    rows_read: int = 0
    written: int = 0
    trimmed: int = 0
    dropped_too_long: int = 0
    reverse_complements: int = 0
    leaks: Counter[str] = field(default_factory=Counter)
    """Rows dropped as related to a test sequence, by kind (exact, reverse_complement, ...)."""
    templates: Counter[str] = field(default_factory=Counter)


@dataclass
class _Row:
    """A row on its way out: where it came from, its fields, and once rendered, its text."""

    example: Example
    tag: str
    fields: dict[str, Any]
    template: PromptTemplate | None = None
    out: Rendered | None = None
    tokens: int = 0
    trimmed: dict[str, dict[str, Any]] | None = None
    region: tuple[int, int] | None = None
    """Where a clearly too-long sequence was encoded instead of whole (``tokens`` then counts
    that region only: the row is over the limit, by at least that much)."""


@dataclass
class RowBuilder:
    """Builds the rows of task splits under one recipe's seed, length policy and leak index."""

    seed: int
    policy: LengthPolicy
    counter: TokenCounter
    leaks: LeakIndex | None
    eval_templates: str = "one"

    def rows(
        self,
        task: Task,
        split: Split,
        templates: Sequence[PromptTemplate],
        entry: TaskEntry,
        tally: SplitCounts,
    ) -> Iterator[str]:
        """The JSON lines of one task's split, with ``tally`` updated."""
        info = task.info
        if entry.reverse_complement and not info.strand_symmetric:
            raise StageError(
                f"task {info.id}: reverse_complement is on, but its labels depend on the strand "
                f"(strand_symmetric: false); turn it off for this task"
            )
        signal = entry.signal.signal() if entry.signal is not None else info.signal
        examples = list(task.examples(split))
        tally.rows_read = len(examples)
        rows = self._pick(examples, split, entry, info, tally)
        if split != "test" and self.leaks is not None:
            rows = self._drop_leaks(rows, info, tally)
        rows = self._with_templates(rows, split, info, templates)
        overflow = self.policy.overflow if split == "train" else self.policy.eval_overflow
        too_long: list[_Row] = []
        for start in range(0, len(rows), BATCH_ROWS):
            batch = rows[start : start + BATCH_ROWS]
            for row in batch:
                row.out = self._render(row)
            if overflow == "trim":
                self._count_to_trim(batch, info, signal)
            else:
                self._count(batch)
            over = [r for r in batch if r.tokens > self.policy.max_tokens]
            if over and overflow == "trim":
                self._trim(over, info, signal)
            for row in batch:
                if row.tokens > self.policy.max_tokens:
                    too_long.append(row)
                    continue
                tally.written += 1
                tally.templates[row.template.id if row.template else ""] += 1
                tally.trimmed += row.trimmed is not None
                yield _line(info.id, split, row)
            self.counter.forget()
        tally.dropped_too_long = len(too_long)
        if too_long and overflow == "error":
            raise StageError(_overflow_message(info, split, too_long, len(rows), self.policy))

    def _pick(
        self, examples: Sequence[Example], split: Split, entry: TaskEntry, info: TaskInfo,
        tally: SplitCounts,
    ) -> list[_Row]:  # fmt: skip
        from llamagene.sequences import reverse_complement

        rows: list[_Row] = []
        for example, tag in _subsample(examples, split, entry, self.seed, info.id):
            rows.append(_Row(example, tag, dict(example.fields)))
            if split == "train" and entry.reverse_complement:
                rc = {k: reverse_complement(v) if info.sequence_fields.get(k) == "dna" else v
                      for k, v in example.fields.items()}  # fmt: skip
                rows.append(_Row(example, f"{tag}rc", rc))
                tally.reverse_complements += 1
        return rows

    def _drop_leaks(self, rows: list[_Row], info: TaskInfo, tally: SplitCounts) -> list[_Row]:
        """Rows whose sequences are unrelated to every test sequence; the others are counted."""
        assert self.leaks is not None
        rank = {kind: i for i, kind in enumerate(LEAK_KINDS)}
        found: list[LeakKind | None] = [None] * len(rows)
        for name, kind in info.sequence_fields.items():
            present = [i for i, r in enumerate(rows) if isinstance(r.fields.get(name), str)]
            hits = self.leaks.find(kind, [rows[i].fields[name] for i in present])
            for i, hit in zip(present, hits, strict=True):
                before = found[i]
                if hit is not None and (before is None or rank[hit] < rank[before]):
                    found[i] = hit
        tally.leaks.update(kind for kind in found if kind is not None)
        return [row for row, kind in zip(rows, found, strict=True) if kind is None]

    def _with_templates(
        self, rows: list[_Row], split: Split, info: TaskInfo, templates: Sequence[PromptTemplate]
    ) -> list[_Row]:
        if split != "train" and self.eval_templates == "all":
            return [_Row(r.example, r.tag, r.fields, template=t) for r in rows for t in templates]
        cumulative = list(accumulate(t.weight for t in templates))
        for row in rows:  # a seeded draw per row: it keeps its template when others change
            key = f"{self.seed}/{info.id}/{split}/{row.example.index}/{row.tag}".encode()
            draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) / 2**64
            pick = bisect.bisect_right(cumulative, draw * cumulative[-1])
            row.template = templates[min(pick, len(templates) - 1)]
        return rows

    def _render(self, row: _Row) -> Rendered:
        assert row.template is not None
        try:
            return render(row.template, row.fields, where=row.example.where)
        except TemplateError as err:
            raise StageError(str(err)) from None

    def _count(self, rows: Sequence[_Row]) -> None:
        for row, n in zip(rows, self.counter.count([_pair(r) for r in rows]), strict=True):
            row.tokens = n

    def _count_to_trim(self, rows: Sequence[_Row], info: TaskInfo, signal: Signal) -> None:
        """Count rows that may be trimmed. A row whose one sequence is clearly far over its
        budget (by the letters per token seen so far) is encoded only on a region around its
        signal, somewhat longer than the window that will fit: a long sequence costs what its
        window costs, not its whole length. If the region turns out to fit, the whole sequence
        is encoded after all; every row that is written has an exact count."""
        limit = self.policy.max_tokens
        parts = self.counter.text_parts([_pair(r) for r in rows])
        if parts is None:  # counting whole texts: no parts to size a region by
            self._count(rows)
            return
        exact: list[int] = []
        regions: list[tuple[int, int, tuple[SequenceKind, str], int, int]] = []
        for i, (row, (text, sequences)) in enumerate(zip(rows, parts, strict=True)):
            name = _trimmable(row, info, signal)
            kind = info.sequence_fields[name] if name else "dna"
            ratio = self.counter.letters_per_token(kind)
            sequence = row.fields[name] if name else ""
            if ratio is None or sequences != [(kind, sequence)] or limit <= text:
                exact.append(i)  # not one sequence alone in the row: count it whole
                continue
            size = math.ceil((limit - text) * ratio * REGION_MARGIN) + 16
            if text + len(sequence) / ratio < limit * 1.2 or size >= len(sequence):
                exact.append(i)
                continue
            start, end = signal.window(len(sequence), size)
            regions.append((i, text, (kind, sequence[start:end]), start, end))
        counts = self.counter.sequence_tokens([item for _, _, item, _, _ in regions])
        for (i, text, _, start, end), tokens in zip(regions, counts, strict=True):
            if text + tokens > limit + 2:  # over even on the region: over as a whole
                rows[i].tokens, rows[i].region = text + tokens, (start, end)
            else:
                exact.append(i)
        pairs = [_pair(rows[i]) for i in exact]
        totals = self.counter.count(pairs, [parts[i] for i in exact])
        for i, n in zip(exact, totals, strict=True):
            rows[i].tokens = n

    def _trim(self, rows: list[_Row], info: TaskInfo, signal: Signal) -> None:
        """Cut each row's longest prompt sequence to the window its signal places, as long as
        the row fits; a row that cannot fit is left over the limit (the caller drops or
        refuses it). The window's count comes from the sequence's own encoding (exact at piece
        boundaries), so only the row's text around it is counted again."""
        limit = self.policy.max_tokens
        todo: dict[int, tuple[str, Pieces, int]] = {}
        untrimmed = {i: (dict(r.fields), r.out, r.tokens) for i, r in enumerate(rows)}
        for i, row in enumerate(rows):
            name = _trimmable(row, info, signal)
            if name is not None:
                region = row.region or (0, -1)
                pieces = self.counter.pieces(info.sequence_fields[name], row.fields[name], *region)
                todo[i] = (name, pieces, row.tokens - pieces.tokens)  # the row without it
        excess = dict.fromkeys(todo, 0)
        for _ in range(TRIM_PASSES):
            fitted = []
            for i in excess:
                name, pieces, fixed = todo[i]
                original = untrimmed[i][0]
                sequence = original[name]
                fit = fit_window(pieces, len(sequence), limit - fixed - excess[i], signal,
                                 self.policy.min_sequence_chars)  # fmt: skip
                if fit is None:
                    continue
                window = sequence[fit.start : fit.end]
                self.counter.remember(info.sequence_fields[name], window, fit.tokens)
                row = rows[i]
                row.fields = {**original, name: window}
                row.out = self._render(row)
                row.trimmed = {name: {"length": len(sequence), "kept": [fit.start, fit.end]}}
                fitted.append(i)
            self._count([rows[i] for i in fitted])
            # a row still over: its text changed with the sequence ({{ x | length }})
            excess = {i: excess[i] + rows[i].tokens - limit for i in fitted
                      if rows[i].tokens > limit}  # fmt: skip
            if not excess:
                break
        for i, row in enumerate(rows):
            if row.tokens > limit:
                row.fields, row.out, row.tokens = untrimmed[i]
                row.trimmed = None


def _pair(row: _Row) -> tuple[str, str]:
    assert row.out is not None, "rendered first"
    return row.out.prompt, row.out.answer


def _trimmable(row: _Row, info: TaskInfo, signal: Signal) -> str | None:
    """The longest prompt sequence of the row that trimming may shorten (never the answer)."""
    assert row.template is not None
    if signal.keep == "whole":
        return None
    answer = answer_fields(row.template)
    fields = row.fields
    names = [k for k in info.sequence_fields if k not in answer and isinstance(fields.get(k), str)]
    return max(names, key=lambda k: len(fields[k])) if names else None


def _overflow_message(
    info: TaskInfo, split: Split, rows: Sequence[_Row], total: int, policy: LengthPolicy
) -> str:
    first = rows[0]
    return (
        f"task {info.id}: {len(rows)} of {total} {split} rows are longer than "
        f"length.max_tokens ({policy.max_tokens}), e.g. {first.example.where} "
        f"({first.tokens} tokens). Dev and test rows are not trimmed by default (a cut test "
        "set is not the benchmark): raise length.max_tokens, or set length.eval_overflow: "
        "drop or trim (counted in summary.md)"
    )


def _subsample(
    examples: Sequence[Example], split: Split, entry: TaskEntry, seed: int, task_id: str
) -> list[tuple[Example, str]]:
    """Rows to use, each with a tag (repeat number) that seeds its template draw."""
    rng = random.Random(f"{seed}/{task_id}/{split}/subsample")
    cap: int | None
    if split == "train":
        whole, part = divmod(entry.weight, 1.0)
        picked = [(ex, f"r{r}") for r in range(int(whole)) for ex in examples]
        extra = rng.sample(list(examples), round(part * len(examples)))
        picked += [(ex, f"r{int(whole)}") for ex in extra]
        cap = entry.max_train_examples
    else:
        picked = [(ex, "r0") for ex in examples]
        cap = entry.max_eval_examples
    if cap is not None and len(picked) > cap:
        picked = rng.sample(picked, cap)
        picked.sort(key=lambda p: (p[0].index, p[1]))
    return picked


def _line(task: str, split: Split, row: _Row) -> str:
    assert row.template is not None and row.out is not None
    return row_line(
        task, split, row.example.index, row.tag, row.out.prompt, row.out.answer, row.tokens,
        template=row.template, choices=row.out.choices, fields=row.fields, trimmed=row.trimmed,
    )  # fmt: skip


def row_line(
    task: str,
    split: Split,
    index: int,
    copy: str,
    prompt: str,
    answer: str,
    tokens: int,
    *,
    template: PromptTemplate | None = None,
    choices: list[str] | None = None,
    fields: dict[str, Any] | None = None,
    trimmed: dict[str, dict[str, Any]] | None = None,
    messages: list[dict[str, str]] | None = None,
) -> str:
    """One JSON line of ``train/dev/test.jsonl``: the one place the row format is written.
    A row without a template is English text, whose ``<dna>`` is not markup. A conversation
    (English chat data) keeps all its turns in ``messages``; its ``prompt`` and ``answer`` are
    then its last user turn and the answer to it."""
    record = {
        "task": task, "split": split, "index": index, "copy": copy,
        "template_id": template.id if template else None,
        "template_version": template.version if template else None,
        "prompt": prompt, "answer": answer, "choices": choices,
        "markup": template is not None, "fields": fields or {}, "tokens": tokens,
        "trimmed": trimmed, "messages": messages,
    }  # fmt: skip
    return json.dumps(record, ensure_ascii=False) + "\n"
