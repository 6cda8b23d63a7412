"""The Jinja sandbox for prompt templates: strict undefined, no ``_`` attributes, sequence filters
that write ``<dna>`` / ``<protein>`` markup, and every operation checked against the render's
budget (:mod:`llamagene.templates.limits`).

Templates render in Jinja's immutable sandbox with :class:`jinja2.StrictUndefined`, so a variable
the row lacks stops rendering; an attribute, key or filter starting with ``_`` (``{{
''.__class__ }}``) or the ``attr`` filter is refused when the source is parsed (:class:`Refused`).
The filters ``dna``, ``protein`` and ``seq(kind)`` write a sequence as ``<dna>ACGT</dna>`` /
``<protein>MK</protein>`` (the markup :func:`llamagene.alphabets.encode_markup` maps into the
merged tokenizer's own alphabets) and raise :class:`SequenceLetterError` on a letter outside the
alphabet; templates never cut a sequence. ``molecule`` names a ``seq_type`` in words and
``join_or`` writes a list as ``a, b or c``.

**Compiling never evaluates.** Jinja folds constant expressions while it compiles, so ``{{ 'a' *
10**9 }}`` used to hang ``templates lint`` before anything rendered. Every arithmetic operator is
routed through :meth:`_BoundedSandbox.call_binop` (Jinja then cannot fold it), every filter and
output hook refuses to run outside a render, and every ``{% for %}`` is rewritten to step through
:func:`~llamagene.templates.limits.loop_steps`: all evaluation happens at render time, under the
budget (:func:`render_bounded`).

This module knows nothing of :class:`llamagene.templates.PromptTemplate`: it works on source
strings, and :mod:`llamagene.templates.rendering` turns its errors into ``TemplateError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llamagene.alphabets import LETTERS, SequenceKind, to_model_text
from llamagene.templates.limits import (
    LIMITS,
    RenderLimitError,
    RenderLimits,
    budget_scope,
    check_format_string,
    check_power,
    check_repeat,
    check_str_method,
    check_value,
    current_budget,
    finalize_output,
    guard_filter,
    loop_steps,
    materialize,
    sized,
    text_length,
)

#: ``seq(kind)`` accepts LucaOne's ``seq_type`` values as well as the kind names.
SEQ_TYPES: dict[str, SequenceKind] = {
    "dna": "dna", "gene": "dna", "nucleotide": "dna", "protein": "protein", "prot": "protein"
}  # fmt: skip
#: ``molecule`` filter: a ``seq_type`` in words (LucaOne's ``gene`` may be DNA or RNA).
MOLECULES = {"dna": "nucleotide", "gene": "nucleotide", "nucleotide": "nucleotide",
             "protein": "protein", "prot": "protein"}  # fmt: skip
#: Sequence markup as it appears in rendered text (``llamagene.alphabets`` reads it).
MARKUP_TAG = re.compile(r"</?(?:dna|protein)>")


class SequenceLetterError(ValueError):
    """A ``dna`` / ``protein`` filter met a letter outside the alphabet (or no sequence)."""


class Refused(Exception):
    """A template reaches for Python internals (an attribute or key starting with ``_``)."""


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every operator and call checked against the budget."""

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = current_budget()
        budget.tick()
        if operator == "**":
            check_power(budget, left, right)
        elif operator == "*":
            check_repeat(budget, left, right)
        elif operator == "+" and sized(left) is not None and sized(right) is not None:
            budget.check_size(text_length(left) + text_length(right), "a sum")
        elif operator == "%" and isinstance(left, str):
            check_format_string(budget, left, [right])
        result = super().call_binop(context, operator, left, right)
        check_value(budget, result, f"the result of {operator!r}")
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        budget.tick()
        name = getattr(__obj, "__name__", "a call")
        args = tuple(materialize(budget, a, f"an argument of {name}") for a in args)
        for value in (*args, *kwargs.values()):
            check_value(budget, value, f"an argument of {name}")
        check_str_method(budget, __obj, args, kwargs)
        budget.depth += 1
        try:
            if budget.depth > budget.limits.max_call_depth:
                raise RenderLimitError(
                    f"calls nest more than {budget.limits.max_call_depth} deep (a macro or "
                    f"recursive loop that calls itself without end?)"
                )
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.depth -= 1
        check_value(budget, result, f"the result of {name}")
        return result


# --- sequence filters ------------------------------------------------------------------------


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


#: Filters whose output is at most their input's size plus a constant: they need no guard
#: (their input was checked where it was made), which keeps the common case fast.
_LINEAR_FILTERS = frozenset({
    "dna", "protein", "seq", "molecule", "length", "count", "lower", "upper", "capitalize",
    "title", "trim", "round", "abs", "int", "float", "first", "last", "default", "d",
})  # fmt: skip


def _make_env() -> _BoundedSandbox:
    env = _BoundedSandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        finalize=finalize_output,
        optimized=False,
    )
    env.filters.update(
        dna=lambda v: wrap_sequence(v, "dna"),
        protein=lambda v: wrap_sequence(v, "protein"),
        seq=_seq,
        molecule=_molecule,
        join_or=_join_or,
    )
    env.filters = {
        name: f if name in _LINEAR_FILTERS else guard_filter(name, f)
        for name, f in env.filters.items()
    }
    env.filters["_loop_steps"] = loop_steps  # added after parsing only: see _guard_loops
    for name in ("lipsum", "cycler", "joiner", "namespace"):
        env.globals.pop(name, None)
    return env


_ENV = _make_env()
_GLOBALS = dict(_ENV.globals)


# --- parsing, compiling, rendering -----------------------------------------------------------


@lru_cache(maxsize=4096)
def parsed_source(source: str) -> nodes.Template:
    """The parsed source; raises TemplateSyntaxError, or Refused where it reaches for ``_`` or
    is longer than :data:`LIMITS` allows."""
    if len(source) > LIMITS.max_source_chars:
        raise Refused(
            f"is {len(source):,} characters long, over the limit of {LIMITS.max_source_chars:,}"
        )
    ast = _ENV.parse(source)
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name = ""
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value if isinstance(node.arg.value, str) else ""
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            name = "|attr"
        elif isinstance(node, nodes.Filter) and node.name.startswith("_"):
            name = f"|{node.name}"
        if name.startswith(("_", "|")):
            raise Refused(f"line {node.lineno}: {name!r} reaches into Python internals")
    return ast


def _guard_loops(ast: nodes.Template) -> None:
    """Route every ``{% for %}`` through :func:`loop_steps` (steps, time, literal text)."""
    for loop in ast.find_all(nodes.For):
        chars = sum(len(data.data) for data in loop.find_all(nodes.TemplateData))
        lineno = loop.iter.lineno
        loop.iter = nodes.Filter(
            loop.iter, "_loop_steps", [nodes.Const(chars)], [], None, None, lineno=lineno
        )


@lru_cache(maxsize=4096)
def compiled(source: str) -> jinja2.Template:
    """The source compiled in the sandbox (raises as :func:`parsed_source` does; Refused if it
    nests too deeply for Python to compile)."""
    ast = _ENV.parse(source)  # a fresh tree: the cached one stays as written
    parsed_source(source)
    _guard_loops(ast)
    try:
        code = _ENV.compile(ast)
    except (RecursionError, MemoryError, SyntaxError) as err:
        raise Refused(f"cannot be compiled ({type(err).__name__}: nested too deeply?)") from None
    return _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None), None)


def render_bounded(
    template: jinja2.Template,
    context: Mapping[str, Any],
    row_chars: int,
    limits: RenderLimits = LIMITS,
) -> str:
    """Render under a fresh budget; RenderLimitError when it goes over one of ``limits``."""
    try:
        with budget_scope(limits, row_chars) as budget:
            # outputs and loop text are charged as they are made; top-level text is short.
            # One dict of globals and row (shared=True) instead of Jinja's two copies.
            frame = template.new_context({**_GLOBALS, **context}, shared=True)
            try:
                text = _ENV.concat(template.root_render_func(frame))
            except Exception:
                _ENV.handle_exception()  # Jinja's own: template line numbers in tracebacks
            budget.check_size(len(text), "the rendered text")
            return text
    except RecursionError:
        raise RenderLimitError("recursion too deep for Python (a macro calling itself?)") from None
    except MemoryError:
        raise RenderLimitError("ran out of memory building the output") from None


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


def literal_text(source: str) -> list[str]:
    """The template's own text outside ``{{ }}`` / ``{% %}`` (what no row can change)."""
    return [data.data for data in parsed_source(source).find_all(nodes.TemplateData)]
