"""Exact token counts of instruction rows, and trimming a sequence to a token budget fast.

:class:`TokenCounter` counts a row as fine-tuning sees it, in the prompt format
(:mod:`llamagene.prompt_format`): BOS, the prompt and the cue, the answer, EOS, sequence markup
mapped into the merged tokenizer's alphabets first. ``build_sft`` writes the count into every
row and ``llamagene templates preview`` prints the same count; a test checks it against
:meth:`PromptFormat.encode <llamagene.prompt_format.PromptFormat.encode>` on every demo row.

It counts by parts, exactly: no merged piece mixes a sequence alphabet with text (see
:mod:`llamagene.alphabets`), so BPE never merges across the edge of a ``<dna>``/``<protein>``
span and a text's token count is the sum of its parts' counts. Text parts (mostly the templates'
fixed wording) are counted once and cached; sequences go through SentencePiece on the merged
``tokenizer.model``, twice as fast as the fast tokenizer on long sequences. The parts rule is
checked against whole-text encoding on a sample of rows, and the counter falls back to
whole-text counting if it ever disagrees. English instruction rows are plain text (no markup is
read in them) and are counted whole.

:func:`fit_window` trims a too-long sequence to a token budget without encoding it again. A
BPE tokenization never merges across the boundary between two of its pieces, so a window that
starts and ends at piece boundaries of the whole sequence's encoding is encoded as exactly the
pieces between (checked on a sample of windows, with a fallback to encoding each window if it
ever disagrees). The window is placed by the task's :class:`~llamagene.tasks.Signal` and found
by a binary search over its length using the pieces' offsets: one encoding per row in all,
where the old search re-rendered and re-counted the row eight to ten times (1.6 ms a row).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

import numpy as np

from llamagene.alphabets import SequenceKind, encode_markup, split_markup, to_model_text
from llamagene.prompt_format import CUE, Message, PromptFormat
from llamagene.tasks import Signal

log = logging.getLogger("llamagene")

#: Tokens a row has beyond its prompt and answer: BOS and EOS.
SPECIAL_TOKENS = 2
#: A row's text tokens (BOS and EOS included) and its sequences, in order, not yet encoded.
RowParts = tuple[int, list[tuple[SequenceKind, str]]]


class TokenCounter:
    """Token counts under a merged tokenizer folder (``merge_vocab``'s ``tokenizer/``)."""

    #: A private-use character that is one token and merges with no text (a DNA "A").
    _SENTINEL = "\ue000"
    #: Remembered sequence counts are dropped beyond this many.
    _KNOWN_LIMIT = 200_000

    def __init__(self, tokenizer_dir: Path) -> None:
        import sentencepiece as spm

        self.format = PromptFormat.from_dir(tokenizer_dir)
        self.fast = self.format.tokenizer
        self.slow = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
        self._text: dict[tuple[str, bool], int] = {}
        self._known: dict[tuple[SequenceKind, str], int] = {}
        self._ids: dict[tuple[SequenceKind, str], list[int]] = {}
        self._thirds = np.array(  # a piece's length in thirds of a letter (a byte piece: one)
            [
                1 if self.slow.is_byte(i) else 3 * len(self.slow.id_to_piece(i))
                for i in range(self.slow.get_piece_size())
            ],
            dtype=np.int64,
        )
        self._letters = [int(t) // 3 if t % 3 == 0 else 0 for t in self._thirds]  # 0: a byte
        self._seen: dict[SequenceKind, list[int]] = {"dna": [0, 0], "protein": [0, 0]}
        self._windows_checked = 0
        self.aligned_windows = True
        self._calls = 0
        self.by_parts = True

    def count(
        self, pairs: Sequence[tuple[str, str]], parts: Sequence[RowParts] | None = None
    ) -> list[int]:
        """Tokens of each (prompt, answer) row with sequence markup, in the prompt format.
        ``parts`` (from :meth:`text_parts` for these rows) saves splitting them again."""
        if not self.by_parts:
            return self._count_whole(pairs)
        parts = parts if parts is not None else self._split(pairs)
        seq_counts = iter(self.sequence_tokens([s for _, seqs in parts for s in seqs]))
        counts = [text + sum(next(seq_counts) for _ in seqs) for text, seqs in parts]
        if self._calls % 25 == 0:  # the parts rule, checked on a sample against whole texts
            sample = list(pairs[:32])
            if counts[: len(sample)] != self._count_whole(sample):
                log.warning("build_sft: counting by parts disagrees; counting whole texts")
                self.by_parts = False
                counts = self._count_whole(pairs)
        self._calls += 1
        return counts

    def _count_whole(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        whole = self._whole([t for pair in pairs for t in _texts(*pair)])
        return [whole[2 * i] + whole[2 * i + 1] + SPECIAL_TOKENS for i in range(len(pairs))]

    def count_conversations(
        self, conversations: Sequence[Sequence[Message]], markup: bool
    ) -> list[int]:
        """Tokens of whole conversations in the prompt format (English rows: ``markup=False``,
        no markup is read)."""
        encoded = self.format.encode_many(conversations, [markup] * len(conversations))
        return [len(e) for e in encoded]

    def sequence_tokens(self, sequences: Sequence[tuple[SequenceKind, str]]) -> list[int]:
        """Tokens each sequence takes inside markup (its mapped letters, without the lone
        ``▁`` SentencePiece puts first). Sequences are encoded in one batch and remembered
        until :meth:`forget`, so a row counted again costs no second encoding."""
        if len(self._known) > self._KNOWN_LIMIT:
            self.forget()
        missing = [item for item in dict.fromkeys(sequences) if item not in self._known]
        if missing:
            mapped = [to_model_text(seq, kind) for kind, seq in missing]
            for (kind, seq), ids in zip(missing, self.slow.encode(mapped), strict=True):
                self._ids[kind, seq] = ids[1:]
                self._known[kind, seq] = len(ids) - 1
                self._seen[kind][0] += len(seq)
                self._seen[kind][1] += len(ids) - 1
        return [self._known[item] for item in sequences]

    def letters_per_token(self, kind: SequenceKind) -> float | None:
        """Letters per token of ``kind`` over everything encoded so far (None before 20,000
        letters): the guess that sizes a region to encode instead of a whole long sequence."""
        letters, tokens = self._seen[kind]
        return letters / tokens if letters >= 20_000 and tokens else None

    def text_parts(self, pairs: Sequence[tuple[str, str]]) -> list[RowParts] | None:
        """Per (prompt, answer) row: the tokens of everything but its sequences (BOS and EOS
        included), and the sequences; None when counting by parts is off."""
        return self._split(pairs) if self.by_parts else None

    def _split(self, pairs: Sequence[tuple[str, str]]) -> list[RowParts]:
        out = []
        for prompt, answer in pairs:
            tokens, sequences = SPECIAL_TOKENS, []
            for text in _texts(prompt, answer):
                parts = split_markup(text)
                tokens += sum(self._text_count(t, i == 0) for i, t in enumerate(parts.texts))
                sequences += parts.sequences
            out.append((tokens, sequences))
        return out

    def pieces(self, kind: SequenceKind, sequence: str, start: int = 0, end: int = -1) -> Pieces:
        """Where windows of ``sequence`` may be cut (see :class:`Pieces`); with ``start`` and
        ``end``, windows of that region only, from the region's own encoding."""
        end = len(sequence) if end < 0 else end
        item = (kind, sequence[start:end] if (start, end) != (0, len(sequence)) else sequence)
        if item not in self._ids:
            self._known.pop(item, None)
            self.sequence_tokens([item])
        ids = self._ids[item]
        letters = [self._letters[i] for i in ids]
        if 0 not in letters:  # every piece is whole letters: every boundary is usable
            return Pieces(list(accumulate(letters, initial=start)), list(range(len(ids) + 1)))
        ends = np.cumsum(self._thirds[np.asarray(ids, dtype=np.int64)])
        whole = np.flatnonzero(ends % 3 == 0)  # byte pieces: only between whole letters
        offsets = [start, *(start + ends[whole] // 3).tolist()]
        return Pieces(offsets, [0, *(whole + 1).tolist()])

    def remember(self, kind: SequenceKind, window: str, tokens: int) -> None:
        """Record a window's count from :func:`fit_window`, so counting its row encodes nothing;
        the first windows and one in 1,000 are encoded anyway to check that the count holds
        (if one ever differs, every window is encoded from then on)."""
        item = (kind, window)
        self._windows_checked += 1
        sample = self._windows_checked <= 64 or self._windows_checked % 1000 == 0
        if self.aligned_windows and not sample:
            self._known[item] = tokens
            return
        self._known.pop(item, None)
        (encoded,) = self.sequence_tokens([item])  # encoded for real, and remembered
        if self.aligned_windows and encoded != tokens:
            log.warning("build_sft: a cut window counts %d tokens, not %d", encoded, tokens)
            self.aligned_windows = False

    def forget(self) -> None:
        """Drop the remembered sequences (call it between batches of rows)."""
        self._known.clear()
        self._ids.clear()

    def _whole(self, texts: Sequence[str]) -> list[int]:
        encoded = self.fast.encode_batch_fast(
            [encode_markup(t) for t in texts], add_special_tokens=False
        )
        return [len(e) for e in encoded]

    def _text_count(self, text: str, at_start: bool) -> int:
        key = (text, at_start)
        if key not in self._text:
            if at_start:
                n = len(self.fast.encode(text, add_special_tokens=False)) if text else 0
            else:  # after a sequence: no dummy prefix; the sentinel stands in for the sequence
                n = len(self.fast.encode(self._SENTINEL + text, add_special_tokens=False)) - 2
            self._text[key] = n
        return self._text[key]


def _texts(prompt: str, answer: str) -> tuple[str, str]:
    """The two texts the prompt format encodes for a single-turn row."""
    return prompt.strip() + CUE, answer.strip()


@dataclass(frozen=True)
class Pieces:
    """A sequence's tokens and where a window may start or end so that its tokens are exactly
    the pieces between: at piece boundaries (and never inside the three byte pieces that stand
    for one letter outside the vocabulary, such as N)."""

    offsets: list[int]
    """Letter offsets of the usable boundaries, ascending, from 0 to the sequence's length."""
    before: list[int]
    """Tokens before each boundary."""

    @property
    def tokens(self) -> int:
        return self.before[-1]

    def span(self, start: int, end: int) -> tuple[int, int, int]:
        """The widest boundary-aligned span inside ``[start, end)``: (start, end, tokens)."""
        i = bisect.bisect_left(self.offsets, start)
        j = bisect.bisect_right(self.offsets, end) - 1
        if j <= i:
            return start, start, 0
        return self.offsets[i], self.offsets[j], self.before[j] - self.before[i]


@dataclass(frozen=True)
class Fit:
    """A window that fits: ``[start, end)`` of the sequence, and its exact token count."""

    start: int
    end: int
    tokens: int


def fit_window(
    pieces: Pieces, length: int, budget: int, signal: Signal, min_chars: int
) -> Fit | None:
    """The longest window the signal places that fits ``budget`` tokens, cut at piece
    boundaries so its count is exact without encoding it again; None if fewer than
    ``min_chars`` letters would fit, or the signal is ``whole``.

    A window grows monotonically with its length under every signal rule, so its token count
    does too, and a binary search over the length finds the longest that fits.
    """
    if signal.keep == "whole" or budget <= 0:
        return None
    low, high, best = min_chars, length - 1, None
    while low <= high:
        kept = (low + high) // 2
        start, end, tokens = pieces.span(*signal.window(length, kept))
        if tokens <= budget:
            if end - start >= min_chars:
                best = Fit(start, end, tokens)
            low = kept + 1
        else:
            high = kept - 1
    return best
