"""Choosing what a BPE vocabulary trains on: a seeded, bounded sample of sequence windows.

:func:`sample_windows` streams the inputs once through :func:`llamagene.sequences.iter_windows`
(windows of ``sentence_length``; records and N gaps always end one). Each window draws a number
from a generator seeded with ``seed`` and the kind: a ``heldout_fraction`` of windows is kept
out for measuring (at most ``max_heldout_chars``), and from the rest a uniform sample of at most
``max_train_chars`` characters is kept (the windows with the smallest draws, in a heap), so
memory is bounded by the budget, not by the genome, and the same inputs and seed give the same
sentences. On small inputs the held-out set is topped up to ``min_heldout_windows`` from the
windows last in line for training (at most a tenth of them). The stage ``train_bpe``
(:mod:`llamagene.stages.train_bpe`) trains on the result.
"""

from __future__ import annotations

import heapq
import random
from pathlib import Path

from llamagene.alphabets import SequenceKind
from llamagene.bpe_checks import DNA_LIKE_LETTERS
from llamagene.errors import StageError
from llamagene.sequences import SequenceFormatError, SequencePolicy, SequenceStats, iter_windows


def sample_windows(
    kind: SequenceKind,
    paths: list[Path],
    policy: SequencePolicy,
    sentence_length: int,
    min_sentence_length: int,
    *,
    seed: int,
    max_train_chars: int,
    heldout_fraction: float,
    min_heldout_windows: int,
    max_heldout_chars: int,
    seq_stats: SequenceStats,
    unit: str,
) -> tuple[list[str], list[str], int, dict[str, tuple[int, int]]]:
    """Stream the windows once: ``(training sentences in input order, held out, chars read,
    per protein file: (residues in A/C/G/T/N/U, residues))``.

    ``seq_stats`` gets the reader's counts; ``unit`` names the progress bar's unit. Bad input,
    and inputs that leave nothing to train on, raise :class:`~llamagene.errors.StageError`."""
    from tqdm import tqdm

    letters: dict[str, tuple[int, int]] = {}
    rng = random.Random(f"{seed}:{kind}")
    # max-heap (by negated draw) of the kept training windows: (-draw, order, text)
    kept: list[tuple[float, int, str]] = []
    heldout: list[str] = []
    kept_chars = heldout_chars = chars_read = 0
    with tqdm(desc=f"train_bpe: reading {kind}", unit=unit, unit_scale=True, disable=None) as bar:
        try:
            windows = iter_windows(paths, policy, sentence_length, min_sentence_length, seq_stats)
            for order, window in enumerate(windows):
                text = window.text
                chars_read += len(text)
                bar.update(len(text))
                if kind == "protein":
                    dna_like, total = letters.get(window.path, (0, 0))
                    dna_like += sum(map(text.count, DNA_LIKE_LETTERS))
                    letters[window.path] = (dna_like, total + len(text))
                draw = rng.random()
                if draw < heldout_fraction:
                    if heldout_chars + len(text) <= max_heldout_chars:
                        heldout.append(text)
                        heldout_chars += len(text)
                    continue
                heapq.heappush(kept, (-draw, order, text))
                kept_chars += len(text)
                while kept_chars > max_train_chars and len(kept) > 1:
                    kept_chars -= len(heapq.heappop(kept)[2])
        except SequenceFormatError as err:
            raise StageError(str(err)) from None
    # Small inputs: top the held-out set up with the windows last in line for training.
    if heldout_fraction > 0:
        movable = min(min_heldout_windows - len(heldout), len(kept) // 10)
        for _ in range(max(movable, 0)):
            text = kept[0][2]
            if heldout_chars + len(text) > max_heldout_chars:
                break
            heapq.heappop(kept)
            heldout.append(text)
            heldout_chars += len(text)
    if not kept:
        raise StageError(f"no {kind} sequence to train on in {', '.join(map(str, paths))}")
    sentences = [text for _, _, text in sorted(kept, key=lambda item: item[1])]
    return sentences, heldout, chars_read, letters
