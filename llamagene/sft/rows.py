"""One task split -> instruction rows: pick rows, drop leaks, render, count, trim or refuse.

:class:`RowBuilder` turns the rows of one task's split into JSON lines, in this order:

1. **pick**: training rows are subsampled or repeated by the recipe's ``weight`` (each repeat
   draws a fresh template), dev and test rows are capped by ``max_eval_examples``; strand-
   symmetric training rows may be joined by their reverse complement;
2. **leaks**: a train or dev row whose sequence is related to a test sequence of any task
   (:mod:`llamagene.sft.leaks`: equal, reverse complement, contained, containing) is dropped and
   counted by kind; reverse-complement copies are checked like the rest. Test rows are never
   dropped, changed or reordered;
3. **render**: each row gets one template, drawn by weight from a generator seeded by (seed,
   task, split, row, copy); with ``eval_templates: all``, dev and test rows are rendered through
   every template of their task;
4. **length**: counted as fine-tuning sees it (:class:`~llamagene.sft.lengths.TokenCounter`). A
   row over ``max_tokens`` follows ``overflow`` (train) or ``eval_overflow`` (dev, test: by
   default the build stops, naming the task, the row and the limit). Trimming shortens the
   prompt's longest sequence to a window placed by the task's declared signal, records the
   original length and the span kept in the row's ``trimmed``, and never touches the answer.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llamagene.errors import StageError
from llamagene.sft.leaks import LEAK_KINDS, LeakIndex, LeakKind
from llamagene.sft.lengths import FitRequest, TokenCounter, fit_windows
from llamagene.sft.recipe import LengthPolicy, TaskEntry
from llamagene.tasks import Example, Signal, Split, Task, TaskInfo
from llamagene.templates import PromptTemplate, Rendered, TemplateError, answer_fields, render

#: Rows rendered and counted together (one SentencePiece batch).
BATCH_ROWS = 512
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
        for row in rows:
            rng = random.Random(f"{self.seed}/{info.id}/{split}/{row.example.index}/{row.tag}")
            row.template = rng.choices(templates, weights=[t.weight for t in templates])[0]
        return rows

    def _render(self, row: _Row) -> Rendered:
        assert row.template is not None
        try:
            return render(row.template, row.fields, where=row.example.where)
        except TemplateError as err:
            raise StageError(str(err)) from None

    def _count(self, rows: Sequence[_Row]) -> None:
        pairs = [(r.out.prompt, r.out.answer) for r in rows if r.out is not None]
        for row, n in zip(rows, self.counter.count(pairs), strict=True):
            row.tokens = n

    def _trim(self, rows: list[_Row], info: TaskInfo, signal: Signal) -> None:
        """Shorten each row's longest prompt sequence until the row fits; a row that cannot
        fit is left over the limit (the caller drops or refuses it)."""
        originals = [dict(r.fields) for r in rows]
        names = {i: _trimmable(r, info, signal) for i, r in enumerate(rows)}
        todo = {i: name for i, name in names.items() if name is not None}
        kinds = {i: info.sequence_fields[name] for i, name in todo.items()}
        whole = [(kinds[i], originals[i][name]) for i, name in todo.items()]
        seq_tokens = dict(zip(todo, self.counter.sequence_tokens(whole), strict=True))
        fixed = {i: rows[i].tokens - seq_tokens[i] for i in todo}  # all but the sequence
        excess = dict.fromkeys(todo, 0)
        for _ in range(TRIM_PASSES):
            min_chars = self.policy.min_sequence_chars
            budgets = {i: self.policy.max_tokens - fixed[i] - excess[i] for i in excess}
            requests = [
                FitRequest(kinds[i], originals[i][todo[i]], seq_tokens[i], budgets[i], signal,
                           min_chars)
                for i in excess
            ]  # fmt: skip
            fitted = []
            for i, window in zip(excess, fit_windows(self.counter, requests), strict=True):
                if window is None:
                    continue
                start, end = window
                sequence = originals[i][todo[i]]
                row = rows[i]
                row.fields = {**originals[i], todo[i]: sequence[start:end]}
                row.out = self._render(row)
                row.trimmed = {todo[i]: {"length": len(sequence), "kept": [start, end]}}
                fitted.append(i)
            self._count([rows[i] for i in fitted])
            over = [i for i in fitted if rows[i].tokens > self.policy.max_tokens]
            # the text around the sequence changed with it ({{ x | length }}): ask for less
            excess = {i: excess[i] + rows[i].tokens - self.policy.max_tokens for i in over}
            if not excess:
                return
        for i in excess:
            rows[i].fields, rows[i].trimmed = originals[i], None


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
    record = {
        "task": task, "split": split, "index": row.example.index, "copy": row.tag,
        "template_id": row.template.id, "template_version": row.template.version,
        "prompt": row.out.prompt, "answer": row.out.answer, "choices": row.out.choices,
        "markup": True, "fields": row.fields, "tokens": row.tokens, "trimmed": row.trimmed,
    }  # fmt: skip
    return json.dumps(record, ensure_ascii=False) + "\n"
