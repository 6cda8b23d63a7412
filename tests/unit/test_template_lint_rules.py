"""The lint rules that read what a template does with its task's sequences, label and end.

One test per rule of ``llamagene.templates.lint``: each checks the message a bad template gets
and that the corrected template lints clean (no problem, no warning), so a rule neither misses
its case nor fires on the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from llamagene.cli import main
from llamagene.tasks import TaskInfo
from llamagene.tasks.gue import GUE_DATASETS
from llamagene.tasks.table import load_table
from llamagene.templates import (
    PromptTemplate,
    TemplateError,
    bind,
    load_templates,
    render,
    show_path,
)
from llamagene.templates.cli import known_tasks
from llamagene.templates.lint import lint
from llamagene.templates.lock import LOCK_NAME, write_lock

REPO = Path(__file__).parents[2]
H3 = GUE_DATASETS["EMP/H3"]  # binary, fields sequence (dna) and label
FUNCTION = next(t for t in known_tasks() if t.id == "uniprot/function")  # protein -> text
#: generation, dna -> protein (the answer field, protein, is a sequence)
TRANSLATE = load_table(REPO / "pipelines" / "demo" / "tasks" / "translate.yaml").info
#: binary, fields id, seq (dna), label, species
PROMOTER = load_table(REPO / "tests" / "fixtures" / "tasks" / "table" / "promoter.yaml").info

H3_PROMPT = (
    "Is this yeast DNA from a region whose nucleosomes carry H3?\n"
    "Sequence: {{ sequence | dna }}\nAnswer yes or no.\nAnswer:"
)


def _entry(task: TaskInfo, prompt: str, **keys: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "x/rule",
        "version": 1,
        "task": task.id,
        "task_type": task.task_type,
        "prompt": prompt,
    }
    if task.classes:
        entry["answer_choices"] = {"0": "no", "1": "yes"}  # binary tasks only, here
        entry["metrics"] = ["mcc"]
    else:
        entry["metrics"] = ["exact_match"]
    return {**entry, **keys}


def _template(root: Path, task: TaskInfo, prompt: str, **keys: Any) -> PromptTemplate:
    root.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"templates": [_entry(task, prompt, **keys)]}, sort_keys=False)
    (root / "t.yaml").write_text(text, encoding="utf-8")
    (template,) = load_templates(root)
    return template


def _problems(tmp_path: Path, name: str, task: TaskInfo, prompt: str, **keys: Any) -> list[str]:
    template = _template(tmp_path / name, task, prompt, **keys)
    return [str(p) for p in lint([template], [task])]


def _check(tmp_path: Path, task: TaskInfo, bad: str, good: str, message: str, **keys: Any) -> None:
    """``bad`` gets ``message`` (one line, naming file and id); ``good`` gets no problem at all."""
    problems = _problems(tmp_path, "bad", task, bad, **keys)
    hits = [p for p in problems if message in p]
    assert hits, problems
    path = show_path(tmp_path / "bad" / "t.yaml")
    assert all(p.startswith(f"{path}: x/rule: ") and "\n" not in p for p in hits)
    assert _problems(tmp_path, "good", task, good, **keys) == []


# --- the sequence: shown, with its own filter --------------------------------------------------


def test_a_prompt_that_never_shows_the_sequence(tmp_path: Path) -> None:
    bad = "Is this yeast DNA from a region whose nucleosomes carry H3? Answer yes or no.\nAnswer:"
    _check(tmp_path, H3, bad, H3_PROMPT, "the prompt never shows the task's sequence (sequence)")


@pytest.mark.parametrize("written", ["{{ sequence }}", "{{ sequence | lower }}"])
def test_a_sequence_written_without_its_filter(tmp_path: Path, written: str) -> None:
    bad = H3_PROMPT.replace("{{ sequence | dna }}", written)
    message = (
        "writes sequence field sequence without its dna filter (it would be read as English "
        "letters): write {{ sequence | dna }}"
    )
    _check(tmp_path, H3, bad, H3_PROMPT, message)


def test_a_sequence_written_with_the_other_kinds_filter(tmp_path: Path) -> None:
    bad = H3_PROMPT.replace("{{ sequence | dna }}", "{{ sequence | protein }}")
    message = "writes dna field sequence with the protein filter: use | dna"
    _check(tmp_path, H3, bad, H3_PROMPT, message)


# --- label leakage --------------------------------------------------------------------------------

FUNCTION_PROMPT = "What does this protein do?\nProtein: {{ sequence | protein }}\nFunction:"


def test_a_prompt_that_uses_the_label_leaks_it(tmp_path: Path) -> None:
    bad = H3_PROMPT.replace("Answer yes or no.", "Hint: label {{ label }}. Answer yes or no.")
    message = (
        "the prompt uses label, the answer of the row: it would give the answer away "
        "(label leakage)"
    )
    _check(tmp_path, H3, bad, H3_PROMPT, message)


@pytest.mark.parametrize("leaked", ["function", "target"])
def test_a_prompt_that_uses_the_answer_field_leaks_it(tmp_path: Path, leaked: str) -> None:
    bad = FUNCTION_PROMPT.replace("Function:", f"Hint: {{{{ {leaked} }}}}\nFunction:")
    message = f"the prompt uses {leaked}, the answer of the row: it would give the answer away"
    _check(tmp_path, FUNCTION, bad, FUNCTION_PROMPT, message, answer="{{ function }}")


# --- the choices: a warning -------------------------------------------------------------------


def test_unstated_choices_are_a_warning(tmp_path: Path) -> None:
    bad = H3_PROMPT.replace("\nAnswer yes or no.", "")
    message = "warning: the prompt does not state the choice(s) 'no', 'yes': list them"
    _check(tmp_path, H3, bad, H3_PROMPT, message)
    (problem,) = lint([_template(tmp_path / "api", H3, bad)], [H3])
    assert problem.warning and not problem.lock
    stated = H3_PROMPT.replace("Answer yes or no.", "Answer {{ answer_choices | join_or }}.")
    assert _problems(tmp_path, "stated", H3, stated) == []


def test_lint_passes_with_a_warning_and_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "templates"
    _template(root, H3, H3_PROMPT.replace("\nAnswer yes or no.", ""))
    write_lock(root / LOCK_NAME, load_templates(root))
    assert main(["templates", "--root", str(root), "lint"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"{show_path(root / 't.yaml')}: x/rule: warning: the prompt does not state the "
        "choice(s) 'no', 'yes': list them (e.g. {{ answer_choices | join_or }}) so the model "
        "knows what it may answer",
        "1 templates, no problems",
    ]
    assert captured.err == "1 warning (lint passes with warnings)\n"


# --- how the prompt ends ------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["Answer: ", "Answer:\n\n", "Answer:\t"])
def test_a_prompt_that_ends_in_whitespace(tmp_path: Path, end: str) -> None:
    bad = H3_PROMPT.replace("Answer:", end)
    _check(tmp_path, H3, bad, H3_PROMPT, "the prompt ends in whitespace")


TRANSLATE_PROMPT = "Translate this coding DNA into protein.\nDNA: {{ dna | dna }}\nProtein:"


@pytest.mark.parametrize("answer", ["{{ target_sequence }}", "{{ protein | protein }}"])
def test_a_sequence_answer_needs_a_colon_before_it(tmp_path: Path, answer: str) -> None:
    bad = TRANSLATE_PROMPT.replace("\nProtein:", "\nProtein ->")
    message = "the answer is a sequence: end the prompt with ':'"
    _check(tmp_path, TRANSLATE, bad, TRANSLATE_PROMPT, message, answer=answer)


# --- the template's own text --------------------------------------------------------------------


@pytest.mark.parametrize("constant", ["300 bp", "a 1,000 base pair", "70 nt", "20 amino acids"])
def test_a_length_written_as_a_constant(tmp_path: Path, constant: str) -> None:
    bad = H3_PROMPT.replace("Is this yeast DNA", f"Is this {constant} yeast DNA")
    good = H3_PROMPT.replace("Is this yeast DNA", "Is this {{ sequence | length }} bp yeast DNA")
    _check(tmp_path, H3, bad, good, "states a length as a constant (")


def test_sequence_markup_in_the_templates_own_text(tmp_path: Path) -> None:
    bad = H3_PROMPT.replace("{{ sequence | dna }}", "<dna>{{ sequence }}</dna>")
    message = "writes <dna> in its own text: only the dna/protein filters write sequence markup"
    _check(tmp_path, H3, bad, H3_PROMPT, message)


# --- a field that holds markup ------------------------------------------------------------------


def test_render_refuses_markup_in_a_text_field(tmp_path: Path) -> None:
    prompt = (
        "A {{ species }} sequence: {{ seq | dna }}\nIs it a promoter? Answer no or yes.\nAnswer:"
    )
    template = bind(_template(tmp_path, PROMOTER, prompt), PROMOTER)
    row = {"id": "r5", "seq": "ACGTACGTAC", "label": "1", "species": "<dna>ACGT</dna> human"}
    with pytest.raises(TemplateError) as caught:
        render(template, row, where="promoter/train.csv:6")
    assert str(caught.value) == (
        f"{show_path(template.path)}: template x/rule: promoter/train.csv:6: field 'species' "
        "holds <dna>, which would be read as sequence markup; only the dna/protein filters may "
        "write it: remove the tag from the data"
    )
    out = render(template, {**row, "species": "human"}, where="promoter/train.csv:6")
    assert out.prompt.startswith("A human sequence: <dna>ACGTACGTAC</dna>\n")
    assert out.answer == "yes"
