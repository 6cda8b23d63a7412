"""Checks for prompt templates that need no training, and the lock file that pins their versions.

:func:`lint` reports duplicate ids and, per template: Jinja syntax errors (with the line) and
reaches into Python internals; unknown metrics; ``vars`` that shadow the bound variables; empty,
padded, duplicate or TODO answer choices and text; a task type that differs from the task's;
variables the task lacks; answer choices missing for, or extra to, the task's class labels;
sequence fields cut, sliced or reflowed; rows that fail to render; a prompt that ends mid-word,
or (where the answer is a sequence) without ``:`` or a newline before it; exact-id templates of
unknown tasks and globs that match tasks but serve none. Each template is rendered for every
known task it serves, with sample rows where given and placeholder rows
(:func:`placeholder_task`, :func:`placeholder_row`) otherwise.

:func:`lock_problems` compares the templates with ``prompt_templates/templates.lock.json``
(id -> version and SHA-256 of what the rendered text depends on): text changed without a version
bump, a version that went down, and templates missing from or stale in the lock. ``llamagene
templates lint`` runs both; ``--update-lock`` rewrites the lock (:func:`write_lock`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import nodes

from llamagene.alphabets import SequenceKind
from llamagene.tasks import ClassInfo, TaskInfo
from llamagene.template_jinja import filtered_names, parsed_source, source_variables
from llamagene.templates import (
    BOUND_VARIABLES,
    LintProblem,
    PromptTemplate,
    Rendered,
    TemplateError,
    applies,
    available_variables,
    bind,
    compile_part,
    render,
    show_path,
    template_variables,
)

LOCK_NAME = "templates.lock.json"
LOCK_FORMAT = "llamagene-templates-lock"
KNOWN_METRICS = frozenset({
    "accuracy", "mcc", "f1", "f1_macro", "precision", "recall", "auroc", "spearman", "pearson",
    "mse", "mae", "exact_match", "bleu", "rouge_l",
})  # fmt: skip
SEQUENCE_FILTERS = frozenset({"dna", "protein", "seq"})
EXAMPLE_SEQUENCES: dict[SequenceKind, str] = {
    "dna": "ACGTTAGCCATGGCTAGCTA", "protein": "MKTAYIAKQRQISFVKSHFS"
}  # fmt: skip


# --- placeholders (show, lint without data) ----------------------------------------------------


def placeholder_task(template: PromptTemplate) -> TaskInfo:
    """A made-up task with exactly the fields ``template`` uses, for rendering an example."""
    used = template_variables(template) - set(template.vars) - {"answer_choices"}
    filters: dict[str, set[str]] = {}
    for source in (template.prompt, template.answer or ""):
        for name, names in filtered_names(source).items():
            filters.setdefault(name, set()).update(names)
    sequence_fields: dict[str, SequenceKind] = {
        name: "protein" if "protein" in f else "dna"
        for name, f in filters.items()
        if f & SEQUENCE_FILTERS and name in used
    }
    if "inputs" in used and not sequence_fields:
        sequence_fields["sequence"] = "dna"
    answer_field: str | None = None
    if "target_sequence" in used:
        answer_field = "target_seq"
        sequence_fields[answer_field] = "protein"
    elif template.task_type == "generation":
        answer_vars = sorted(source_variables(template.answer or "") - set(template.vars))
        answer_field = answer_vars[0] if len(answer_vars) == 1 else "answer"
    fields = {*(used - BOUND_VARIABLES), *sequence_fields, "label"}
    if answer_field is not None:
        fields.add(answer_field)
    classes: tuple[ClassInfo, ...] = ()
    if template.answer_choices is not None:
        classes = tuple(ClassInfo(k, v) for k, v in template.answer_choices.items())
    elif template.choices_from_task:
        meanings = ["first class", "second class", "third class"]
        count = 2 if template.task_type == "binary" else 3
        classes = tuple(ClassInfo(str(i), meanings[i]) for i in range(count))
    task_id = template.task.replace("*", "example") if template.is_pattern else template.task
    return TaskInfo(
        id=task_id,
        task_type=template.task_type,
        description=f"An example {template.task_type} task (placeholder values).",
        fields=tuple(sorted(fields)),
        sequence_fields=sequence_fields,
        metric=template.metrics[0],
        classes=classes,
        answer_field=answer_field,
    )


def placeholder_row(task: TaskInfo) -> dict[str, Any]:
    """A row of made-up but valid values for every field of ``task``."""
    row: dict[str, Any] = {}
    for name in task.fields:
        kind = task.sequence_fields.get(name)
        if kind is not None:
            row[name] = EXAMPLE_SEQUENCES[kind]
        elif name == task.answer_field:
            row[name] = "An example answer."
        elif name == task.label_field:
            default: Any = {"regression": 0.75, "token": "0011100"}.get(task.task_type, "0")
            row[name] = task.classes[0].label if task.classes else default
        elif name.startswith("seq_type"):
            suffix = name[len("seq_type") :]
            kinds = [k for n, k in task.sequence_fields.items() if n.endswith(suffix)]
            row[name] = "prot" if kinds[:1] == ["protein"] else "gene"
        else:
            row[name] = f"example {name.replace('_', ' ')}"
    return row


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
        problems += [LintProblem(where, tpl.id, p) for p in [*syntax, *_lint_alone(tpl)]]
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
            problems += [LintProblem(where, tpl.id, p) for p in _lint_with(tpl, task, rows)]
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


def _lint_with(tpl: PromptTemplate, task: TaskInfo, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if tpl.task_type != task.task_type:
        return [f"task_type {tpl.task_type}, but task {task.id} is {task.task_type}"]
    problems: list[str] = []
    used = template_variables(tpl)
    missing = sorted(used - available_variables(tpl, task))
    if missing:
        fields = ", ".join(task.fields)
        return [f"uses {', '.join(missing)}, which task {task.id} lacks (fields: {fields})"]
    if tpl.choices_from_task and not task.classes:
        return [f"answer_choices: from_task, but task {task.id} has no classes"]
    if tpl.answer_choices is not None and task.classes:
        labels = task.class_labels()
        lacking = [
            f"{c.label} ({c.meaning})" for c in task.classes if c.label not in tpl.answer_choices
        ]
        if lacking:
            problems.append(f"no answer choice for class label(s) {', '.join(lacking)}")
        extra = [k for k in tpl.answer_choices if k not in labels]
        if extra:
            problems.append(
                f"answer choice(s) for label(s) {', '.join(extra)}, which task {task.id} lacks "
                f"(labels: {', '.join(labels)})"
            )
    for source in (tpl.prompt, tpl.answer or ""):
        for name, filters in filtered_names(source).items():
            if name in task.sequence_fields and filters & {"truncate", "wordwrap", "center"}:
                problems.append(f"cuts or reflows sequence field {name}: never cut a sequence")
    for node in parsed_source(tpl.prompt + "\n" + (tpl.answer or "")).find_all(nodes.Getitem):
        name = node.node.name if isinstance(node.node, nodes.Name) else ""
        if isinstance(node.arg, nodes.Slice) and name in task.sequence_fields:
            problems.append(f"slices sequence field {name}: never cut a sequence")
    bound = bind(tpl, task)
    rendered: list[Rendered] = []
    for row in rows:
        try:
            rendered.append(render(bound, row))
        except TemplateError as err:
            problems.append(err.reason)
            break
    if rendered:
        first = rendered[0]
        end = first.prompt.rstrip(" \t")
        if _sequence_answer(tpl, task) and not end.endswith(("\n", ":")):
            problems.append(
                "the answer is a sequence: end the prompt with ':' or a newline, a separator "
                "that keeps the prompt's last word out of the sequence's first tokens"
            )
        elif first.prompt[-1:].isalnum():
            problems.append(
                f"the prompt ends mid-word ({first.prompt.splitlines()[-1][-20:]!r}): end it with "
                "a separator "
                "such as 'Answer:' so the answer starts a new word"
            )
    return problems


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


# --- the lock file ------------------------------------------------------------------------------


def lock_problems(
    templates: Sequence[PromptTemplate], previous: Mapping[str, tuple[int, str]]
) -> list[LintProblem]:
    """Changed text without a version bump; templates missing from, or stale in, the lock."""
    problems: list[LintProblem] = []
    fix = "run `llamagene templates lint --update-lock`"
    for tpl in templates:
        where = show_path(tpl.path)
        if tpl.id not in previous:
            problems.append(LintProblem(where, tpl.id, f"not in {LOCK_NAME}: {fix}", lock=True))
            continue
        version, text_hash = previous[tpl.id]
        if text_hash != tpl.text_hash and tpl.version <= version:
            problems.append(
                LintProblem(
                    where,
                    tpl.id,
                    f"text changed but version not bumped ({LOCK_NAME} has version {version} "
                    f"with another text): set version: {version + 1}",
                )
            )
        elif tpl.version < version:
            problems.append(LintProblem(where, tpl.id, f"version went down from {version}"))
        elif (tpl.version, tpl.text_hash) != (version, text_hash):
            message = f"{LOCK_NAME} has version {version}: {fix}"
            problems.append(LintProblem(where, tpl.id, message, lock=True))
    ids = {t.id for t in templates}
    for gone in sorted(set(previous) - ids):
        message = f"in {LOCK_NAME} but no template has this id: {fix}"
        problems.append(LintProblem(LOCK_NAME, gone, message, lock=True))
    return problems


def read_lock(path: Path) -> dict[str, tuple[int, str]]:
    """id -> (version, text_hash) from a lock file; {} if there is none."""
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != LOCK_FORMAT:
            raise ValueError(f"format is not {LOCK_FORMAT!r}")
        return {k: (int(v["version"]), str(v["sha256"])) for k, v in raw["templates"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise TemplateError(f"not a template lock file ({err}): rewrite it with --update-lock",
                            path=path) from None  # fmt: skip


def lock_text(templates: Sequence[PromptTemplate]) -> str:
    """The lock file for ``templates``: sorted, so an unchanged set gives identical bytes."""
    entries = {t.id: {"version": t.version, "sha256": t.text_hash} for t in templates}
    body = {"format": LOCK_FORMAT, "templates": dict(sorted(entries.items()))}
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def write_lock(path: Path, templates: Sequence[PromptTemplate]) -> None:
    from llamagene.manifest import write_text_atomic

    write_text_atomic(path, lock_text(templates))
