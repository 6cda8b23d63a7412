"""Parsing FASTA and FASTQ files (plain or gzip) into normalised fragments of each record.

The parser streams line by line, so a 250 Mbp chromosome is never held whole in memory. Lines
are read as bytes and normalised with the policy's translate table
(:func:`llamagene.sequence_letters.translate_table`); the format is detected from the first
non-blank character. :func:`iter_raw` yields each record's pieces as bytes, with long N runs
(assembly gaps) skipped and marked; :func:`iter_fragments` yields them as :class:`Fragment`.
Malformed input raises :class:`~llamagene.sequence_files.SequenceFormatError` naming the file,
line, record and what to fix.
"""

from __future__ import annotations

import itertools
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from llamagene.sequence_files import SequenceFormatError, gzip_error, open_binary
from llamagene.sequence_letters import (
    BAD,
    WS,
    SequencePolicy,
    bad_char_reason,
    column,
    translate_table,
)

_OTHER_FORMATS = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
                  b"BAM\x01": "BAM", b"PK\x03\x04": "zip"}  # fmt: skip
#: What :func:`iter_raw` yields: record_id, line, text, record_start, gap_before.
Raw = tuple[str, int, bytes, bool, bool]


@dataclass(frozen=True, slots=True)
class Fragment:
    """A normalised, never empty piece of one record's sequence, from one input line (or less).

    ``line`` is where its text starts; ``record_start`` marks a record's first fragment and
    ``gap_before`` a fragment that follows a skipped run of N.
    """

    record_id: str
    line: int
    text: str
    record_start: bool
    gap_before: bool = False


@dataclass
class SequenceStats:
    """Counters filled in by :func:`iter_fragments` and by :func:`llamagene.sequences.iter_windows`
    and :func:`~llamagene.sequences.scan_stats`.

    ``residues`` counts residues kept (skipped N runs excluded); ``dropped_short`` counts final
    pieces shorter than ``min_len``; ``n_bases_skipped`` is the total length of skipped N runs.
    """

    records: int = 0
    residues: int = 0
    windows: int = 0
    dropped_short: int = 0
    n_runs_skipped: int = 0
    n_bases_skipped: int = 0


def _detect_fastq(path: str, line: int, raw: bytes, policy: SequencePolicy) -> bool:
    """True for FASTQ, False for FASTA; raises for anything else."""
    if raw[:1] in (b">", b"@"):
        return raw[:1] == b"@"
    for magic, name in _OTHER_FORMATS.items():
        if raw.startswith(magic):
            reason = f"not FASTA/FASTQ: this looks like {name} data; convert it to FASTA first"
            raise SequenceFormatError(path, line, None, reason)
    if BAD not in raw.translate(translate_table(policy), WS):
        reason = "sequence text before the first header: each record must start with a '>id' line"
    else:
        found = raw.lstrip()[:1].decode("utf-8", "replace")
        reason = f"not FASTA/FASTQ: expected '>' or '@' at the start of the file, found {found!r}"
    raise SequenceFormatError(path, line, None, reason)


def _star_error(path: str, line: int, rid: str, col: int) -> SequenceFormatError:
    reason = (
        f"stop '*' inside the sequence at column {col}; only one '*' at the very end of a "
        "record is allowed (split multi-protein records into one record each)"
    )
    return SequenceFormatError(path, line, rid, reason)


def _count_gap(stats: SequenceStats | None, length: int) -> None:
    if stats is not None:
        stats.n_runs_skipped += 1
        stats.n_bases_skipped += length


def iter_raw(path: str, policy: SequencePolicy, stats: SequenceStats | None) -> Iterator[Raw]:
    """The parser behind :func:`iter_fragments` and :func:`llamagene.sequences.iter_windows`;
    yields :data:`Raw` tuples with bytes text. ``stats`` gets records and skipped N runs; the
    callers count the residues."""
    table, dna = translate_table(policy), policy.kind == "dna"
    k = policy.n_run_min_length if dna else 0
    n_k, n_run = b"N" * k, re.compile(b"N{%d,}" % max(k, 1))
    rid = ""  # current record id; "" before the first header
    held = b""  # text of a line ending in N, held until the length of that N run is known
    hdr_line = phase = seq_len = pending = held_line = star_line = star_col = lineno = 0
    rec_start = gap = had_seq = fastq = False

    def end_record() -> Iterator[Raw]:
        if pending >= k > 0:
            if held:
                yield rid, held_line, held, rec_start, gap
            _count_gap(stats, pending)
        elif pending:
            yield rid, held_line, held + b"N" * pending, rec_start, gap
        if not had_seq and not fastq:
            reason = "record has no sequence (its header is followed by another header or EOF)"
            raise SequenceFormatError(path, hdr_line, rid, reason)

    f, gz = open_binary(path)
    try:
        with f:
            lines = iter(f)
            for first in lines:
                lineno += 1
                if lineno == 1 and first.startswith(b"\xef\xbb\xbf"):
                    first = first[3:]  # UTF-8 byte order mark
                if first.strip():
                    break
            else:
                raise SequenceFormatError(path, None, None, "no sequences: the file is empty")
            fastq = _detect_fastq(path, lineno, first, policy)
            hdr = first[0]
            lineno -= 1
            for raw in itertools.chain((first,), lines):
                lineno += 1
                if phase >= 2:  # FASTQ '+' and quality lines
                    if phase == 2 and raw[0] != 43:
                        reason = (
                            "expected a '+' line after the sequence (FASTQ records are 4 lines: "
                            "@id, sequence, +, quality; multi-line FASTQ is not supported)"
                        )
                        raise SequenceFormatError(path, lineno, rid, reason)
                    if phase == 3 and len(raw.rstrip()) != seq_len:
                        reason = (
                            f"quality length {len(raw.rstrip())} != sequence length {seq_len}; "
                            "the record is truncated or corrupt"
                        )
                        raise SequenceFormatError(path, lineno, rid, reason)
                    phase = (phase + 1) % 4
                    continue
                if phase == 0 and raw[0] == hdr:
                    if rid:
                        yield from end_record()
                    if raw.find(b"\r", 0, len(raw) - 2) >= 0:
                        reason = "bare CR (old Mac) line endings are not supported; use LF or CRLF"
                        raise SequenceFormatError(path, lineno, None, reason)
                    try:
                        words = raw[1:].decode("utf-8").split(None, 1)
                    except UnicodeDecodeError as exc:
                        reason = f"header is not valid UTF-8 ({exc.reason}); the file must be UTF-8"
                        raise SequenceFormatError(path, lineno, None, reason) from None
                    if not words:
                        reason = f"empty header: {chr(hdr)!r} must be followed by a record id"
                        raise SequenceFormatError(path, lineno, None, reason)
                    rid, hdr_line, rec_start, gap, had_seq = words[0], lineno, True, False, False
                    pending = star_line = 0
                    phase = 1 if fastq else 0
                    if stats is not None:
                        stats.records += 1
                    continue
                s = raw.translate(table, WS)
                if fastq:
                    if phase == 0:
                        if not s:
                            continue
                        reason = "expected '@' at the start of a FASTQ record (4-line records)"
                        raise SequenceFormatError(path, lineno, rid, reason)
                    phase, seq_len = 2, len(s)
                if not s:
                    continue
                if BAD in s:
                    raise SequenceFormatError(path, lineno, rid, bad_char_reason(raw, policy))
                had_seq = True
                if not dna:
                    if star_line:
                        raise _star_error(path, star_line, rid, star_col)
                    if b"*" in s:
                        star_col = column(raw, raw.find(b"*"))
                        if s.find(b"*") != len(s) - 1:
                            raise _star_error(path, lineno, rid, star_col)
                        star_line, s = lineno, s[:-1]
                        if not s:
                            continue
                    yield rid, lineno, s, rec_start, False
                    rec_start = False
                    continue
                if k:
                    if pending:  # a line ended in N: is that run a gap? (its text is held)
                        lead = len(s) - len(s.lstrip(b"N"))
                        if lead == len(s):
                            pending += lead
                            continue
                        if pending + lead >= k:
                            if held:
                                yield rid, held_line, held, rec_start, gap
                                rec_start = False
                            _count_gap(stats, pending + lead)
                            gap, s = True, s[lead:]
                        else:
                            yield rid, held_line, held + b"N" * pending, rec_start, gap
                            rec_start = gap = False
                        pending = 0
                    if n_k in s:
                        pos = 0
                        for m in n_run.finditer(s):
                            if m.end() == len(s):  # a trailing run may go on: held below
                                break
                            if m.start() > pos:
                                yield rid, lineno, s[pos : m.start()], rec_start, gap
                                rec_start = False
                            _count_gap(stats, m.end() - m.start())
                            gap, pos = True, m.end()
                        s = s[pos:]
                    if s[-1] == 78:  # trailing N: the run may go on in the next line
                        held = s.rstrip(b"N")
                        pending, held_line = len(s) - len(held), lineno
                        continue
                yield rid, lineno, s, rec_start, gap
                rec_start = gap = False
            if fastq and phase != 0:
                reason = "truncated FASTQ record: the file ends before its '+' or quality line"
                raise SequenceFormatError(path, lineno, rid, reason)
            if rid:
                yield from end_record()
    except (EOFError, zlib.error, OSError) as exc:
        if not gz:
            raise
        raise gzip_error(path, lineno or None, exc) from None


def iter_fragments(
    path: str | os.PathLike[str], policy: SequencePolicy, stats: SequenceStats | None = None
) -> Iterator[Fragment]:
    """Stream normalised fragments of a FASTA or FASTQ file (plain or gzip).

    The format is detected from the first non-blank character (``>`` or ``@``); FASTQ must have
    4-line records. Fragments are per input line or finer, so memory stays O(line length). Long
    N runs (DNA) are skipped and the next fragment has ``gap_before=True``. Any malformed input
    raises :class:`SequenceFormatError` naming the file, line, record and what to fix.
    """
    p = os.fspath(path)
    for rid, line, text, start, gap in iter_raw(p, policy, stats):
        if stats is not None:
            stats.residues += len(text)
        yield Fragment(rid, line, text.decode("ascii"), start, gap)
