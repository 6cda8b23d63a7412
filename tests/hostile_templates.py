"""The issue's hostile template cases, shared by the lint tests and the build_sft stage tests."""

from __future__ import annotations

from typing import Any

import pytest

from llamagene.templates.limits import LIMITS

NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


def hostile_cases(field: str, letters: int) -> list[Any]:
    """(the hostile expression, what the one-line error says about the limit), one
    ``pytest.param`` per case; ``field`` is the row's sequence field, ``letters`` its length."""
    return [
        pytest.param(
            "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
            f"calls nest more than {LIMITS.max_call_depth} deep",
            id="macro_recursion",
        ),
        pytest.param(
            "{{ 'a' * 10**10 }}",
            "a repeated value would be 10,000,000,000 characters long",
            id="str_times_1e10",
        ),
        pytest.param(
            f"{{{{ {field} * 10**9 }}}}",
            f"a repeated value would be {letters * 10**9:,} characters long",
            id="sequence_times_1e9",
        ),
        pytest.param(
            "{{ 'a' * 10**9 }}",
            "a repeated value would be 1,000,000,000 characters long",
            id="str_times_1e9",
        ),
        pytest.param(
            "{{ 10**(10**9) }}",
            "10 ** 1000000000 would have about 3,000,000,000 bits, over the limit of "
            f"{LIMITS.max_int_bits:,}",
            id="power_tower",
        ),
        pytest.param(
            NESTED_LOOPS,
            f"loops run more than {LIMITS.max_loop_iterations:,} iterations",
            id="nested_range_loops",
        ),
    ]
