"""The Jinja sandbox for prompt templates: strict undefined, no ``_`` attributes, sequence filters
that write ``<dna>`` / ``<protein>`` markup.

Templates render in Jinja's immutable sandbox with :class:`jinja2.StrictUndefined`, so a variable
the row lacks stops rendering; an attribute or key starting with ``_`` (``{{ ''.__class__ }}``)
or the ``attr`` filter is refused when the source is parsed (:class:`Refused`). The filters
``dna``, ``protein`` and ``seq(kind)`` write a sequence as ``<dna>ACGT</dna>`` /
``<protein>MK</protein>`` (the markup :func:`llamagene.alphabets.encode_markup` maps into the
merged tokenizer's own alphabets) and raise :class:`SequenceLetterError` on a letter outside the
alphabet; templates never cut a sequence. ``molecule`` names a ``seq_type`` in words and
``join_or`` writes a list as ``a, b or c``.

This module knows nothing of :class:`llamagene.templates.PromptTemplate`: it works on source
strings, and :mod:`llamagene.templates` turns its errors into ``TemplateError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llamagene.alphabets import LETTERS, SequenceKind, to_model_text

#: ``seq(kind)`` accepts LucaOne's ``seq_type`` values as well as the kind names.
SEQ_TYPES: dict[str, SequenceKind] = {
    "dna": "dna", "gene": "dna", "nucleotide": "dna", "protein": "protein", "prot": "protein"
}  # fmt: skip
#: ``molecule`` filter: a ``seq_type`` in words (LucaOne's ``gene`` may be DNA or RNA).
MOLECULES = {"dna": "nucleotide", "gene": "nucleotide", "nucleotide": "nucleotide",
             "protein": "protein", "prot": "protein"}  # fmt: skip


class SequenceLetterError(ValueError):
    """A ``dna`` / ``protein`` filter met a letter outside the alphabet (or no sequence)."""


class Refused(Exception):
    """A template reaches for Python internals (an attribute or key starting with ``_``)."""


def wrap_sequence(value: object, kind: SequenceKind) -> str:
    """``value`` as ``<kind>...</kind>`` markup; SequenceLetterError if it is not a ``kind``."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError naming the variable
    if not isinstance(value, str):
        raise SequenceLetterError(f"{kind} filter: expected a sequence, got {type(value).__name__}")
    if not value:
        raise SequenceLetterError(f"{kind} filter: the sequence is empty")
    if value.strip(LETTERS[kind]):  # some letter is outside the alphabet (strip is C-fast)
        try:
            to_model_text(value, kind)
        except ValueError as err:
            pos = next(i for i, c in enumerate(value) if c not in LETTERS[kind])
            raise SequenceLetterError(f"{err}, at position {pos + 1} of {len(value)}") from None
    return f"<{kind}>{value}</{kind}>"


def _seq(value: object, kind: str) -> str:
    if kind not in SEQ_TYPES:
        raise SequenceLetterError(
            f"seq filter: unknown sequence type {kind!r} ({sorted(SEQ_TYPES)})"
        )
    return wrap_sequence(value, SEQ_TYPES[kind])


def _molecule(kind: str) -> str:
    if kind not in MOLECULES:
        raise SequenceLetterError(f"molecule filter: unknown sequence type {kind!r}")
    return MOLECULES[kind]


def _join_or(items: Sequence[object]) -> str:
    words = [str(x) for x in items]
    return words[0] if len(words) < 2 else ", ".join(words[:-1]) + " or " + words[-1]


_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False
)
_ENV.filters.update(
    dna=lambda v: wrap_sequence(v, "dna"),
    protein=lambda v: wrap_sequence(v, "protein"),
    seq=_seq,
    molecule=_molecule,
    join_or=_join_or,
)
for _name in ("lipsum", "cycler", "joiner"):
    _ENV.globals.pop(_name, None)


@lru_cache(maxsize=4096)
def parsed_source(source: str) -> nodes.Template:
    """The parsed source; raises TemplateSyntaxError, or Refused where it reaches for ``_``."""
    ast = _ENV.parse(source)
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name = ""
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value if isinstance(node.arg.value, str) else ""
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            name = "|attr"
        if name.startswith(("_", "|")):
            raise Refused(f"line {node.lineno}: {name!r} reaches into Python internals")
    return ast


@lru_cache(maxsize=4096)
def compiled(source: str) -> jinja2.Template:
    """The source compiled in the sandbox (raises as :func:`parsed_source` does)."""
    parsed_source(source)
    return _ENV.from_string(source)


@lru_cache(maxsize=4096)
def source_variables(source: str) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(parsed_source(source)) - set(_ENV.globals))


def filtered_names(source: str) -> dict[str, set[str]]:
    """variable -> the filters applied to it directly (``{{ x | dna }}`` -> {x: {dna}})."""
    out: dict[str, set[str]] = {}
    for node in parsed_source(source).find_all(nodes.Filter):
        if isinstance(node.node, nodes.Name):
            out.setdefault(node.node.name, set()).add(node.name)
    return out
