"""Checks for prompt templates that need no training (``llamagene templates lint``).

:func:`lint` reports duplicate ids and, per template:

- Jinja syntax errors (with the line), reaches into Python internals, sources over the size limit;
- unknown metrics; ``vars`` that shadow the bound variables; empty, padded, duplicate or TODO
  answer choices and text; sequence markup (``<dna>``) written in the template's own text;
- lengths written as constants (``300 bp``): a trimmed sequence would make them false;
- a task type that differs from the task's; variables the task lacks; answer choices missing
  for, or extra to, the task's class labels;
- sequence fields cut, sliced or reflowed; written without their ``dna`` / ``protein`` filter
  (they would be tokenized as English letters) or with the other kind's filter;
- a prompt that never shows the task's sequence, or that uses the label or answer field (it
  would give the answer away);
- rows that fail to render, a render over the sandbox's limits included;
- a prompt that ends in whitespace, mid-word, or (where the answer is a sequence) without ``:``;
- a classification prompt that does not state its choices (a warning: lint still passes);
- exact-id templates of unknown tasks and globs that match tasks but serve none.

Each template is rendered for every known task it serves, with sample rows where given and
placeholder rows (:mod:`llamagene.templates.placeholders`) otherwise. The lock file checks are
:mod:`llamagene.templates.lock`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jinja2 import nodes

from llamagene.tasks import TaskInfo
from llamagene.templates.loading import BOUND_VARIABLES, PromptTemplate
from llamagene.templates.lock import lock_problems
from llamagene.templates.placeholders import SEQUENCE_FILTERS, placeholder_row, placeholder_task
from llamagene.templates.problems import LintProblem, TemplateError, show_path
from llamagene.templates.rendering import (
    Rendered,
    applies,
    available_variables,
    bind,
    compile_part,
    render,
    template_variables,
)
from llamagene.templates.sandbox import (
    MARKUP_TAG,
    filtered_names,
    literal_text,
    parsed_source,
    source_variables,
)

KNOWN_METRICS = frozenset({
    "accuracy", "mcc", "f1", "f1_macro", "precision", "recall", "auroc", "spearman", "pearson",
    "mse", "mae", "exact_match", "bleu", "rouge_l",
})  # fmt: skip
#: A length written as a number in the template's own text: "300 bp", "20 amino acids". One-digit
#: numbers are facts of biology, not sequence lengths ("a codon is 3 nucleotides").
CONSTANT_LENGTH = re.compile(
    r"\b[1-9](?:\d|,\d{3})+\s*"
    r"(?:bp|kb|nt|aa|bases?|base pairs?|nucleotides?|residues?|amino acids?)\b",
    re.IGNORECASE,
)
_MARKUP_SPAN = re.compile(r"<(dna|protein)>.*?</\1>", re.DOTALL)


# --- lint -----------------------------------------------------------------------------------


def lint(
    templates: Sequence[PromptTemplate],
    tasks: Sequence[TaskInfo] = (),
    sample_rows: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    previous: Mapping[str, tuple[int, str]] | None = None,
) -> list[LintProblem]:
    """Every problem found in ``templates``, checked against ``tasks`` and ``sample_rows``
    (task id -> rows; placeholder rows where none) and the lock (``previous``: id -> (version,
    text_hash)); an exact-id template of an unknown task is checked against a placeholder."""
    problems: list[LintProblem] = []
    seen: dict[str, PromptTemplate] = {}
    sources = {t.id.split("/")[0] for t in tasks}
    by_id = {t.id: t for t in tasks}
    for tpl in templates:
        where = show_path(tpl.path)
        if tpl.id in seen:
            other = show_path(seen[tpl.id].path)
            problems.append(LintProblem(where, tpl.id, f"duplicate id: also in {other}"))
        seen.setdefault(tpl.id, tpl)
        syntax = _syntax_problems(tpl)
        problems += [LintProblem(where, tpl.id, p) for p in syntax or _lint_alone(tpl)]
        if syntax:
            continue
        targets = [t for t in tasks if tpl.matches(t.id)]
        if not tpl.is_pattern and tpl.task not in by_id and tpl.task.split("/")[0] in sources:
            problems.append(LintProblem(where, tpl.id, f"task {tpl.task} is not a known task"))
            continue
        if tpl.is_pattern:
            matching = [t for t in targets if t.task_type == tpl.task_type]
            targets = [t for t in matching if applies(tpl, t)]
            if matching and not targets and tpl.task != "*":
                message = f"matches {len(matching)} {tpl.task_type} task(s) (e.g. {matching[0].id})"
                message += " but none has every field it uses"
                problems.append(LintProblem(where, tpl.id, message))
                continue
        if not targets:
            targets = [placeholder_task(tpl)]
        for task in targets:
            rows = (sample_rows or {}).get(task.id) or [placeholder_row(task)]
            problems += [
                LintProblem(where, tpl.id, message, warning=warning)
                for message, warning in _lint_with(tpl, task, rows)
            ]
    if previous is not None:
        problems += lock_problems(templates, previous)
    return problems


def _syntax_problems(tpl: PromptTemplate) -> list[str]:
    problems = []
    for part, source in (("prompt", tpl.prompt), ("answer", tpl.answer or "")):
        try:
            compile_part(tpl, part, source)
        except TemplateError as err:
            problems.append(err.reason)
    return problems


def _lint_alone(tpl: PromptTemplate) -> Iterator[str]:
    for metric in tpl.metrics:
        if metric not in KNOWN_METRICS:
            yield f"unknown metric {metric!r} (known: {', '.join(sorted(KNOWN_METRICS))})"
    shadowed = set(tpl.vars) & (BOUND_VARIABLES | {"answer_choices"})
    if shadowed:
        yield f"vars {sorted(shadowed)} shadow built-in variables"
    texts: dict[str, str] = {}
    for label, text in (tpl.answer_choices or {}).items():
        if not text.strip():
            yield f"answer choice for label {label} is empty"
        elif text != text.strip():
            yield f"answer choice {text!r} has spaces around it"
        if text in texts:
            yield f"labels {texts[text]} and {label} share the answer {text!r}"
        texts.setdefault(text, label)
    if "TODO" in tpl.prompt + (tpl.answer or "") + "".join(texts):
        yield "still has a TODO from the scaffold: write the text"
    own_text = [*literal_text(tpl.prompt), *literal_text(tpl.answer or ""), *tpl.vars.values()]
    own_text += list(tpl.answer_choices.values()) if tpl.answer_choices else []
    for text in own_text:
        tag = MARKUP_TAG.search(text)
        if tag:
            yield (
                f"writes {tag.group()} in its own text: only the dna/protein filters write "
                "sequence markup"
            )
            break
    for text in [*literal_text(tpl.prompt), *tpl.vars.values()]:
        constant = CONSTANT_LENGTH.search(text)
        if constant:
            yield (
                f"states a length as a constant ({constant.group()!r}): a trimmed sequence would "
                "make it false; write it from the sequence ({{ sequence | length }})"
            )
            break


def _lint_with(
    tpl: PromptTemplate, task: TaskInfo, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[str, bool]]:
    """(message, is_warning) for ``tpl`` bound to ``task`` and rendered for ``rows``."""
    if tpl.task_type != task.task_type:
        return [(f"task_type {tpl.task_type}, but task {task.id} is {task.task_type}", False)]
    used = template_variables(tpl)
    missing = sorted(used - available_variables(tpl, task))
    if missing:
        fields = ", ".join(task.fields)
        return [
            (f"uses {', '.join(missing)}, which task {task.id} lacks (fields: {fields})", False)
        ]
    if tpl.choices_from_task and not task.classes:
        return [(f"answer_choices: from_task, but task {task.id} has no classes", False)]
    problems = [(p, False) for p in [*_choice_problems(tpl, task), *_source_problems(tpl, task)]]
    bound = bind(tpl, task)
    rendered: list[tuple[Mapping[str, Any], Rendered]] = []
    for row in rows:
        try:
            rendered.append((row, render(bound, row)))
        except TemplateError as err:
            problems.append((err.reason, False))
            break
    if rendered:
        problems += [(p, False) for p in _output_problems(tpl, task, *rendered[0])]
        problems += [(p, True) for p in _unstated_choices(bound, rendered[0][1])]
    return problems


def _choice_problems(tpl: PromptTemplate, task: TaskInfo) -> Iterator[str]:
    if tpl.answer_choices is None or not task.classes:
        return
    labels = task.class_labels()
    lacking = [
        f"{c.label} ({c.meaning})" for c in task.classes if c.label not in tpl.answer_choices
    ]
    if lacking:
        yield f"no answer choice for class label(s) {', '.join(lacking)}"
    extra = [k for k in tpl.answer_choices if k not in labels]
    if extra:
        yield (
            f"answer choice(s) for label(s) {', '.join(extra)}, which task {task.id} lacks "
            f"(labels: {', '.join(labels)})"
        )


def _input_sequences(task: TaskInfo) -> dict[str, str]:
    return {k: v for k, v in task.sequence_fields.items() if k != task.answer_field}


def _source_problems(tpl: PromptTemplate, task: TaskInfo) -> Iterator[str]:
    """What the template's source does with the task's fields (no rendering needed)."""
    for source in (tpl.prompt, tpl.answer or ""):
        for name, filters in filtered_names(source).items():
            kind = task.sequence_fields.get(name)
            if kind is not None and filters & {"truncate", "wordwrap", "center"}:
                yield f"cuts or reflows sequence field {name}: never cut a sequence"
            other = "protein" if kind == "dna" else "dna"
            if kind is not None and other in filters:
                yield f"writes {kind} field {name} with the {other} filter: use | {kind}"
    for node in parsed_source(tpl.prompt + "\n" + (tpl.answer or "")).find_all(nodes.Getitem):
        name = node.node.name if isinstance(node.node, nodes.Name) else ""
        if isinstance(node.arg, nodes.Slice) and name in task.sequence_fields:
            yield f"slices sequence field {name}: never cut a sequence"
    prompt_vars = source_variables(tpl.prompt)
    inputs = _input_sequences(task)
    if inputs and not prompt_vars & {*inputs, "inputs"}:
        yield f"the prompt never shows the task's sequence ({', '.join(inputs)})"
    answer_vars = {task.label_field, "target", "target_sequence"}
    if task.answer_field is not None:
        answer_vars.add(task.answer_field)
    leaked = sorted(prompt_vars & answer_vars - set(inputs))
    if leaked:
        yield (
            f"the prompt uses {', '.join(leaked)}, the answer of the row: it would give the "
            "answer away (label leakage)"
        )


def _output_problems(
    tpl: PromptTemplate, task: TaskInfo, row: Mapping[str, Any], out: Rendered
) -> Iterator[str]:
    """What the rendered prompt shows: sequences outside markup, its end."""
    bare = _MARKUP_SPAN.sub("", out.prompt).upper()
    for name, kind in _input_sequences(task).items():
        value = str(row.get(name, ""))
        if len(value) >= 8 and value.upper() in bare:
            yield (
                f"writes sequence field {name} without its {kind} filter (it would be read as "
                f"English letters): write {{{{ {name} | {kind} }}}}"
            )
    if out.prompt != out.prompt.rstrip():
        yield (
            f"the prompt ends in whitespace ({out.prompt[-12:]!r}): end it on its last word or "
            "separator ('Answer:'); `|-` keeps YAML from adding a newline"
        )
    elif _sequence_answer(tpl, task) and not out.prompt.endswith(":"):
        yield (
            "the answer is a sequence: end the prompt with ':' (e.g. 'Protein:'), a separator "
            "that keeps the prompt's last word out of the sequence's first tokens"
        )
    elif out.prompt[-1:].isalnum():
        yield (
            f"the prompt ends mid-word ({out.prompt.splitlines()[-1][-20:]!r}): end it with a "
            "separator such as 'Answer:' so the answer starts a new word"
        )


def _unstated_choices(bound: PromptTemplate, out: Rendered) -> Iterator[str]:
    """A classification prompt should say what the answers may be (or use answer_choices)."""
    if not out.choices or "answer_choices" in source_variables(bound.prompt):
        return
    text = out.prompt.lower()
    unstated = [
        c for c in out.choices if not re.search(rf"(?<!\w){re.escape(c.lower())}(?!\w)", text)
    ]
    if unstated:
        yield (
            f"the prompt does not state the choice(s) {', '.join(map(repr, unstated))}: list "
            "them (e.g. {{ answer_choices | join_or }}) so the model knows what it may answer"
        )


def _sequence_answer(tpl: PromptTemplate, task: TaskInfo) -> bool:
    """Whether the answer renders from a sequence (generation / token templates)."""
    if tpl.answer is None:
        return False
    used = source_variables(tpl.answer)
    if used & set(task.sequence_fields) or "target_sequence" in used:
        return True
    if "target" in used and task.answer_field in task.sequence_fields:
        return True
    return any(f & SEQUENCE_FILTERS for f in filtered_names(tpl.answer).values())
