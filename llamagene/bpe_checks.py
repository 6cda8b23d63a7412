"""Checks that BPE inputs can give the vocabulary asked for: its size, and each file's alphabet.

- Size. A BPE merge of a pair seen ``f`` times shortens the training text by ``f`` symbols, so
  ``n`` training characters allow at most ``n / k`` merges of pairs seen at least ``k`` times.
  With ``k =`` :data:`MIN_PAIR_COUNT`, the largest sensible vocabulary is
  :func:`largest_sensible_vocab_size`: ``1 (<unk>) + letters + training characters // 5``.
  :func:`vocab_size_problem_from_files` judges a size from the input files' sizes (before a
  run); :func:`check_vocab_size` judges it exactly from the training sentences (during one).
- Alphabet. A protein input whose residues are at least :data:`DNA_LIKE_FRACTION` A/C/G/T/N/U
  is most likely DNA: :func:`inspect_start` judges a file from its start (before a run),
  :func:`check_protein_alphabet` from the residue counts of a run's reading.

The stage ``train_bpe`` (:mod:`llamagene.stages.train_bpe`) runs them; messages name its keys.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from pathlib import Path

from llamagene.alphabets import LETTERS, SequenceKind
from llamagene.errors import StageError
from llamagene.sequences import (
    SequenceFormatError,
    SequencePolicy,
    SequenceStats,
    decompressed_size_upto,
    iter_fragments,
)

log = logging.getLogger("llamagene")

#: A merge should join a pair seen at least this many times in the training text, so a
#: vocabulary may have at most one merged piece per this many training characters.
MIN_PAIR_COUNT = 5
#: A protein input with at least this share of A/C/G/T/N/U residues looks like DNA (real
#: proteins: about a quarter, 23.7% in the demo's; DNA: all of it, less its IUPAC codes).
DNA_LIKE_FRACTION = 0.9
DNA_LIKE_LETTERS = "ACGTNU"
#: ``validate`` judges a protein input's alphabet from its first this many residues.
ALPHABET_PEEK_RESIDUES = 10_000


def largest_sensible_vocab_size(train_chars: int, letters: int) -> int:
    """``1 (<unk>) + letters + train_chars // MIN_PAIR_COUNT``: a merge of a pair seen ``f``
    times shortens the training text by ``f`` symbols, so ``n`` characters allow at most
    ``n / k`` merges of pairs seen at least ``k`` times."""
    return 1 + letters + train_chars // MIN_PAIR_COUNT


def check_vocab_size(kind: SequenceKind, vocab_size: int, sentences: Iterable[str]) -> None:
    """Refuse a vocabulary size that the training sentences cannot give: smaller than their
    alphabet plus ``<unk>``, or larger than :func:`largest_sensible_vocab_size` of them."""
    alphabet: set[str] = set()
    kept_chars = 0
    for text in sentences:
        alphabet.update(text)
        kept_chars += len(text)
    if vocab_size < len(alphabet) + 1:
        raise StageError(
            f"{kind}_vocab_size {vocab_size} is smaller than the {kind} alphabet seen "
            f"({''.join(sorted(alphabet))}: {len(alphabet)} letters) plus <unk>: "
            f"use at least {len(alphabet) + 1}"
        )
    largest = largest_sensible_vocab_size(kept_chars, len(alphabet))
    if vocab_size > largest:
        raise StageError(
            f"train_bpe.{kind}_vocab_size: {vocab_size} is more than {_amount(kept_chars, kind)} "
            f"of {_KIND_WORD[kind]} can support; the largest sensible size is {largest:,} "
            f"(<unk> + {len(alphabet)} letters + one merged piece per {MIN_PAIR_COUNT} of the "
            f"{kept_chars:,} training {_UNIT_WORD[kind]}, so that each merge joins a pair seen "
            f"at least {MIN_PAIR_COUNT} times): lower it, or give more input"
        )


_KIND_WORD: dict[SequenceKind, str] = {"dna": "DNA", "protein": "protein"}
_UNIT_WORD: dict[SequenceKind, str] = {"dna": "bases", "protein": "residues"}


def _amount(chars: int, kind: SequenceKind) -> str:
    """``0.30 Mbp`` / ``2,800 bp`` (DNA), ``0.62 M residues`` / ``4,466 residues`` (protein)."""
    if chars >= 100_000:
        return f"{chars / 1e6:.2f} Mbp" if kind == "dna" else f"{chars / 1e6:.2f} M residues"
    return f"{chars:,} bp" if kind == "dna" else f"{chars:,} residues"


def vocab_size_problem_from_files(
    kind: SequenceKind,
    paths: list[Path],
    vocab_size: int,
    policy: SequencePolicy,
    max_train_chars: int,
) -> str | None:
    """The size check from the files' sizes, reading no more than the check needs.

    A file's bytes (decompressed) bound its residues from above; only when they are too few are
    the (then small) files parsed, for their residues or a format error, which comes first. The
    alphabet is taken whole, so this never refuses a size that the run's exact check accepts."""
    if not paths:
        return None
    letters = len(LETTERS[kind])
    need = (vocab_size - 1 - letters) * MIN_PAIR_COUNT  # training characters it needs
    if need <= 0:
        return None
    key = f"{kind}_vocab_size: {vocab_size}"
    if max_train_chars < need:
        largest = largest_sensible_vocab_size(max_train_chars, letters)
        return (
            f"{key} is more than max_train_chars ({max_train_chars:,}) can support; the "
            f"largest sensible size is at most {largest:,} (<unk> + {letters} letters + one "
            f"merged piece per {MIN_PAIR_COUNT} training characters): lower it, or raise "
            f"max_train_chars"
        )
    total = 0
    for path in paths:
        try:
            total += decompressed_size_upto(path, need - total)
        except (OSError, EOFError, ValueError):
            return None  # unreadable: the format check says why
        if total >= need:
            return None
    stats = SequenceStats()
    for i, path in enumerate(paths):
        try:
            for _ in iter_fragments(path, policy, stats):
                pass
        except SequenceFormatError as err:
            return f"{kind}_inputs[{i}]: {err}"
        except OSError:
            return None
    largest = largest_sensible_vocab_size(min(stats.residues, max_train_chars), letters)
    return (
        f"{key} is more than {_amount(stats.residues, kind)} of {_KIND_WORD[kind]} can "
        f"support; the largest sensible size is at most {largest:,} (<unk> + {letters} letters "
        f"+ one merged piece per {MIN_PAIR_COUNT} training {_UNIT_WORD[kind]}, so that each "
        f"merge joins a pair seen at least {MIN_PAIR_COUNT} times): lower it, or give more input"
    )


def check_protein_alphabet(
    paths: list[Path], letters: dict[str, tuple[int, int]], strict: bool
) -> None:
    """Warn about (or, if strict, refuse) protein inputs whose residues look like DNA."""
    for i, path in enumerate(paths):
        dna_like, total = letters.get(str(path), (0, 0))
        if total and dna_like >= DNA_LIKE_FRACTION * total:
            message = dna_like_message(path, dna_like, total, strict)
            if strict:
                raise StageError(f"train_bpe.protein_inputs[{i}]: {message}")
            log.warning("train_bpe: protein_inputs[%d]: %s", i, message)


def dna_like_message(path: Path, dna_like: int, total: int, strict: bool) -> str:
    """Why ``path`` looks like DNA, and what to do (``strict``: the check is an error)."""
    action = (
        "set strict_alphabet: false to train on it anyway"
        if strict
        else "strict_alphabet: true makes this an error"
    )
    return (
        f"{path}: {dna_like / total:.1%} of its {total:,} residues read are A/C/G/T/N/U (at "
        f"least {DNA_LIKE_FRACTION:.0%} looks like DNA): if it holds DNA, list it under "
        f"dna_inputs ({action})"
    )


def inspect_start(
    path: Path, policy: SequencePolicy, peek: bool
) -> tuple[str | None, tuple[int, int] | None]:
    """Judge ``path`` from its first sequence line: ``(what is wrong, or None; None, or for
    protein that looks like DNA: (residues in A/C/G/T/N/U, residues))``. With ``peek``, a
    protein file's alphabet is judged from its first ALPHABET_PEEK_RESIDUES residues."""
    if not path.is_file():
        return (f"{path} does not exist" if not path.exists() else f"{path} is not a file"), None
    dna_like = total = 0
    try:
        fragments = iter_fragments(path, policy)
        if policy.kind == "dna" or not peek:
            next(fragments, None)
            return None, None
        for fragment in itertools.islice(fragments, ALPHABET_PEEK_RESIDUES):
            dna_like += sum(map(fragment.text.count, DNA_LIKE_LETTERS))
            total += len(fragment.text)
            if total >= ALPHABET_PEEK_RESIDUES:
                break
    except SequenceFormatError as err:
        return str(err), None
    except OSError as err:
        return f"{path}: {err}", None
    if total and dna_like >= DNA_LIKE_FRACTION * total:
        return None, (dna_like, total)
    return None, None
