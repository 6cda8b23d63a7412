"""Limits on what one render of a prompt template may cost, and the budget that enforces them.

A template is data that anyone may edit, so one careless line must not hang or crash a build of
600,000 rows. Each render gets a :class:`Budget` (:func:`budget_scope`), and the sandbox's hooks
(:mod:`llamagene.templates.sandbox`) check it at every operator, call, filter, loop step and
output; going over a limit raises :class:`RenderLimitError`:

- *output*: at most ``max_output_chars`` characters plus twice the row's own size, counted as
  they are produced (every ``{{ }}`` and the literal text of every loop iteration, inside macros
  and ``{% set %}`` blocks too). ``'a' * 10**10``, ``sequence * 10**9``, ``x.ljust(10**9)``,
  ``'%0999999999d' % 1`` and amplifying filters (``join``, ``replace``, ``indent``, ``center``,
  ``wordwrap``, ``format``) are refused *before* Python builds the string;
- *numbers*: an integer may have at most ``max_int_bits`` bits (``10**(10**9)`` is refused before
  it is computed);
- *loops*: at most ``max_loop_iterations`` loop iterations per render, all loops together (two
  nested ``range(100000)`` loops stop at once rather than after 10^10 steps);
- *calls*: macros and ``loop()`` nest at most ``max_call_depth`` deep (recursion stops with a
  message, not a raw ``RecursionError``);
- *time*: ``max_seconds`` per render, checked at every operation, loop step and call.

Outside a render every check raises :class:`NotRendering`: Jinja's compile-time constant folding
takes that as "not constant", so compiling a template never evaluates any of it.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes


@dataclass(frozen=True)
class RenderLimits:
    """What one render of one template part may cost (see the module docstring)."""

    max_output_chars: int = 100_000
    """Characters a render may produce, plus twice the row's own size."""
    max_seconds: float = 2.0
    """Wall time of one render."""
    max_call_depth: int = 20
    """Nesting of macro and recursive-loop calls."""
    max_loop_iterations: int = 100_000
    """Loop iterations of one render, all loops together."""
    max_int_bits: int = 4096
    """Size of any integer a template computes (10**1000 is about 3,300 bits)."""
    max_source_chars: int = 20_000
    """Length of a prompt or answer template's source."""


LIMITS = RenderLimits()


class RenderLimitError(Exception):
    """A render went over one of :data:`LIMITS`; the message says which and by how much."""


class NotRendering(Exception):
    """Raised by the hooks outside a render, so that Jinja never folds them while compiling."""


# --- the budget of the render in progress ----------------------------------------------------


class Budget:
    """The running totals of one render, checked by every hook."""

    def __init__(self, limits: RenderLimits, row_chars: int) -> None:
        self.limits = limits
        self.max_chars = limits.max_output_chars + 2 * row_chars
        self.deadline = time.perf_counter() + limits.max_seconds
        self.chars = 0
        self.iterations = 0
        self.depth = 0

    def tick(self) -> None:
        if time.perf_counter() > self.deadline:
            raise RenderLimitError(
                f"took more than {self.limits.max_seconds:g} s (the limit per render)"
            )

    def charge(self, chars: int) -> None:
        self.chars += chars
        if self.chars > self.max_chars:
            raise RenderLimitError(
                f"writes more than {self.max_chars:,} characters (the limit: "
                f"{self.limits.max_output_chars:,} plus twice the row's size)"
            )

    def check_size(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise RenderLimitError(
                f"{what} would be {size:,} characters long, over the limit of {self.max_chars:,}"
            )


_LOCAL = threading.local()


def current_budget() -> Budget:
    budget: Budget | None = getattr(_LOCAL, "budget", None)
    if budget is None:
        raise NotRendering("evaluated only while rendering")
    return budget


def sized(value: object) -> int | None:
    """The characters a value would write: a string's length; a collection's items and the
    characters of its strings (a list of a thousand 90,000-letter strings is big)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple | set | frozenset):
        return len(value) + sum(len(x) for x in value if isinstance(x, str))
    if isinstance(value, dict):
        strings = [x for pair in value.items() for x in pair if isinstance(x, str)]
        return len(value) + sum(map(len, strings))
    return None


def materialize(budget: Budget, value: Any, what: str) -> Any:
    """A lazy iterable (``map``, ``select``, a generator) as a list, built under the budget:
    an estimate cannot look inside it, so its items are counted as they come."""
    if isinstance(value, str | bytes | Mapping) or sized(value) is not None:
        return value
    if not isinstance(value, Iterator):
        return value
    items, size = [], 0
    for item in value:
        budget.tick()
        size += 1 + (len(item) if isinstance(item, str) else 0)
        budget.check_size(size, what)
        items.append(item)
    return items


def check_value(budget: Budget, value: object, what: str) -> None:
    """Refuse a string/collection longer than the output limit, or an integer too large."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if value.bit_length() > budget.limits.max_int_bits:
            raise RenderLimitError(
                f"{what} is an integer of {value.bit_length():,} bits, over the limit of "
                f"{budget.limits.max_int_bits:,}"
            )
        return
    size = sized(value)
    if size is not None:
        budget.check_size(size, what)


def _int_arguments(budget: Budget, values: Iterable[object], what: str) -> None:
    """A count or width argument above the output limit would build an oversized result."""
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and value > budget.max_chars:
            raise RenderLimitError(
                f"{what}: an argument of {value:,} is over the output limit of {budget.max_chars:,}"
            )


_NUMBER = re.compile(r"\d+")


def check_format_string(budget: Budget, fmt: str, values: Iterable[object] = ()) -> None:
    """``'%0999999999d' % 1`` and ``'{:>999999999}'.format(1)``: widths over the limit; and
    ``('{0}' * 50000).format(sequence)``: a value written once per field of the format."""
    for digits in _NUMBER.findall(fmt):
        if len(digits) > 12 or int(digits) > budget.max_chars:
            raise RenderLimitError(f"a format width of {digits} is over the output limit")
    longest = max((text_length(v) for v in _flat(values)), default=0)
    fields = fmt.count("{") + fmt.count("%")
    budget.check_size(len(fmt) + fields * longest, "a formatted string")


def _flat(values: Iterable[object]) -> Iterator[object]:
    for value in values:
        if isinstance(value, dict):
            yield from value.values()
        elif isinstance(value, tuple | list):
            yield from value
        else:
            yield value


def text_length(value: object) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


# --- the sandboxed environment ---------------------------------------------------------------


def check_power(budget: Budget, base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        bits = exponent * (abs(base).bit_length() - 1)
        if bits > budget.limits.max_int_bits:
            raise RenderLimitError(
                f"{base} ** {exponent} would have about {bits:,} bits, over the limit of "
                f"{budget.limits.max_int_bits:,}"
            )


def check_repeat(budget: Budget, left: Any, right: Any) -> None:
    for seq, count in ((left, right), (right, left)):
        if isinstance(count, int) and not isinstance(count, bool) and sized(seq) is not None:
            budget.check_size(max(count, 0) * text_length(seq), "a repeated value")
    if isinstance(left, int) and isinstance(right, int):
        bits = left.bit_length() + right.bit_length()
        if bits > budget.limits.max_int_bits + 1:
            raise RenderLimitError(f"a product of about {bits:,} bits is over the limit")


_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def check_str_method(budget: Budget, obj: Any, args: Sequence[Any], kwargs: Any) -> None:
    """Estimate what ``str.join`` / ``replace`` / padding would build, before they build it."""
    method = getattr(obj, "__wrapped__", obj)
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    if name in ("format", "format_map"):
        check_format_string(budget, owner, (*args, *kwargs.values()))
    elif name in _PADDING_METHODS:
        _int_arguments(budget, (*args, *kwargs.values()), f"str.{name}")
        if name == "expandtabs" and args and isinstance(args[0], int):
            budget.check_size(len(owner) + owner.count("\t") * args[0], "str.expandtabs")
    elif name == "join" and args:
        items = args[0]
        if isinstance(items, Sequence):
            size = sum(text_length(x) for x in items) + len(owner) * max(len(items) - 1, 0)
            budget.check_size(size, "str.join")
    elif name == "replace" and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        hits = owner.count(old) if old else len(owner) + 1
        budget.check_size(len(owner) + hits * max(len(new) - len(old), 0), "str.replace")


#: What Jinja passes to ``pass_context`` / ``pass_eval_context`` / ``pass_environment`` filters.
_PASSED = (jinja2.runtime.Context, nodes.EvalContext, jinja2.Environment)


def guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` checked against the budget: its arguments before, its result after."""

    @functools.wraps(func)  # keeps jinja_pass_arg (pass_context / pass_eval_context)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = current_budget()
        budget.tick()
        first = next((i for i, a in enumerate(args) if not isinstance(a, _PASSED)), None)
        if first is not None:  # the filtered value: a lazy iterable is counted as it comes
            args = (*args[:first], materialize(budget, args[first], f"the {name} filter's input"),
                    *args[first + 1 :])  # fmt: skip
        values = [a for a in (*args, *kwargs.values()) if not isinstance(a, _PASSED)]
        for value in values:
            check_value(budget, value, f"an argument of the {name} filter")
        _int_arguments(budget, values[1:], f"the {name} filter")
        estimate = _FILTER_ESTIMATES.get(name)
        if estimate is not None and values:
            budget.check_size(estimate(values[0], values[1:], kwargs), f"the {name} filter")
        if name == "format" and values and isinstance(values[0], str):
            check_format_string(budget, values[0], values[1:])
        result = func(*args, **kwargs)
        check_value(budget, result, f"the {name} filter")
        return result

    return guarded


def _estimate_join(value: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    items = list(value) if isinstance(value, Sequence) else []
    sep = kwargs.get("d", args[0] if args else "")
    return sum(text_length(x) for x in items) + text_length(sep) * max(len(items) - 1, 0)


def _estimate_replace(value: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    text = str(value)
    old = str(kwargs.get("old", args[0] if args else ""))
    new = str(kwargs.get("new", args[1] if len(args) > 1 else ""))
    hits = text.count(old) if old else len(text) + 1
    return len(text) + hits * max(len(new) - len(old), 0)


def _estimate_indent(value: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    text = str(value)
    width = kwargs.get("width", args[0] if args else 4)
    per_line = width if isinstance(width, int) else text_length(width)
    return len(text) + (text.count("\n") + 1) * max(per_line, 0)


def _estimate_wordwrap(value: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    text = str(value)
    wrap = kwargs.get("wrapstring", args[2] if len(args) > 2 else "\n")
    return len(text) * (1 + text_length(wrap or "\n"))


_FILTER_ESTIMATES: dict[str, Callable[[Any, Sequence[Any], Mapping[str, Any]], int]] = {
    "join": _estimate_join,
    "replace": _estimate_replace,
    "indent": _estimate_indent,
    "wordwrap": _estimate_wordwrap,
}


def loop_steps(iterable: Iterable[Any], chars: int) -> Iterator[Any]:
    """What every ``{% for %}`` iterates (see :func:`_guard_loops`): each step is counted,
    timed, and charged the literal text of the loop's body."""
    budget = current_budget()  # outside the generator: refused at once when not rendering

    def steps() -> Iterator[Any]:
        for item in iterable:
            budget.iterations += 1
            if budget.iterations > budget.limits.max_loop_iterations:
                raise RenderLimitError(
                    f"loops run more than {budget.limits.max_loop_iterations:,} iterations in all"
                )
            budget.tick()
            budget.charge(chars)
            yield item

    return steps()


def finalize_output(value: Any) -> Any:
    """Every ``{{ }}`` output passes here: its length is charged to the budget."""
    budget = current_budget()
    budget.charge(text_length(value))
    return value


@contextmanager
def budget_scope(limits: RenderLimits, row_chars: int) -> Iterator[Budget]:
    """A fresh budget for the render inside the ``with`` block (nested scopes restore)."""
    budget = Budget(limits, row_chars)
    previous = getattr(_LOCAL, "budget", None)
    _LOCAL.budget = budget
    try:
        yield budget
    finally:
        _LOCAL.budget = previous
