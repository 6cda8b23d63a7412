"""Prompt templates: YAML files of sandboxed Jinja that turn a task row into a prompt and an answer.

Templates are data (promptsource / lm-evaluation-harness style). ``prompt_templates/<source>/
<name>.yaml`` holds a list of templates; ``include:`` pulls ``defaults`` (keys every template of
the file starts from) and ``vars`` (constant text a template may use) from ``_*.yaml`` files.
One template renders both the training example and the evaluation prompt, so the two cannot
drift: train on ``prompt`` then ``answer`` (encoded separately, so the loss mask is exact);
evaluate by scoring each of ``choices`` as the continuation of ``prompt``. A prompt never ends
mid-word, and ends with ``:`` or a newline where the answer is a sequence.

Rendering runs in the sandbox of :mod:`llamagene.template_jinja` (strict undefined variables,
no ``_`` attributes, the filters ``dna`` / ``protein`` / ``seq(kind)`` that write a sequence as
``<dna>ACGT</dna>`` / ``<protein>MK</protein>`` markup): a variable the row lacks, a Python
internal (``{{ ''.__class__ }}``) or a letter that is not DNA / protein stops with a
:class:`TemplateError` naming the file, the template id and the row. Templates never cut a
sequence.

Which templates serve a task (:func:`templates_for`): the templates naming its exact id, then
the glob templates (``gue/EMP/*``) of its type whose variables the task has; the generic
templates (``task: "*"``) of its type only when there is neither. Templates come back *bound* to
the task, which adds the variables ``task_id``, ``task_description``, ``inputs`` (every input
sequence, one per line: ``Sequence A: <protein>...</protein>``), ``target`` (the answer or label
field; in markup if it is a sequence) and ``target_sequence`` (only where the answer is a
sequence), and resolves ``answer_choices: from_task`` to the task's class meanings.

:mod:`llamagene.template_lint` checks what can be checked without training (syntax, variables,
choices against the task's classes, task types, metrics, the separator before sequence answers,
versions against ``prompt_templates/templates.lock.json``); ``llamagene templates lint`` runs it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2.exceptions import SecurityError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from llamagene.config import load_yaml
from llamagene.errors import ConfigError, LlamageneError
from llamagene.tasks import TaskInfo, TaskType
from llamagene.template_jinja import (
    Refused,
    SequenceLetterError,
    compiled,
    source_variables,
    wrap_sequence,
)

PROMPT_TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "prompt_templates"
CLASSIFICATION: frozenset[TaskType] = frozenset({"binary", "multiclass", "multilabel"})
FROM_TASK = "from_task"
#: Variables of a bound template beyond the row's fields (see the module docstring).
BOUND_VARIABLES = frozenset({"task_id", "task_description", "inputs", "target", "target_sequence"})
_ID = r"[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*"


class TemplateError(LlamageneError):
    """A template cannot be loaded or rendered; the message names the file and template id."""

    def __init__(
        self, reason: str, *, path: Path | str | None = None, template_id: str | None = None
    ) -> None:
        self.reason = reason
        self.path = path
        self.template_id = template_id
        where = f"{show_path(path)}: " if path is not None else ""
        where += f"template {template_id}: " if template_id else ""
        super().__init__(where + reason)


@dataclass(frozen=True)
class PromptTemplate:
    """One template, includes resolved. ``text_hash`` covers what the rendered text depends on."""

    id: str
    version: int
    task: str
    """A task id, a glob (``gue/EMP/*``) or ``*`` (generic: any task of ``task_type``)."""
    task_type: TaskType
    prompt: str
    answer: str | None
    """Jinja for the target of regression / token / generation templates."""
    answer_choices: dict[str, str] | None
    """label -> answer text, in label order (classification); None until bound if from_task."""
    metrics: tuple[str, ...]
    weight: float
    path: Path
    text_hash: str
    choices_from_task: bool = False
    vars: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    bound_task: TaskInfo | None = field(default=None, repr=False)

    @property
    def is_classification(self) -> bool:
        return self.task_type in CLASSIFICATION

    @property
    def is_pattern(self) -> bool:
        return any(c in self.task for c in "*?[")

    def matches(self, task_id: str) -> bool:
        return self.task == task_id or (self.is_pattern and fnmatchcase(task_id, self.task))


@dataclass(frozen=True)
class Rendered:
    """A rendered row: the prompt, its answer, and the answer choices in label order."""

    prompt: str
    answer: str
    choices: list[str] | None
    template_id: str
    template_version: int


@dataclass(frozen=True)
class LintProblem:
    """One problem; ``lock`` problems are the ones ``lint --update-lock`` fixes."""

    path: str
    template_id: str
    message: str
    lock: bool = False

    def __str__(self) -> str:
        if self.template_id:
            return f"{self.path}: {self.template_id}: {self.message}"
        return f"{self.path}: {self.message}"


# --- loading ----------------------------------------------------------------------------------


class _Spec(BaseModel):
    """One template entry after ``defaults`` are applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=f"^{_ID}$")
    version: StrictInt = Field(ge=1)
    task: str = Field(min_length=1)
    task_type: TaskType
    prompt: str = Field(min_length=1)
    answer: str | None = None
    answer_choices: dict[str, str] | Literal["from_task"] | None = None
    metrics: list[str] = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)
    vars: dict[str, str] = Field(default_factory=dict)
    description: str = ""


_FILE_KEYS = {"include", "defaults", "vars", "templates"}


def load_templates(
    root: Path = PROMPT_TEMPLATES_DIR, paths: Sequence[Path] | None = None
) -> list[PromptTemplate]:
    """Every template under ``root`` (or in ``paths``: files or folders), includes resolved.

    Raises TemplateError listing every problem (a bad key, a duplicate id naming both files...).
    """
    templates, problems = collect_templates(root, paths)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        raise TemplateError(f"{len(problems)} {noun} in prompt templates:\n{lines}")
    return templates


def collect_templates(
    root: Path = PROMPT_TEMPLATES_DIR, paths: Sequence[Path] | None = None
) -> tuple[list[PromptTemplate], list[LintProblem]]:
    """Like :func:`load_templates`, but returns the problems instead of raising."""
    templates: list[PromptTemplate] = []
    problems: list[LintProblem] = []
    first: dict[str, PromptTemplate] = {}
    for path in _template_files(root, paths, problems):
        loaded, file_problems = _load_file(path)
        problems += file_problems
        for tpl in loaded:
            if tpl.id in first:
                other = show_path(first[tpl.id].path)
                problems.append(
                    LintProblem(show_path(path), tpl.id, f"duplicate id: also in {other}")
                )
                continue
            first[tpl.id] = tpl
            templates.append(tpl)
    return templates, problems


def _template_files(
    root: Path, paths: Sequence[Path] | None, problems: list[LintProblem]
) -> list[Path]:
    files: list[Path] = []
    for path in [root] if paths is None else paths:
        if path.is_dir():
            found = [p for p in path.rglob("*.yaml") if not p.name.startswith("_")]
            files += sorted(found, key=lambda p: p.relative_to(path).as_posix())
        elif path.is_file() and path.name.startswith("_"):
            problems.append(
                LintProblem(show_path(path), "", "an include file: it holds no templates")
            )
        elif path.is_file():
            files.append(path)
        else:
            problems.append(LintProblem(show_path(path), "", "no such file or folder"))
    return files


def _load_file(path: Path) -> tuple[list[PromptTemplate], list[LintProblem]]:
    where = show_path(path)
    problems: list[str] = []
    raw = _read_yaml(path, problems)
    if raw is None:
        return [], [LintProblem(where, "", p) for p in problems]
    defaults, variables = _resolve_includes(path, raw, (path.resolve(),), problems)
    entries = raw.get("templates")
    if not isinstance(entries, list) or not entries:
        problems.append("needs `templates:`, a list of templates")
        entries = []
    for key in ("id", "version"):
        if key in defaults:
            problems.append(f"defaults: `{key}` belongs to each template, not to defaults")
    out = [LintProblem(where, "", p) for p in problems]
    templates: list[PromptTemplate] = []
    for i, entry in enumerate(entries):
        tid = str(entry.get("id", f"templates[{i}]")) if isinstance(entry, dict) else ""
        tid = tid or f"templates[{i}]"
        entry_problems: list[str] = []
        tpl = _build(path, defaults, variables, entry, entry_problems)
        out += [LintProblem(where, tid, p) for p in entry_problems]
        if tpl is not None and not entry_problems:
            templates.append(tpl)
    return templates, out


def _read_yaml(path: Path, problems: list[str], prefix: str = "") -> dict[str, Any] | None:
    """The file's mapping, or None with the problems (``prefix`` names an include) appended."""
    try:
        raw = load_yaml(path)  # duplicate keys are errors, with their line
    except ConfigError as err:
        problems += [prefix + p for p in err.problems]
        return None
    if not isinstance(raw, dict):
        problems.append(prefix + "must be a YAML mapping (`templates:`, `include:`, ...)")
        return None
    unknown = sorted(set(raw) - _FILE_KEYS)
    if unknown:
        problems.append(f"{prefix}unknown top-level key(s) {unknown} (known: {sorted(_FILE_KEYS)})")
    for key in ("defaults", "vars"):
        if not isinstance(raw.get(key) or {}, dict):
            problems.append(f"{prefix}`{key}` must be a mapping")
            raw[key] = {}
    return raw


def _resolve_includes(
    path: Path, raw: Mapping[str, Any], chain: tuple[Path, ...], problems: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``defaults`` and ``vars`` of ``raw``'s includes (in order, later wins), then its own."""
    defaults: dict[str, Any] = {}
    variables: dict[str, Any] = {}
    names = raw.get("include") or []
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problems.append("include: give a file name or a list of file names")
        names = []
    for name in names:
        target = (path.parent / str(name)).resolve()
        if not Path(str(name)).name.startswith("_"):
            problems.append(f"include {name}: name include files _*.yaml (never loaded alone)")
        elif target in chain:
            cycle = " -> ".join(p.name for p in (*chain, target))
            problems.append(f"include cycle: {cycle}")
        elif not target.is_file():
            problems.append(f"include {name}: no such file {show_path(target)}")
        else:
            inc = _read_yaml(target, problems, prefix=f"include {name}: ")
            if inc is None:
                continue
            if "templates" in inc:
                problems.append(f"include {name}: include files hold defaults and vars only")
            inc_defaults, inc_vars = _resolve_includes(target, inc, (*chain, target), problems)
            defaults.update(inc_defaults)
            variables.update(inc_vars)
    defaults.update(raw.get("defaults") or {})
    variables.update(raw.get("vars") or {})
    return defaults, variables


def _build(
    path: Path,
    defaults: Mapping[str, Any],
    variables: Mapping[str, Any],
    entry: object,
    problems: list[str],
) -> PromptTemplate | None:
    if not isinstance(entry, dict):
        problems.append("each template must be a mapping")
        return None
    merged: dict[str, Any] = {**defaults, **entry}
    merged["vars"] = {**variables, **(entry.get("vars") or {})}
    choices = merged.get("answer_choices")
    if isinstance(choices, dict):
        for label, text in choices.items():
            if isinstance(text, bool):
                problems.append(
                    f"answer_choices: {label}: YAML read {text} as a boolean: quote it "
                    f'("yes", "no")'
                )
        merged["answer_choices"] = {str(k): v for k, v in choices.items()}
    if problems:
        return None
    try:
        spec = _Spec.model_validate(merged)
    except ValidationError as err:
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"]) or "template"
            problems.append(f"{loc}: {e['msg']}")
        return None
    if spec.task_type in CLASSIFICATION:
        if spec.answer_choices is None:
            problems.append("classification templates need answer_choices (or `from_task`)")
        if spec.answer is not None:
            problems.append("classification templates take answer_choices, not answer")
    else:
        if spec.answer is None:
            problems.append(f"{spec.task_type} templates need `answer:` (Jinja for the target)")
        if spec.answer_choices is not None:
            problems.append(f"{spec.task_type} templates take answer, not answer_choices")
    if problems:
        return None
    choices_map = None
    if isinstance(spec.answer_choices, dict):
        choices_map = dict(sorted(spec.answer_choices.items(), key=lambda kv: _label_sort(kv[0])))
    return PromptTemplate(
        id=spec.id,
        version=spec.version,
        task=spec.task,
        task_type=spec.task_type,
        prompt=spec.prompt,
        answer=spec.answer,
        answer_choices=choices_map,
        metrics=tuple(spec.metrics),
        weight=spec.weight,
        path=path,
        text_hash=_text_hash(spec),
        choices_from_task=spec.answer_choices == FROM_TASK,
        vars=spec.vars,
        description=spec.description,
    )


def _label_sort(label: str) -> tuple[int, int, str]:
    """Numeric labels in numeric order, others after them in the order written."""
    return (0, int(label), "") if re.fullmatch(r"-?\d+", label) else (1, 0, "")


def _text_hash(spec: _Spec) -> str:
    """SHA-256 of what the rendered text depends on (not version, weight, metrics, notes)."""
    try:
        used = source_variables(spec.prompt) | source_variables(spec.answer or "")
    except (jinja2.TemplateError, Refused):
        used = frozenset(spec.vars)
    payload = {
        "task": spec.task,
        "task_type": spec.task_type,
        "prompt": spec.prompt,
        "answer": spec.answer,
        "answer_choices": spec.answer_choices,
        "vars": {k: spec.vars[k] for k in sorted(spec.vars) if k in used},
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


# --- Jinja (the sandbox itself is llamagene.template_jinja) -----------------------------------


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
    """
    row = where or _describe_row(fields)
    choices = template.answer_choices
    if template.choices_from_task and template.bound_task is None:
        raise TemplateError(
            "answer_choices: from_task needs the task: get templates from templates_for(task, ...)",
            path=template.path,
            template_id=template.id,
        )
    context: dict[str, Any] = {**template.vars, **fields}
    if choices is not None:
        context["answer_choices"] = list(choices.values())
    used = template_variables(template)
    if template.bound_task is not None:
        context.update(_bound_context(template, template.bound_task, fields, used, row))
    prompt = _render_part(template, "prompt", template.prompt, context, row)
    if choices is not None:
        answer = _class_answer(template, choices, fields, row)
    else:
        answer = _render_part(template, "answer", template.answer or "", context, row)
    return Rendered(
        prompt=prompt,
        answer=answer,
        choices=list(choices.values()) if choices is not None else None,
        template_id=template.id,
        template_version=template.version,
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
    template: PromptTemplate, part: str, source: str, context: Mapping[str, Any], row: str
) -> str:
    compiled = compile_part(template, part, source)
    try:
        return compiled.render(context)
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


def show_path(path: Path | str | None) -> str:
    """A path relative to the working directory where it lies below it."""
    if path is None:
        return ""
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(p)
