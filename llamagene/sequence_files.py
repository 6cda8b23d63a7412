"""Opening sequence and table files, plain or gzip, and the error every bad sequence input raises.

A file is gzip when it starts with gzip's magic bytes, whatever its name. :func:`open_text`
reads it as UTF-8 text with universal newlines; invalid UTF-8 and truncated or corrupt gzip data
surface as :class:`SequenceFormatError` naming the file. :func:`decompressed_size_upto` learns
whether a file holds enough content without reading a genome whole. The FASTA/FASTQ parser
(:mod:`llamagene.sequence_records`) reads the same files as bytes through :func:`open_binary`.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO, TextIO, cast

from llamagene.errors import LlamageneError

_GZIP_MAGIC = b"\x1f\x8b"


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
            raise gzip_error(self._path, self._lines or None, exc) from exc

    def readline(self, size: int = -1, /) -> str:  # type: ignore[override]
        line = self._guard(lambda: io.TextIOWrapper.readline(self, size))
        self._lines += line.endswith("\n")
        return line

    def read(self, size: int | None = -1, /) -> str:
        return self._guard(lambda: io.TextIOWrapper.read(self, size))


def gzip_error(path: str, line: int | None, exc: BaseException) -> SequenceFormatError:
    """The error for gzip data that ends early or does not decompress (``exc`` says how)."""
    reason = f"truncated or corrupt gzip ({exc}); re-download the file or check it with gzip -t"
    return SequenceFormatError(path, line, None, reason)


def open_binary(path: str) -> tuple[BinaryIO, bool]:
    """Open a plain or gzip file (detected by its magic bytes) for reading bytes:
    ``(the file, whether it is gzip)``."""
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
    f, gz = open_binary(p)
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
    f, gz = open_binary(p)
    return _GuardedText(f, p, gz)
