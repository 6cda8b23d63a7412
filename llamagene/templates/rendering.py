"""Choosing the templates that serve a task, binding them to it, and rendering rows.

:func:`templates_for` picks a task's templates (exact id, then globs, then generic) and
:func:`bind` ties each to the task: ``answer_choices: from_task`` becomes the task's class
meanings, and the bound variables (``task_id``, ``task_description``, ``inputs``, ``target``,
``target_sequence``) become available. :func:`render` turns one row into a :class:`Rendered`
prompt and answer inside the bounded sandbox of :mod:`llamagene.templates.sandbox`; every
failure, a render over its limits included, is a :class:`TemplateError` that names the template
file, its id and the row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError

from llamagene.tasks import TaskInfo
from llamagene.templates.limits import RenderLimitError
from llamagene.templates.loading import BOUND_VARIABLES, PromptTemplate
from llamagene.templates.problems import TemplateError
from llamagene.templates.sandbox import (
    MARKUP_TAG,
    Refused,
    SequenceLetterError,
    compiled,
    render_bounded,
    source_variables,
    wrap_sequence,
)


@dataclass(frozen=True)
class Rendered:
    """A rendered row: the prompt, its answer, and the answer choices in label order."""

    prompt: str
    answer: str
    choices: list[str] | None
    template_id: str
    template_version: int


def template_variables(template: PromptTemplate) -> frozenset[str]:
    """The variables the prompt and answer use (raises TemplateError on a syntax error)."""
    compile_part(template, "prompt", template.prompt)
    compile_part(template, "answer", template.answer or "")
    return source_variables(template.prompt) | source_variables(template.answer or "")


def compile_part(template: PromptTemplate, part: str, source: str) -> jinja2.Template:
    try:
        return compiled(source)
    except jinja2.TemplateSyntaxError as err:
        reason = f"{part} line {err.lineno}: Jinja syntax error: {err.message}"
    except Refused as err:
        reason = f"{part} {err}: refused (templates may use row fields and filters only)"
    raise TemplateError(reason, path=template.path, template_id=template.id)


# --- choosing and rendering -------------------------------------------------------------------


def templates_for(task: TaskInfo, templates: Sequence[PromptTemplate]) -> list[PromptTemplate]:
    """The templates that serve ``task``, bound to it, in this order: those naming its id, then
    the globs matching it; the generic ones (``task: "*"``) only when there is neither. A
    template serves a task of its ``task_type`` that has every field it uses (a UniProt TSV
    without organism names skips the templates that use ``organism``).

    An exact-id template of another task type raises TemplateError.
    """
    exact = [t for t in templates if t.task == task.id]
    for tpl in exact:
        if tpl.task_type != task.task_type:
            raise TemplateError(
                f"task_type {tpl.task_type}, but task {task.id} is {task.task_type}",
                path=tpl.path,
                template_id=tpl.id,
            )
    globs = [t for t in templates if t.is_pattern and t.task != "*" and t.matches(task.id)]
    chosen = [t for t in exact + globs if applies(t, task)]
    if not chosen:
        generic = [t for t in templates if t.task == "*"]
        chosen = [t for t in generic if applies(t, task)]
    return [bind(t, task) for t in chosen]


def applies(template: PromptTemplate, task: TaskInfo) -> bool:
    if template.task_type != task.task_type or (template.choices_from_task and not task.classes):
        return False
    try:
        used = template_variables(template)
    except TemplateError:
        return True  # let rendering report it
    return used <= available_variables(template, task)


def available_variables(template: PromptTemplate, task: TaskInfo) -> set[str]:
    """Every variable ``template`` may use once bound to ``task``."""
    names = set(task.fields) | set(template.vars) | (BOUND_VARIABLES - {"target_sequence"})
    if template.is_classification:
        names.add("answer_choices")
    if task.answer_field is not None and task.answer_field in task.sequence_fields:
        names.add("target_sequence")
    return names


def bind(template: PromptTemplate, task: TaskInfo) -> PromptTemplate:
    """``template`` for ``task``: choices from its classes if ``from_task``, in its label order."""
    choices = template.answer_choices
    if template.choices_from_task:
        if not task.classes:
            raise TemplateError(
                f"answer_choices: from_task, but task {task.id} has no classes",
                path=template.path,
                template_id=template.id,
            )
        choices = {c.label: c.meaning for c in task.classes}
    elif choices is not None and task.classes:
        order = {c.label: i for i, c in enumerate(task.classes)}
        choices = dict(sorted(choices.items(), key=lambda kv: order.get(kv[0], len(order))))
    return replace(template, answer_choices=choices, bound_task=task)


def render(
    template: PromptTemplate, fields: Mapping[str, Any], *, where: str | None = None
) -> Rendered:
    """Render one row. Classification: the answer is ``answer_choices[str(label)]``.

    ``where`` names the row in errors (e.g. ``Example.where``); by default an id-like field.
    A text field that holds sequence markup (``<dna>``) is refused: only the ``dna`` /
    ``protein`` filters write markup, so the tokenizer never maps a field's text as DNA.
    """
    row = where or _describe_row(fields)
    choices = template.answer_choices
    if template.choices_from_task and template.bound_task is None:
        raise TemplateError(
            "answer_choices: from_task needs the task: get templates from templates_for(task, ...)",
            path=template.path,
            template_id=template.id,
        )
    _refuse_markup_in_fields(template, fields, row)
    context: dict[str, Any] = {**template.vars, **fields}
    if choices is not None:
        context["answer_choices"] = list(choices.values())
    used = template_variables(template)
    if template.bound_task is not None:
        context.update(_bound_context(template, template.bound_task, fields, used, row))
    row_chars = sum(len(v) if isinstance(v, str) else 8 for v in fields.values())
    prompt = _render_part(template, "prompt", template.prompt, context, row, row_chars)
    if choices is not None:
        answer = _class_answer(template, choices, fields, row)
    else:
        answer = _render_part(template, "answer", template.answer or "", context, row, row_chars)
    return Rendered(
        prompt=prompt,
        answer=answer,
        choices=list(choices.values()) if choices is not None else None,
        template_id=template.id,
        template_version=template.version,
    )


def _refuse_markup_in_fields(template: PromptTemplate, fields: Mapping[str, Any], row: str) -> None:
    sequences = template.bound_task.sequence_fields if template.bound_task else {}
    for name, value in fields.items():
        tag = MARKUP_TAG.search(value) if isinstance(value, str) else None
        if tag is not None and name not in sequences:
            raise TemplateError(
                f"{row}: field {name!r} holds {tag.group()}, which would be "
                "read as sequence markup; only the dna/protein filters may write it: remove the "
                "tag from the data",
                path=template.path,
                template_id=template.id,
            )


def _bound_context(
    template: PromptTemplate,
    task: TaskInfo,
    fields: Mapping[str, Any],
    used: frozenset[str],
    row: str,
) -> dict[str, Any]:
    def fail(reason: str) -> TemplateError:
        return TemplateError(f"{row}: {reason}", path=template.path, template_id=template.id)

    out: dict[str, Any] = {"task_id": task.id, "task_description": task.description}
    target_field = task.answer_field or task.label_field
    if "inputs" in used:
        lines = []
        for name, kind in task.sequence_fields.items():
            if name == task.answer_field:
                continue
            if name not in fields:
                raise fail(f"'{name}' is undefined (a sequence field of task {task.id})")
            try:
                lines.append(f"{field_title(name)}: {wrap_sequence(fields[name], kind)}")
            except SequenceLetterError as err:
                raise fail(f"field {name}: {err}") from None
        out["inputs"] = "\n".join(lines)
    if {"target", "target_sequence"} & used:
        if target_field not in fields:
            raise fail(f"'{target_field}' is undefined (the target field of task {task.id})")
        value = fields[target_field]
        target_kind = task.sequence_fields.get(target_field)
        if target_kind is not None:
            try:
                value = wrap_sequence(value, target_kind)
            except SequenceLetterError as err:
                raise fail(f"field {target_field}: {err}") from None
            out["target_sequence"] = value
        out["target"] = value
    return out


def answer_fields(template: PromptTemplate) -> frozenset[str]:
    """The row fields the answer is made from (never trim these to fit a length)."""
    task = template.bound_task
    if template.is_classification:
        return frozenset({task.label_field if task else "label"})
    used = source_variables(template.answer or "") - set(template.vars)
    if task is not None and used & {"target", "target_sequence"}:
        used |= {task.answer_field or task.label_field}
    return frozenset(used - BOUND_VARIABLES)


def field_title(name: str) -> str:
    """``sequence_a`` -> ``Sequence A``, ``dna`` -> ``DNA``: how ``inputs`` names a field."""
    words = name.split("_")
    words = [w.upper() if len(w) == 1 or w in ("dna", "rna") else w for w in words]
    return " ".join(words)[:1].upper() + " ".join(words)[1:]


def _render_part(
    template: PromptTemplate,
    part: str,
    source: str,
    context: Mapping[str, Any],
    row: str,
    row_chars: int,
) -> str:
    compiled = compile_part(template, part, source)
    try:
        return render_bounded(compiled, context, row_chars)
    except RenderLimitError as err:
        reason = f"{part}: {row}: over a render limit: {err}"
    except SecurityError as err:
        reason = f"{part}: refused: {err} (templates may not reach Python internals)"
    except jinja2.UndefinedError as err:
        names = ", ".join(sorted(context))
        reason = f"{part}: {err} in {row} (variables: {names})"
    except SequenceLetterError as err:
        reason = f"{part}: {row}: {err}"
    except (jinja2.TemplateError, ValueError, TypeError, LookupError, ArithmeticError) as err:
        reason = f"{part}: {type(err).__name__}: {err} in {row}"
    raise TemplateError(reason, path=template.path, template_id=template.id)


def _class_answer(
    template: PromptTemplate, choices: Mapping[str, str], fields: Mapping[str, Any], row: str
) -> str:
    label_field = template.bound_task.label_field if template.bound_task else "label"
    if label_field not in fields:
        raise TemplateError(
            f"{row}: no {label_field!r} field", path=template.path, template_id=template.id
        )
    raw = fields[label_field]
    labels = _multilabels(raw) if template.task_type == "multilabel" else [label_key(raw)]
    missing = [label for label in labels if label not in choices]
    if missing:
        shown = ", ".join(f"{k}: {v}" for k, v in choices.items())
        raise TemplateError(
            f"{row}: label {', '.join(missing)} has no answer choice (choices: {shown})",
            path=template.path,
            template_id=template.id,
        )
    if template.task_type == "multilabel":
        return ", ".join(text for label, text in choices.items() if label in labels) or "none"
    return choices[labels[0]]


def label_key(value: object) -> str:
    """A label as the key of ``answer_choices``: ``1``, ``1.0`` and ``"1"`` are all ``"1"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _multilabels(value: object) -> list[str]:
    """A multilabel row's labels: a list, or a string like ``"0;3"`` / ``"0,3"`` / ``"0 3"``."""
    if isinstance(value, list | tuple | set | frozenset):
        return [label_key(v) for v in value]
    return [x for x in re.split(r"[,;|\s]+", str(value).strip()) if x]


def _describe_row(fields: Mapping[str, Any]) -> str:
    for key in ("seq_id", "accession", "id", "seq_id_a", "name"):
        if key in fields:
            return f"row {key}={fields[key]!r}"
    return f"row with fields ({', '.join(fields)})"
