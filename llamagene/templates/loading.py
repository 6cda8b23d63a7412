"""Loading prompt templates: YAML files of sandboxed Jinja that turn a task row into a prompt
and an answer.

Templates are data (promptsource / lm-evaluation-harness style). ``prompt_templates/<source>/
<name>.yaml`` holds a list of templates; ``include:`` pulls ``defaults`` (keys every template of
the file starts from) and ``vars`` (constant text a template may use) from ``_*.yaml`` files.
:func:`load_templates` reads a folder (or files) and reports every problem at once: bad keys,
duplicate ids (naming both files), include cycles. Each :class:`PromptTemplate` records the
files it was made from (its own and its includes) and ``text_hash``, the SHA-256 of what its
rendered text depends on, which the lock file pins to its version.
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
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from llamagene.config import load_yaml
from llamagene.errors import ConfigError
from llamagene.tasks import TaskInfo, TaskType
from llamagene.templates.problems import LintProblem, TemplateError, show_path
from llamagene.templates.sandbox import Refused, source_variables

CLASSIFICATION: frozenset[TaskType] = frozenset({"binary", "multiclass", "multilabel"})
FROM_TASK = "from_task"
#: Variables of a bound template beyond the row's fields (see the module docstring).
BOUND_VARIABLES = frozenset({"task_id", "task_description", "inputs", "target", "target_sequence"})
_ID = r"[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*"


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
    includes: tuple[Path, ...] = ()
    """The include files (``_*.yaml``) the template's defaults and vars came from."""

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the template is made from: its own, then its includes."""
        return (self.path, *self.includes)

    @property
    def is_classification(self) -> bool:
        return self.task_type in CLASSIFICATION

    @property
    def is_pattern(self) -> bool:
        return any(c in self.task for c in "*?[")

    def matches(self, task_id: str) -> bool:
        return self.task == task_id or (self.is_pattern and fnmatchcase(task_id, self.task))


# --- loading ----------------------------------------------------------------------------------


def shipped_templates_dir() -> Path:
    """The templates that come with llamagene: the checkout's ``prompt_templates/``, or the copy
    installed with the package (:func:`llamagene.shipped.shipped_dir`; a LlamageneError saying
    where they were expected when neither is there)."""
    from llamagene.shipped import shipped_dir

    return shipped_dir("prompt_templates")


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
    root: Path | None = None, paths: Sequence[Path] | None = None
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
    root: Path | None = None, paths: Sequence[Path] | None = None
) -> tuple[list[PromptTemplate], list[LintProblem]]:
    """Like :func:`load_templates`, but returns the problems instead of raising."""
    root = shipped_templates_dir() if root is None else root
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


@dataclass(frozen=True)
class _Parsed:
    """What loading one file gave, and the stats of every file read for it."""

    templates: list[PromptTemplate]
    problems: list[LintProblem]
    stamp: tuple[tuple[str, str], ...]


#: A file is parsed again only when it or one of its includes changed: a run loads the
#: templates several times (inputs, checks, the stage itself).
_PARSED: dict[Path, _Parsed] = {}


def _stamp(paths: Sequence[Path]) -> tuple[tuple[str, str], ...]:
    """Each file's content digest (reading a small file costs far less than parsing it)."""
    stamps = []
    for path in paths:
        try:
            digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        except OSError:
            digest = ""
        stamps.append((str(path), digest))
    return tuple(stamps)


def _load_file(path: Path) -> tuple[list[PromptTemplate], list[LintProblem]]:
    key = path.resolve()
    cached = _PARSED.get(key)
    if cached is None or _stamp([Path(p) for p, _ in cached.stamp]) != cached.stamp:
        included: list[Path] = []
        templates, problems = _parse_file(path, included)
        cached = _PARSED[key] = _Parsed(templates, problems, _stamp([path, *included]))
    return list(cached.templates), list(cached.problems)


def _parse_file(path: Path, included: list[Path]) -> tuple[list[PromptTemplate], list[LintProblem]]:
    """The templates of one file, and its problems; ``included`` gets every include read."""
    where = show_path(path)
    problems: list[str] = []
    raw = _read_yaml(path, problems)
    if raw is None:
        return [], [LintProblem(where, "", p) for p in problems]
    defaults, variables = _resolve_includes(path, raw, (path.resolve(),), problems, included)
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
        if tpl is not None:
            tpl = replace(tpl, includes=tuple(dict.fromkeys(included)))
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
    path: Path,
    raw: Mapping[str, Any],
    chain: tuple[Path, ...],
    problems: list[str],
    included: list[Path],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``defaults`` and ``vars`` of ``raw``'s includes (in order, later wins), then its own;
    every include file read is appended to ``included``."""
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
            included.append(path.parent / str(name))
            inc = _read_yaml(target, problems, prefix=f"include {name}: ")
            if inc is None:
                continue
            if "templates" in inc:
                problems.append(f"include {name}: include files hold defaults and vars only")
            inc_defaults, inc_vars = _resolve_includes(
                target, inc, (*chain, target), problems, included
            )
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
