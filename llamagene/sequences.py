"""Streaming FASTA/FASTQ reading for DNA and protein, cut into training windows.

Everything streams line by line: a 250 Mbp chromosome is never held whole in memory.
:func:`iter_windows` cuts the records into training "sentences" for SentencePiece and the
pretraining corpus; :func:`scan_stats` counts what it would produce. This module is also the
one import for everything that reads sequences; the work is split by job:

- :mod:`llamagene.sequence_files`: opening plain or gzip files (:func:`open_text`,
  :func:`decompressed_size_upto`) and :class:`SequenceFormatError`;
- :mod:`llamagene.sequence_letters`: :class:`SequencePolicy`, the letters each kind allows and
  how they are normalised (upper case, U->T, IUPAC->N), and :func:`reverse_complement`;
- :mod:`llamagene.sequence_records`: the FASTA/FASTQ parser and :func:`iter_fragments`, the
  normalised pieces themselves.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from llamagene.sequence_files import SequenceFormatError, decompressed_size_upto, open_text
from llamagene.sequence_letters import DEFAULT_PROTEIN_HINT, SequencePolicy, reverse_complement
from llamagene.sequence_records import Fragment, Raw, SequenceStats, iter_fragments, iter_raw

__all__ = [
    "DEFAULT_PROTEIN_HINT",
    "Fragment",
    "SequenceFormatError",
    "SequencePolicy",
    "SequenceStats",
    "Window",
    "decompressed_size_upto",
    "iter_fragments",
    "iter_windows",
    "open_text",
    "reverse_complement",
    "scan_stats",
]

_FLUSH: Raw = ("", 0, b"", True, False)  # ends the last window of a file


@dataclass(frozen=True, slots=True)
class Window:
    """A training sentence: consecutive residues of one record, never spanning an N-run gap."""

    text: str
    path: str
    record_id: str
    line: int


def iter_windows(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    policy: SequencePolicy,
    window_len: int,
    min_len: int = 1,
    stats: SequenceStats | None = None,
) -> Iterator[Window]:
    """Cut every record into consecutive, non-overlapping windows of ``window_len`` residues.

    A window never spans two records or a skipped N run; the last piece of a record or segment
    is emitted if it has at least ``min_len`` residues and dropped otherwise. ``paths`` may also
    be a single path. ``stats``, when given, is updated as windows are produced.
    """
    if window_len < 1:
        raise ValueError(f"window_len must be >= 1, not {window_len}")
    min_len = max(min_len, 1)
    for path in [paths] if isinstance(paths, str | os.PathLike) else paths:
        p = os.fspath(path)
        parts: list[bytes] = []
        buffered = start_line = 0
        rec = ""
        for rid, line, text, record_start, gap in itertools.chain(
            iter_raw(p, policy, stats), [_FLUSH]
        ):
            if (record_start or gap) and buffered:
                if buffered >= min_len:
                    yield _window(parts, p, rec, start_line, stats)
                elif stats is not None:
                    stats.dropped_short += 1
                parts, buffered = [], 0
            n = len(text)
            if stats is not None:
                stats.residues += n
            if not buffered:
                start_line, rec = line, rid
            need = window_len - buffered
            if n < need:
                parts.append(text)
                buffered += n
                continue
            pos = 0
            while n - pos >= need:
                parts.append(text[pos : pos + need])
                yield _window(parts, p, rec, start_line, stats)
                pos, need, parts, start_line, rec = pos + need, window_len, [], line, rid
            parts, buffered = ([text[pos:]] if pos < n else []), n - pos


def _window(parts: list[bytes], path: str, rec: str, line: int, st: SequenceStats | None) -> Window:
    if st is not None:
        st.windows += 1
    return Window(b"".join(parts).decode("ascii"), path, rec, line)


def scan_stats(
    paths: Iterable[str | os.PathLike[str]],
    policy: SequencePolicy,
    window_len: int,
    min_len: int = 1,
) -> SequenceStats:
    """Validate every file and count what :func:`iter_windows` would produce."""
    stats = SequenceStats()
    for _ in iter_windows(paths, policy, window_len, min_len, stats):
        pass
    return stats
