"""How DNA and protein are written for the merged tokenizer.

DNA and protein share letters with each other and with English (``A``, ``C``, ``G``, ``T`` are
bases, residues and capital letters). If the three vocabularies shared those letters, their
pieces would compete in one BPE model: English all-caps words would split differently, and
protein pieces made only of A/C/G/T would take over DNA. Measured on a real bacterial genome
(see ARCHITECTURE.md), every shared-alphabet merge policy broke one of the three.

So llamagene gives each sequence kind an alphabet of its own in Unicode's private-use area
(U+E000-U+E0FF for DNA, U+E100-U+E1FF for protein). The merged tokenizer's DNA pieces are the
DNA-only model's pieces written in the DNA code points, likewise for protein; the base
vocabulary is untouched. Consequences, all tested:

- English is tokenized exactly as by the base tokenizer (its pieces contain no private-use code);
- DNA splits exactly as the DNA-only model splits it, protein as the protein-only model;
- no BPE merge can cross from a prompt into a sequence, so no separator is needed for that;
- text must be mapped before encoding: :func:`to_model_text` for a bare sequence, or
  :func:`encode_markup` for text with ``<dna>...</dna>`` / ``<protein>...</protein>`` spans.
  The merged ``tokenizer.json`` maps the code points back to letters when decoding, so
  ``tokenizer.decode`` prints plain ``ACGT``.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Literal

SequenceKind = Literal["dna", "protein"]

DNA_LETTERS = "ACGTN"
#: 20 standard residues, X (unknown), then the rarer codes B Z J U O.
PROTEIN_LETTERS = "ACDEFGHIKLMNPQRSTVWYXBZJUO"
DNA_BASE = 0xE000
PROTEIN_BASE = 0xE100

LETTERS: dict[SequenceKind, str] = {"dna": DNA_LETTERS, "protein": PROTEIN_LETTERS}
CODE_BASE: dict[SequenceKind, int] = {"dna": DNA_BASE, "protein": PROTEIN_BASE}

_TO_MODEL: dict[SequenceKind, dict[int, str]] = {
    kind: {ord(c): chr(CODE_BASE[kind] + i) for i, c in enumerate(letters)}
    for kind, letters in LETTERS.items()
}
_FROM_MODEL: dict[int, str] = {
    ord(code): chr(letter) for table in _TO_MODEL.values() for letter, code in table.items()
}
#: byte -> model character, for ``codecs.charmap_decode``; U+FFFE marks a byte outside the alphabet.
_DECODE: dict[SequenceKind, str] = {
    kind: "".join(table.get(byte, "\ufffe") for byte in range(256))
    for kind, table in _TO_MODEL.items()
}
_MARKUP = re.compile(r"<(dna|protein)>(.*?)</\1>", re.DOTALL)


def model_code(kind: SequenceKind, letter: str) -> str:
    """The private-use character that stands for ``letter`` of ``kind``."""
    return _TO_MODEL[kind][ord(letter)]


def to_model_text(seq: str, kind: SequenceKind) -> str:
    """An upper-case sequence in the merged tokenizer's alphabet for ``kind``.

    Raises ValueError naming the first letter outside the alphabet (normalise input with
    :mod:`llamagene.sequences` first: it upper-cases, maps IUPAC codes and checks letters).
    """
    try:  # a charmap decode of the ASCII bytes: ten times faster than str.translate
        return codecs.charmap_decode(seq.encode("ascii"), "strict", _DECODE[kind])[0]
    except (UnicodeEncodeError, UnicodeDecodeError):
        bad = next(c for c in seq if c not in LETTERS[kind])
        raise ValueError(f"{bad!r} is not a {kind} letter ({LETTERS[kind]})") from None


def from_model_text(text: str) -> str:
    """Map private-use sequence characters back to letters; other text is left as it is."""
    return text.translate(_FROM_MODEL)


def encode_markup(text: str) -> str:
    """Map the inside of every ``<dna>...</dna>`` and ``<protein>...</protein>`` span.

    The tags stay in the text, so ``from_model_text(encode_markup(x)) == x`` for valid spans.
    """

    def _map(match: re.Match[str]) -> str:
        kind: SequenceKind = "dna" if match.group(1) == "dna" else "protein"
        try:
            inner = to_model_text(match.group(2), kind)
        except ValueError as err:
            raise ValueError(f"in <{kind}> span at offset {match.start()}: {err}") from None
        return f"<{kind}>{inner}</{kind}>"

    return _MARKUP.sub(_map, text)


@dataclass(frozen=True)
class MarkupParts:
    """A text cut at its sequence spans: ``texts[0] seq[0] texts[1] seq[1] ... texts[-1]``; the
    tags stay in the texts (``"Is <dna>"``, ``"</dna> a promoter?"``)."""

    texts: list[str]
    sequences: list[tuple[SequenceKind, str]]


def split_markup(text: str) -> MarkupParts:
    """Cut ``text`` at the inside of its ``<dna>``/``<protein>`` spans (letters kept as given)."""
    texts: list[str] = []
    sequences: list[tuple[SequenceKind, str]] = []
    pos = 0
    for match in _MARKUP.finditer(text):
        texts.append(text[pos : match.start(2)])
        kind: SequenceKind = "dna" if match.group(1) == "dna" else "protein"
        sequences.append((kind, match.group(2)))
        pos = match.end(2)
    texts.append(text[pos:])
    return MarkupParts(texts, sequences)
