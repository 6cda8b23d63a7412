"""Made-up tasks and rows for rendering a template without data (``templates show``, ``lint``).

:func:`placeholder_task` builds a task with exactly the fields a template uses (sequence fields
from the filters applied to them), and :func:`placeholder_row` fills any task's fields with
valid example values: short DNA and protein sequences, the first class label, an example answer.
"""

from __future__ import annotations

from typing import Any

from llamagene.alphabets import SequenceKind
from llamagene.tasks import ClassInfo, TaskInfo
from llamagene.templates.loading import BOUND_VARIABLES, PromptTemplate
from llamagene.templates.rendering import template_variables
from llamagene.templates.sandbox import filtered_names, source_variables

SEQUENCE_FILTERS = frozenset({"dna", "protein", "seq"})
EXAMPLE_SEQUENCES: dict[SequenceKind, str] = {
    "dna": "ACGTTAGCCATGGCTAGCTA", "protein": "MKTAYIAKQRQISFVKSHFS"
}  # fmt: skip


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
