"""Exact token counts of instruction rows, and trimming a sequence to a token budget fast.

:class:`TokenCounter` counts a row as fine-tuning sees it: BOS + prompt + answer + EOS, prompt and
answer encoded separately (so the loss mask is exact), sequence markup mapped into the merged
tokenizer's alphabets first. ``build_sft`` writes the count into every row and ``llamagene
templates preview`` prints the same count.

It counts by parts, exactly: no merged piece mixes a sequence alphabet with text (see
:mod:`llamagene.alphabets`), so BPE never merges across the edge of a ``<dna>``/``<protein>``
span and a text's token count is the sum of its parts' counts. Text parts (mostly the templates'
fixed wording) are counted once and cached; sequences go through SentencePiece on the merged
``tokenizer.model``, twice as fast as the fast tokenizer on long sequences. The parts rule is
checked against whole-text encoding on a sample of rows, and the counter falls back to
whole-text counting if it ever disagrees. English instruction rows are plain text (no markup is
read in them) and are counted whole.

:func:`fit_windows` finds, for many sequences at once, the longest window that fits a token
budget, placed by each task's :class:`~llamagene.tasks.Signal`. A sequence's token count grows
almost linearly with its length (bases per token is nearly constant along a sequence), so a
window length estimated from the whole sequence's ratio is usually within a token or two of the
answer; each round encodes every unsettled window in one SentencePiece batch and corrects the
estimate. A few rounds settle almost every row, where the old binary search re-rendered and
re-counted the row eight to ten times (1.6 ms a row).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llamagene.alphabets import SequenceKind, encode_markup, split_markup, to_model_text
from llamagene.tasks import Signal

log = logging.getLogger("llamagene")

#: Tokens a row has beyond its prompt and answer: BOS and EOS.
SPECIAL_TOKENS = 2
#: Rounds of :func:`fit_windows` before it settles for the best window found.
FIT_ROUNDS = 4


class TokenCounter:
    """Token counts under a merged tokenizer folder (``merge_vocab``'s ``tokenizer/``)."""

    #: A private-use character that is one token and merges with no text (a DNA "A").
    _SENTINEL = "\ue000"

    def __init__(self, tokenizer_dir: Path) -> None:
        import sentencepiece as spm
        from tokenizers import Tokenizer

        self.fast = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.slow = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
        self._text: dict[tuple[str, bool], int] = {}
        self._known: dict[str, int] = {}
        self._calls = 0
        self.by_parts = True

    def count(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens of each (prompt, answer) row with sequence markup: BOS + both + EOS."""
        texts = [t for pair in pairs for t in pair]
        counts = self._by_parts(texts) if self.by_parts else self._whole(texts)
        if self.by_parts and (self._calls == 0 or self._calls % 25 == 0):
            sample = texts[:64]
            if counts[: len(sample)] != self._whole(sample):
                log.warning("build_sft: counting by parts disagrees; counting whole texts")
                self.by_parts = False
                counts = self._whole(texts)
        self._calls += 1
        self._known.clear()
        return [counts[2 * i] + counts[2 * i + 1] + SPECIAL_TOKENS for i in range(len(pairs))]

    def count_plain(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """Tokens of each (prompt, answer) row of plain text (no markup is read)."""
        texts = [t for pair in pairs for t in pair]
        encoded = self.fast.encode_batch_fast(texts, add_special_tokens=False)
        lengths = [len(e) for e in encoded]
        return [lengths[2 * i] + lengths[2 * i + 1] + SPECIAL_TOKENS for i in range(len(pairs))]

    def sequence_tokens(self, sequences: Sequence[tuple[SequenceKind, str]]) -> list[int]:
        """Tokens each sequence takes inside markup (its mapped letters, without the lone
        ``▁`` SentencePiece puts first). Remembered until the next :meth:`count`, which then
        need not encode them again."""
        mapped = [to_model_text(seq, kind) for kind, seq in sequences]
        counts = [len(ids) - 1 for ids in self.slow.encode(mapped)]
        self._known.update(zip(mapped, counts, strict=True))
        return counts

    def _whole(self, texts: Sequence[str]) -> list[int]:
        encoded = self.fast.encode_batch_fast(
            [encode_markup(t) for t in texts], add_special_tokens=False
        )
        return [len(e) for e in encoded]

    def _by_parts(self, texts: Sequence[str]) -> list[int]:
        parts = [split_markup(t) for t in texts]
        mapped = [to_model_text(seq, kind) for p in parts for kind, seq in p.sequences]
        unknown = [m for m in mapped if m not in self._known]
        fresh = dict(zip(unknown, (len(ids) - 1 for ids in self.slow.encode(unknown)), strict=True))
        seq_counts = iter(self._known[m] if m in self._known else fresh[m] for m in mapped)
        counts = []
        for p in parts:
            n = sum(self._text_count(text, i == 0) for i, text in enumerate(p.texts))
            n += sum(next(seq_counts) for _ in p.sequences)
            counts.append(n)
        return counts

    def _text_count(self, text: str, at_start: bool) -> int:
        key = (text, at_start)
        if key not in self._text:
            if at_start:
                n = len(self.fast.encode(text, add_special_tokens=False)) if text else 0
            else:  # after a sequence: no dummy prefix; the sentinel stands in for the sequence
                n = len(self.fast.encode(self._SENTINEL + text, add_special_tokens=False)) - 2
            self._text[key] = n
        return self._text[key]


@dataclass(frozen=True)
class FitRequest:
    """Fit ``sequence`` (of ``kind``) into ``budget`` tokens, keeping what ``signal`` keeps and
    at least ``min_chars`` residues. ``tokens`` is the whole sequence's count (already known)."""

    kind: SequenceKind
    sequence: str
    tokens: int
    budget: int
    signal: Signal
    min_chars: int


def fit_windows(
    counter: TokenCounter, requests: Sequence[FitRequest]
) -> list[tuple[int, int] | None]:
    """For each request, the ``[start, end)`` of a near-longest window that fits its budget,
    placed by its signal; None where no window of ``min_chars`` can fit (or the signal is
    ``whole``). All unsettled windows of a round are encoded in one batch.

    Round one guesses a length from the whole sequence's bases per token; later rounds correct
    it with the probed window's own ratio and, once a fitting and a too-long length bracket the
    answer, halve the bracket. A window still unsettled after :data:`FIT_ROUNDS` is returned as
    the best guess: the caller counts the row it makes anyway and asks again if it is over.
    """
    best: list[int | None] = [None] * len(requests)
    too_long = [len(r.sequence) for r in requests]  # the whole sequence is over its budget
    trial: dict[int, int] = {}
    for i, r in enumerate(requests):
        if r.signal.keep != "whole" and r.budget > 0 and len(r.sequence) > r.min_chars:
            ratio = len(r.sequence) / max(r.tokens, 1)
            trial[i] = max(r.min_chars, min(too_long[i] - 1, math.floor(r.budget * ratio)))
    for _ in range(FIT_ROUNDS):
        if not trial:
            break
        windows = {i: _window(requests[i], n) for i, n in trial.items()}
        pieces = [(requests[i].kind, requests[i].sequence[a:b]) for i, (a, b) in windows.items()]
        counts = dict(zip(windows, counter.sequence_tokens(pieces), strict=True))
        following: dict[int, int] = {}
        for i, n in trial.items():
            r, c = requests[i], counts[i]
            ratio = n / max(c, 1)  # this window's own bases per token
            if c <= r.budget:
                best[i] = n
                nxt = n + max(math.floor((r.budget - c) * ratio), 1)
                if c == r.budget or nxt >= too_long[i]:
                    nxt = (n + too_long[i]) // 2
            else:
                too_long[i] = n
                low = best[i]
                nxt = n - max(math.ceil((c - r.budget) * ratio), 1) if low is None else low
                nxt = (low + n) // 2 if low is not None else nxt
            if max(best[i] or 0, r.min_chars - 1) < nxt < too_long[i]:
                following[i] = nxt
        trial = following
    for i, n in trial.items():  # unsettled: the latest guess (counted with its row)
        best[i] = best[i] or n
    return [None if n is None else _window(r, n) for n, r in zip(best, requests, strict=True)]


def _window(request: FitRequest, kept: int) -> tuple[int, int]:
    return request.signal.window(len(request.sequence), kept)
