"""Streaming FASTA/FASTQ reading for DNA and protein, with validation and normalisation.

Everything streams line by line: a 250 Mbp chromosome is never held whole in memory. Lines are
read as bytes and normalised with one precompiled ``bytes.translate`` table per policy (upper
case, U->T, IUPAC->N, whitespace removed, anything invalid mapped to a NUL sentinel), so the hot
path has no per-character Python loop. :func:`iter_windows` cuts the stream into training
"sentences" for SentencePiece; :func:`iter_fragments` exposes the normalised pieces themselves.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, BinaryIO, Literal, TextIO, cast

from llamagene.alphabets import SequenceKind
from llamagene.errors import LlamageneError

_WS = b" \t\r\n\v\f"
_BAD = b"\x00"  # sentinel that the translate tables give every invalid byte
_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_FORMATS = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd",
                  b"BAM\x01": "BAM", b"PK\x03\x04": "zip"}  # fmt: skip
_IUPAC = "RYKMSWBDHV"
_PROTEIN_STD = "ACDEFGHIKLMNPQRSTVWYX"
_PROTEIN_RARE = "BZJUO"
_RC = str.maketrans("ACGTUNRYKMSWBDHVacgtunrykmswbdhv", "TGCAANYRMKSWVHDBtgcaanyrmkswvhdb")
_RC_VALID = dict.fromkeys(map(ord, "ACGTUNRYKMSWBDHVacgtunrykmswbdhv"))
_Raw = tuple[str, int, bytes, bool, bool]  # record_id, line, text, record_start, gap_before
_FLUSH: _Raw = ("", 0, b"", True, False)  # ends the last window of a file
#: Where a DNA file that holds protein is told to go, when the caller does not say.
DEFAULT_PROTEIN_HINT = (
    "read it as protein (train_bpe: list it under protein_inputs; "
    "data recipe: set kind: protein for its source)"
)


class SequenceFormatError(LlamageneError, ValueError):
    """Bad sequence input; ``str(err)`` is one line: ``path:line: record 'id': reason``.

    Attributes: ``path``, ``line`` (1-based, or None), ``record`` (record id, or None) and
    ``reason`` (what is wrong and, where possible, how to fix it). Parts that are None are omitted
    from the message.
    """

    def __init__(self, path: str, line: int | None, record: str | None, reason: str) -> None:
        self.path, self.line, self.record, self.reason = path, line, record, reason
        where = path if line is None else f"{path}:{line}"
        rec = "" if record is None else f" record '{record}':"
        super().__init__(f"{where}:{rec} {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.line, self.record, self.reason))


@dataclass(frozen=True)
class SequencePolicy:
    """How sequences of one kind are validated and normalised.

    ``iupac`` (DNA): ambiguity codes RYKMSWBDHV become N (``"to_n"``) or are rejected; U always
    becomes T. ``n_run_min_length`` (DNA): a run of at least this many N (an assembly gap) is
    skipped and splits the sequence; shorter runs are kept; 0 keeps every N.
    ``protein_ambiguous``: B Z J U O are kept, mapped to X or rejected; the 20 standard residues
    and X are always accepted, and one ``*`` at the very end of a record is removed.
    ``protein_hint`` (DNA): how the caller's config declares a file as protein, added to the
    error for a letter that DNA lacks (``list it under protein_inputs``); the default names the
    keys of both configs that read sequences.
    """

    kind: SequenceKind
    iupac: Literal["to_n", "error"] = "to_n"
    n_run_min_length: int = 10
    protein_ambiguous: Literal["keep", "to_x", "error"] = "keep"
    protein_hint: str = DEFAULT_PROTEIN_HINT

    def __post_init__(self) -> None:
        if self.kind not in ("dna", "protein"):
            raise ValueError(f"kind must be 'dna' or 'protein', not {self.kind!r}")
        if self.iupac not in ("to_n", "error"):
            raise ValueError(f"iupac must be 'to_n' or 'error', not {self.iupac!r}")
        if self.protein_ambiguous not in ("keep", "to_x", "error"):
            raise ValueError(f"bad protein_ambiguous: {self.protein_ambiguous!r}")
        if self.n_run_min_length < 0:
            raise ValueError(f"n_run_min_length must be >= 0, not {self.n_run_min_length}")


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


@dataclass(frozen=True, slots=True)
class Window:
    """A training sentence: consecutive residues of one record, never spanning an N-run gap."""

    text: str
    path: str
    record_id: str
    line: int


@dataclass
class SequenceStats:
    """Counters filled in by :func:`iter_windows` / :func:`iter_fragments` / :func:`scan_stats`.

    ``residues`` counts residues kept (skipped N runs excluded); ``dropped_short`` counts final
    pieces shorter than ``min_len``; ``n_bases_skipped`` is the total length of skipped N runs.
    """

    records: int = 0
    residues: int = 0
    windows: int = 0
    dropped_short: int = 0
    n_runs_skipped: int = 0
    n_bases_skipped: int = 0


class _GuardedText(io.TextIOWrapper):
    """UTF-8 text whose decode/gzip errors surface as :class:`SequenceFormatError`."""

    def __init__(self, buffer: BinaryIO, path: str, gz: bool) -> None:
        super().__init__(buffer, encoding="utf-8", newline=None)
        self._path, self._gz, self._lines = path, gz, 0

    def _guard(self, read: Callable[[], str]) -> str:
        try:
            return read()
        except UnicodeDecodeError as exc:
            raise SequenceFormatError(self._path, None, None, f"not valid UTF-8 ({exc})") from exc
        except (EOFError, zlib.error, OSError) as exc:
            if not self._gz:
                raise
            raise _gzip_error(self._path, self._lines or None, exc) from exc

    def readline(self, size: int = -1, /) -> str:  # type: ignore[override]
        line = self._guard(lambda: io.TextIOWrapper.readline(self, size))
        self._lines += line.endswith("\n")
        return line

    def read(self, size: int | None = -1, /) -> str:
        return self._guard(lambda: io.TextIOWrapper.read(self, size))


def _gzip_error(path: str, line: int | None, exc: BaseException) -> SequenceFormatError:
    reason = f"truncated or corrupt gzip ({exc}); re-download the file or check it with gzip -t"
    return SequenceFormatError(path, line, None, reason)


def _open_binary(path: str) -> tuple[BinaryIO, bool]:
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    if gz:
        return cast(BinaryIO, gzip.open(path, "rb")), True
    return open(path, "rb", buffering=1 << 20), False


def decompressed_size_upto(path: str | os.PathLike[str], limit: int) -> int:
    """The size of a file's content (after gunzip), counting no further than ``limit`` bytes.

    A plain file's size comes from the file system; a gzip file is read only until ``limit``
    bytes came out, so a genome is never read whole to learn that it holds enough.
    """
    p = os.fspath(path)
    f, gz = _open_binary(p)
    with f:
        if not gz:
            return min(os.fstat(f.fileno()).st_size, max(limit, 0))
        total = 0
        while total < limit:
            chunk = f.read(min(1 << 20, limit - total))
            if not chunk:
                break
            total += len(chunk)
        return total


def open_text(path: str | os.PathLike[str]) -> TextIO:
    """Open a plain or gzip file (detected by its magic bytes) as UTF-8 text.

    Universal newlines are on, so CRLF files read like LF files. Invalid UTF-8 and truncated or
    corrupt gzip data raise :class:`SequenceFormatError` naming the file while reading.
    """
    p = os.fspath(path)
    f, gz = _open_binary(p)
    return _GuardedText(f, p, gz)


@cache
def _table(policy: SequencePolicy) -> bytes:
    """256-byte translate table: valid letters to upper case, whitespace kept, else NUL."""
    t = bytearray(256)
    for c in _WS:
        t[c] = c

    def put(letters: str, to: str | None) -> None:
        for ch in letters:
            t[ord(ch)] = t[ord(ch.lower())] = ord(to or ch) if to != "" else 0

    if policy.kind == "dna":
        put("ACGTN", None)
        put("U", "T")
        put(_IUPAC, "N" if policy.iupac == "to_n" else "")
    else:
        put(_PROTEIN_STD, None)
        put(_PROTEIN_RARE, {"keep": None, "to_x": "X", "error": ""}[policy.protein_ambiguous])
        t[ord("*")] = ord("*")
    return bytes(t)


def _column(raw: bytes, i: int) -> int:
    return len(raw[:i].decode("utf-8", "replace")) + 1


def _bad_char(raw: bytes, policy: SequencePolicy) -> str:
    """The reason for the first invalid character of ``raw`` (slow path, errors only)."""
    i = raw.translate(_table(policy)).find(_BAD)
    ch = raw[i:].decode("utf-8", "replace")[:1]
    col = _column(raw, i)
    if ch == "\ufffd" and raw[i] >= 0x80:
        return f"invalid UTF-8 byte 0x{raw[i]:02x} at column {col}; the file must be UTF-8 text"
    what, up = f"invalid character {ch!r} at column {col}", ch.upper()
    if ch in "-.":
        hint = "gap characters are not allowed (alignments are not supported); remove gaps first"
    elif policy.kind == "dna" and up in _IUPAC:
        hint = "IUPAC ambiguity code; set iupac: to_n to map ambiguity codes to N"
    elif policy.kind == "protein" and up in _PROTEIN_RARE:
        hint = "ambiguous/rare residue; set protein_ambiguous: keep (or to_x)"
    elif policy.kind == "dna":
        hint = "DNA allows ACGTN, U and IUPAC codes (any case)"
        if up.isascii() and up.isalpha():
            hint += f"; if this file holds protein, {policy.protein_hint}"
    else:
        hint = "protein allows the 20 standard residues, X, BZJUO and one final '*'"
    return f"{what}; {hint}"


def _detect_fastq(path: str, line: int, raw: bytes, policy: SequencePolicy) -> bool:
    """True for FASTQ, False for FASTA; raises for anything else."""
    if raw[:1] in (b">", b"@"):
        return raw[:1] == b"@"
    for magic, name in _OTHER_FORMATS.items():
        if raw.startswith(magic):
            reason = f"not FASTA/FASTQ: this looks like {name} data; convert it to FASTA first"
            raise SequenceFormatError(path, line, None, reason)
    if _BAD not in raw.translate(_table(policy), _WS):
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


def _iter_raw(path: str, policy: SequencePolicy, stats: SequenceStats | None) -> Iterator[_Raw]:
    """The parser behind :func:`iter_fragments`; yields tuples with bytes text."""
    table, dna = _table(policy), policy.kind == "dna"
    k = policy.n_run_min_length if dna else 0
    n_k, n_run = b"N" * k, re.compile(b"N{%d,}" % max(k, 1))
    rid = ""  # current record id; "" before the first header
    held = b""  # text of a line ending in N, held until the length of that N run is known
    hdr_line = phase = seq_len = pending = held_line = star_line = star_col = lineno = 0
    rec_start = gap = had_seq = fastq = False

    def end_record() -> Iterator[_Raw]:
        if pending >= k > 0:
            if held:
                yield rid, held_line, held, rec_start, gap
            _count_gap(stats, pending)
        elif pending:
            yield rid, held_line, held + b"N" * pending, rec_start, gap
        if not had_seq and not fastq:
            reason = "record has no sequence (its header is followed by another header or EOF)"
            raise SequenceFormatError(path, hdr_line, rid, reason)

    f, gz = _open_binary(path)
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
                s = raw.translate(table, _WS)
                if fastq:
                    if phase == 0:
                        if not s:
                            continue
                        reason = "expected '@' at the start of a FASTQ record (4-line records)"
                        raise SequenceFormatError(path, lineno, rid, reason)
                    phase, seq_len = 2, len(s)
                if not s:
                    continue
                if _BAD in s:
                    raise SequenceFormatError(path, lineno, rid, _bad_char(raw, policy))
                had_seq = True
                if not dna:
                    if star_line:
                        raise _star_error(path, star_line, rid, star_col)
                    if b"*" in s:
                        star_col = _column(raw, raw.find(b"*"))
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
        raise _gzip_error(path, lineno or None, exc) from None


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
    for rid, line, text, start, gap in _iter_raw(p, policy, stats):
        if stats is not None:
            stats.residues += len(text)
        yield Fragment(rid, line, text.decode("ascii"), start, gap)


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
            _iter_raw(p, policy, stats), [_FLUSH]
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


def reverse_complement(seq: str) -> str:
    """Reverse complement of DNA (ACGTN, U and IUPAC codes; case is kept).

    Raises ValueError for any other character.
    """
    bad = seq.translate(_RC_VALID)
    if bad:
        raise ValueError(f"reverse_complement: {bad[0]!r} is not a DNA letter")
    return seq.translate(_RC)[::-1]
