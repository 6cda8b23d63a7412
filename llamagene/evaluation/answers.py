"""How a generated answer is normalised and parsed before it is scored.

**Normalisation** (:func:`normalise`), in this order:

1. Unicode NFKC (full-width letters and digits become ASCII, ligatures are split);
2. casefold (a stronger lower-casing: ``"Straße"`` becomes ``"strasse"``);
3. every run of whitespace (spaces, tabs, newlines) becomes one space, and the ends are stripped;
4. one trailing ``"."`` or ``"!"`` is dropped;
5. one pair of surrounding quotes (``"…"``, ``'…'``, ``“…”``, ``‘…’``, ``«…»``, `````…`````) is
   dropped, and if it was, one trailing ``"."`` or ``"!"`` inside it too, so ``"Yes".`` and
   ``"Yes."`` both become ``yes``.

**Parsers**, each strict: the *whole* normalised answer must be the thing asked for, so an answer
that explains itself ("yes, because …") is unparseable (``None``) and :mod:`.metrics` counts it
wrong and reports the unparseable share.

- :func:`parse_choice`: the index of the choice whose normalised text equals the answer's.
- :func:`parse_number`: one decimal number: optional sign (``+``, ``-`` or the Unicode minus
  ``−``), digits with an optional ``.`` fraction, an optional exponent (``1.5e-3``). A comma is
  refused, as decimal comma (``1,5``) and as thousands separator (``1,000``), because the two
  read differently; so are ``inf``, ``nan`` and numbers too large for a float.
- :func:`parse_labels`: a multilabel answer: choices separated by ``","`` or ``";"``; ``none``
  (when it is not itself a choice) is the empty set; one part that is no choice makes the whole
  answer unparseable.
- :func:`parse_token_labels`: a per-position labelling, one label character per position, written
  either run together (``OOOHHHEE``) or separated by whitespace (``O O O H``), case kept.
- :func:`parse_sequence`: a DNA or protein answer with its ``<dna>``/``<protein>`` markup and all
  whitespace removed, upper-cased; it never fails (an empty answer is the empty sequence).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

#: Pairs of quotes that :func:`normalise` drops from around an answer.
QUOTE_PAIRS = (('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("«", "»"), ("`", "`"))
#: One trailing character of these is dropped by :func:`normalise`.
TRAILING_PUNCTUATION = ".!"
#: The multilabel answer for "no label", when it is not itself one of the choices.
NO_LABELS = "none"
LABEL_SEPARATORS = re.compile(r"[,;]")

_WHITESPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?")
_SEQUENCE_MARKUP = re.compile(r"</?(?:dna|protein)>", re.IGNORECASE)


def normalise(text: str) -> str:
    """``text`` normalised by the module's rule: NFKC, casefold, whitespace collapsed and
    stripped, one trailing ``.``/``!`` and one pair of surrounding quotes dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _WHITESPACE.sub(" ", text).strip()
    text = _drop_trailing_punctuation(text)
    for opening, closing in QUOTE_PAIRS:
        if len(text) >= 2 and text.startswith(opening) and text.endswith(closing):
            return _drop_trailing_punctuation(text[1:-1].strip())
    return text


def parse_choice(text: str, choices: Sequence[str]) -> int | None:
    """The index of the choice equal to ``text`` after :func:`normalise` of both, else ``None``.

    Raises ``ValueError`` when two choices normalise to the same text (a task that cannot be
    scored)."""
    return _choice_index(choices).get(normalise(text))


def parse_number(text: str) -> float | None:
    """The number that the whole normalised ``text`` is, else ``None`` (module docstring)."""
    answer = normalise(text).replace("\u2212", "-")
    if not _NUMBER.fullmatch(answer):
        return None
    value = float(answer)
    return value if math.isfinite(value) else None


def parse_labels(text: str, choices: Sequence[str]) -> frozenset[int] | None:
    """The set of choice indices named in ``text`` (separated by ``,`` or ``;``); the empty set
    for ``none``; ``None`` when any part is not a choice, or a part is empty (``"a,,b"``).

    Raises ``ValueError`` when a choice contains a separator or two choices normalise alike."""
    index = _choice_index(choices)
    if any(LABEL_SEPARATORS.search(choice) for choice in index):
        raise ValueError(f"a multilabel choice may not contain ',' or ';': {list(choices)}")
    answer = normalise(text)
    if answer in index:
        return frozenset({index[answer]})
    if answer == NO_LABELS:
        return frozenset()
    labels: set[int] = set()
    for part in LABEL_SEPARATORS.split(answer):
        label = index.get(normalise(part))
        if label is None:
            return None
        labels.add(label)
    return frozenset(labels)


def parse_token_labels(text: str) -> str | None:
    """One label character per position, run together: ``"OOOHHHEE"`` stays, ``"O O O H"``
    becomes ``"OOOH"``; ``None`` when a whitespace-separated part is longer than one character,
    or nothing is left. Case is kept (labels are often case-sensitive codes)."""
    parts = text.split()
    if len(parts) > 1 and any(len(part) != 1 for part in parts):
        return None
    labels = "".join(parts)
    return labels or None


def parse_sequence(text: str) -> str:
    """``text`` without ``<dna>``/``</dna>``/``<protein>``/``</protein>`` tags and whitespace,
    upper-cased: ``"<dna>acg t</dna>"`` becomes ``"ACGT"``. Idempotent."""
    return "".join(_SEQUENCE_MARKUP.sub("", text).split()).upper()


def _drop_trailing_punctuation(text: str) -> str:
    return text[:-1].rstrip() if text and text[-1] in TRAILING_PUNCTUATION else text


def _choice_index(choices: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, choice in enumerate(choices):
        key = normalise(choice)
        if key in index:
            raise ValueError(
                f"choices {choices[index[key]]!r} and {choice!r} both normalise to {key!r}"
            )
        index[key] = i
    return index
