"""Hostile templates stop fast with one line naming the file, the template and the limit.

Each case of the issue (macro recursion, ``'a' * 10**10``, ``sequence * 10**9``, ``'a' *
10**9``, ``10**(10**9)``, two nested ``range(100000)`` loops) goes through the real ``llamagene
templates lint``; compiling never folds constants; every other amplification path is refused by
``render`` naming the row; and ordinary loops and macros still render.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile_templates import NESTED_LOOPS, hostile_cases

from llamagene.cli import main
from llamagene.templates import PromptTemplate, TemplateError, load_templates, render, show_path
from llamagene.templates.limits import (
    NotRendering,
    RenderLimitError,
    RenderLimits,
    current_budget,
)
from llamagene.templates.lock import LOCK_NAME, write_lock
from llamagene.templates.sandbox import compiled, render_bounded

TAIL = "\nSequence: {{ sequence | dna }}\nAnswer yes or no.\nAnswer:"
#: The issue's hostile cases, on the 20-letter placeholder sequence.
HOSTILE = hostile_cases("sequence", 20)
ROW = {"sequence": "ACGTTAGCCATGGCTAGCTA", "label": "1"}


def _write(root: Path, template_id: str, prompt: str) -> Path:
    """``root/hostile.yaml`` with one binary template for gue/EMP/H3 (a task lint knows)."""
    entry = {
        "id": template_id,
        "version": 1,
        "task": "gue/EMP/H3",
        "task_type": "binary",
        "prompt": prompt,
        "answer_choices": {"0": "no", "1": "yes"},
        "metrics": ["mcc"],
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "hostile.yaml"
    path.write_text(yaml.safe_dump({"templates": [entry]}, sort_keys=False), encoding="utf-8")
    return path


def _template(tmp_path: Path, prompt: str, template_id: str = "x/limits") -> PromptTemplate:
    _write(tmp_path, template_id, prompt)
    (template,) = load_templates(tmp_path)
    return template


# --- the hostile cases, through `llamagene templates lint` ---------------------------


@pytest.mark.parametrize(("expression", "limit"), HOSTILE)
def test_lint_stops_a_hostile_template_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], expression: str, limit: str
) -> None:
    root = tmp_path / "templates"
    path = _write(root, "x/hostile", expression + TAIL)
    write_lock(root / LOCK_NAME, load_templates(root))  # the limit is the only problem left
    start = time.perf_counter()
    code = main(["templates", "--root", str(root), "lint"])
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.out.splitlines()
    assert len(lines) == 1, captured.out
    (line,) = lines
    assert line.startswith(f"{show_path(path)}: x/hostile: prompt: ")
    assert f"row with fields (sequence, label): over a render limit: {limit}" in line
    assert captured.err == "1 templates, 1 problem\n"
    assert elapsed < 5, f"lint took {elapsed:.1f} s"


# --- compiling never evaluates ----------------------------------------------------------------

#: Compiles ``source`` (argv[1]), then renders it under the budget; prints the compile time and
#: the refusal. In a child process so that constant folding, were it back, fails the test (the
#: power tower would never return) instead of hanging it.
COMPILE_ONLY = """\
import json, sys, time
from llamagene.templates.limits import RenderLimitError
from llamagene.templates.sandbox import compiled, render_bounded
start = time.perf_counter()
template = compiled(sys.argv[1])
seconds = time.perf_counter() - start
try:
    render_bounded(template, {}, 0)
    refusal = None
except RenderLimitError as err:
    refusal = str(err)
print(json.dumps({"seconds": seconds, "refusal": refusal}))
"""


@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        pytest.param("{{ 'a' * 10**9 }}", "a repeated value would be", id="str_times_1e9"),
        pytest.param("{{ 10**(10**9) }}", "10 ** 1000000000 would have", id="power_tower"),
    ],
)
def test_compiling_does_not_fold_constants(source: str, refusal: str) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", COMPILE_ONLY, source],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"compiling {source} hangs: Jinja folded the constant expression")
    result = json.loads(done.stdout)
    assert result["seconds"] < 1
    # refused by the budget's operator hook at render time: the expression was never folded
    assert result["refusal"] is not None and result["refusal"].startswith(refusal)


def test_the_hooks_refuse_to_run_outside_a_render() -> None:
    with pytest.raises(NotRendering):
        current_budget()


# --- every other amplification path, through render() -------------------------------------------

AMPLIFIERS = [
    pytest.param("{{ 'x'.ljust(10**9) }}", "str.ljust: an argument of 1,000,000,000", id="ljust"),
    pytest.param("{{ '%0999999999d' % 1 }}", "a format width of 0999999999", id="percent_width"),
    pytest.param(
        "{{ '{:>999999999}'.format(1) }}", "a format width of 999999999", id="format_width"
    ),
    pytest.param(
        "{{ range(100000) | join(sequence * 1000) }}", "the join filter would be", id="join"
    ),
    pytest.param(
        "{% set x %}{% for i in range(100000) %}{{ sequence }}{% endfor %}{% endset %}",
        "writes more than",
        id="set_block",
    ),
    pytest.param(
        "{% macro twice(s, n) %}{% if n %}{{ twice(s ~ s, n - 1) }}{% else %}{{ s | length }}"
        "{% endif %}{% endmacro %}{{ twice(sequence, 16) }}",
        "characters long, over the limit",
        id="doubling_macro",
    ),
    # lazy iterables: no estimate can look inside a map or generator, so items are counted
    pytest.param(
        "{{ range(20000) | map('center', 90000) | join | length }}",
        "the join filter's input would be",
        id="lazy_join",
    ),
    pytest.param(
        "{{ range(100000) | map('center', 90000) | list | length }}",
        "the list filter's input would be",
        id="lazy_list",
    ),
    # a value written once per field of a format string
    pytest.param(
        "{{ ('{0}' * 30000).format(sequence) | length }}", "a formatted string", id="format_repeat"
    ),
    pytest.param(
        "{{ ('%(s)s' * 20000) | format(s=sequence) | length }}",
        "a formatted string",
        id="format_filter_repeat",
    ),
    pytest.param("{{ ('%s' * 20000) % sequence }}", "a formatted string", id="percent_repeat"),
]


@pytest.mark.parametrize(("expression", "limit"), AMPLIFIERS)
def test_render_refuses_an_amplifier_naming_the_row(
    tmp_path: Path, expression: str, limit: str
) -> None:
    template = _template(tmp_path, expression + TAIL)
    start = time.perf_counter()
    with pytest.raises(TemplateError) as caught:
        render(template, ROW, where="rows.csv:7")
    assert time.perf_counter() - start < 2
    message = str(caught.value)
    assert message.startswith(f"{show_path(template.path)}: template x/limits: prompt: rows.csv:7")
    assert "over a render limit" in message and limit in message
    assert "\n" not in message


def test_render_time_is_limited() -> None:
    limits = RenderLimits(max_seconds=0.05, max_loop_iterations=10**9)
    template = compiled(NESTED_LOOPS.replace("x", ""))  # no output: only the clock stops it
    start = time.perf_counter()
    with pytest.raises(RenderLimitError, match=r"took more than 0\.05 s \(the limit per render\)"):
        render_bounded(template, {}, 0, limits)
    assert time.perf_counter() - start < 1


# --- ordinary templates are untouched -----------------------------------------------------------

ORDINARY = (
    "{% macro quoted(text) %}'{{ text }}'{% endmacro %}"
    "Is this DNA from an H3-marked region? {{ sequence | dna }}\n"
    "Answer {% for choice in answer_choices %}{{ quoted(choice) }}"
    "{% if not loop.last %} or {% endif %}{% endfor %}.\nAnswer:"
)


@pytest.mark.parametrize("length", [20, 200_000], ids=["short", "longer_than_the_output_limit"])
def test_loops_and_macros_still_render(tmp_path: Path, length: int) -> None:
    template = _template(tmp_path, ORDINARY)
    sequence = ("ACGT" * length)[:length]
    row: dict[str, Any] = {"sequence": sequence, "label": "0"}
    out = render(template, row, where="rows.csv:2")
    expected = (
        f"Is this DNA from an H3-marked region? <dna>{sequence}</dna>\n"
        "Answer 'no' or 'yes'.\nAnswer:"
    )
    assert (out.prompt, out.answer, out.choices) == (expected, "no", ["no", "yes"])


def test_an_ordinary_template_lints_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "x/ordinary", ORDINARY)
    write_lock(tmp_path / LOCK_NAME, load_templates(tmp_path))
    assert main(["templates", "--root", str(tmp_path), "lint"]) == 0
    assert capsys.readouterr().out == "1 templates, no problems\n"
