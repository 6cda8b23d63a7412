"""Which letters DNA and protein sequences may hold, and how they are normalised.

A :class:`SequencePolicy` says how one kind is validated and normalised; :func:`translate_table`
compiles it to one 256-byte ``bytes.translate`` table (upper case, U->T, IUPAC->N, whitespace
kept, anything invalid mapped to the :data:`BAD` sentinel), so the parser
(:mod:`llamagene.sequence_records`) has no per-character Python loop. :func:`bad_char_reason`
explains the first invalid letter of a line and how to fix it. :func:`reverse_complement` turns
DNA around.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

from llamagene.alphabets import SequenceKind

#: Whitespace bytes; the translate tables keep them, so callers can strip them in one call.
WS = b" \t\r\n\v\f"
#: The sentinel that the translate tables give every invalid byte.
BAD = b"\x00"
_IUPAC = "RYKMSWBDHV"
_PROTEIN_STD = "ACDEFGHIKLMNPQRSTVWYX"
_PROTEIN_RARE = "BZJUO"
_RC = str.maketrans("ACGTUNRYKMSWBDHVacgtunrykmswbdhv", "TGCAANYRMKSWVHDBtgcaanyrmkswvhdb")
_RC_VALID = dict.fromkeys(map(ord, "ACGTUNRYKMSWBDHVacgtunrykmswbdhv"))
#: Where a DNA file that holds protein is told to go, when the caller does not say.
DEFAULT_PROTEIN_HINT = (
    "read it as protein (train_bpe: list it under protein_inputs; "
    "data recipe: set kind: protein for its source)"
)


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


@cache
def translate_table(policy: SequencePolicy) -> bytes:
    """256-byte translate table: valid letters to upper case, whitespace kept, else NUL."""
    t = bytearray(256)
    for c in WS:
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


def column(raw: bytes, i: int) -> int:
    """The 1-based column, in characters, of byte ``i`` of the line ``raw``."""
    return len(raw[:i].decode("utf-8", "replace")) + 1


def bad_char_reason(raw: bytes, policy: SequencePolicy) -> str:
    """The reason for the first invalid character of ``raw`` (slow path, errors only)."""
    i = raw.translate(translate_table(policy)).find(BAD)
    ch = raw[i:].decode("utf-8", "replace")[:1]
    col = column(raw, i)
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


def reverse_complement(seq: str) -> str:
    """Reverse complement of DNA (ACGTN, U and IUPAC codes; case is kept).

    Raises ValueError for any other character.
    """
    bad = seq.translate(_RC_VALID)
    if bad:
        raise ValueError(f"reverse_complement: {bad[0]!r} is not a DNA letter")
    return seq.translate(_RC)[::-1]
