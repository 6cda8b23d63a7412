"""``llamagene templates``: list, show, scaffold, lint and preview the prompt templates.

    llamagene templates ls [--task ID]
    llamagene templates show ID
    llamagene templates new SOURCE/TASK --type TYPE
    llamagene templates lint [PATH ...] [--update-lock]
    llamagene templates preview ID [-n 5] [--task ID] [--data PATH] [--split S] [--tokenizer DIR]

Every command reads the templates under ``--root`` (default: the repository's
``prompt_templates/``). ``lint`` checks them against the tasks llamagene knows without data (the
28 GUE datasets, ``uniprot/function``) and against ``<root>/templates.lock.json``; it exits 1 with
one line per problem. ``preview`` renders real rows when ``--data`` gives the task's data (a GUE
folder, a LucaOne task folder, a UniProt file or a table task YAML), placeholder rows otherwise,
and counts tokens with the merged tokenizer when ``--tokenizer`` gives one.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from llamagene.errors import LlamageneError
from llamagene.tasks import SPLITS, TASK_TYPES, TaskInfo
from llamagene.templates.lint import lint
from llamagene.templates.loading import (
    PromptTemplate,
    collect_templates,
    load_templates,
    shipped_templates_dir,
)
from llamagene.templates.lock import LOCK_NAME, lock_text, read_lock, write_lock
from llamagene.templates.placeholders import placeholder_row, placeholder_task
from llamagene.templates.problems import TemplateError
from llamagene.templates.rendering import bind, render, templates_for

if TYPE_CHECKING:
    from llamagene.sft.lengths import TokenCounter


def main(argv: Sequence[str], *, debug: bool = False) -> int:
    args = _parser().parse_args(list(argv))
    try:
        if args.root is None:
            args.root = shipped_templates_dir()
        code: int = args.run(args)
        return code
    except LlamageneError as err:
        if debug or os.environ.get("LLAMAGENE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamagene templates",
        description="List, show, scaffold, lint and preview prompt templates "
        "(format: prompt_templates/README.md).",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the templates folder (default: the repository's prompt_templates/)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls = sub.add_parser("ls", help="list templates: id, version, task, type, file")
    ls.add_argument("--task", metavar="ID", help="only the templates that serve this task")
    ls.set_defaults(run=_ls)
    show = sub.add_parser("show", help="a template's definition and an example rendering")
    show.add_argument("id", metavar="ID")
    show.set_defaults(run=_show)
    new = sub.add_parser("new", help="write a scaffold to fill in: <root>/SOURCE/TASK.yaml")
    new.add_argument("task", metavar="SOURCE/TASK", help="the task id, e.g. gue/EMP/H3")
    new.add_argument("--type", required=True, choices=TASK_TYPES, dest="task_type")
    new.set_defaults(run=_new)
    check = sub.add_parser("lint", help="check templates; exit 1 with one line per problem")
    check.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="files or folders")
    check.add_argument(
        "--update-lock",
        action="store_true",
        help=f"rewrite <root>/{LOCK_NAME} once nothing but the lock is out of date",
    )
    check.set_defaults(run=_lint)
    preview = sub.add_parser("preview", help="render rows, with their token counts")
    preview.add_argument("id", metavar="ID")
    preview.add_argument("-n", type=int, default=5, help="how many rows (default 5)")
    preview.add_argument("--task", metavar="ID", help="the task, for a glob or generic template")
    preview.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="the task's data: GUE folder, LucaOne task folder, UniProt file or table task YAML",
    )
    preview.add_argument("--split", default="train", choices=SPLITS)
    preview.add_argument(
        "--tokenizer", type=Path, metavar="DIR", help="merged tokenizer folder (merge_vocab)"
    )
    preview.set_defaults(run=_preview)
    return parser


def known_tasks() -> list[TaskInfo]:
    """The tasks whose TaskInfo exists without data: GUE's 28 datasets and uniprot/function."""
    from llamagene.tasks import gue, uniprot

    function = TaskInfo(
        id=uniprot.TASK_ID,
        task_type="generation",
        description="describe the function of a protein from its sequence (UniProt)",
        fields=uniprot.FIELDS,
        sequence_fields={"sequence": "protein"},
        metric="rouge_l",
        answer_field="function",
    )
    return [*gue.GUE_DATASETS.values(), function]


def _ls(args: argparse.Namespace) -> int:
    templates = load_templates(args.root)
    if args.task:
        task = _known_task(args.task)
        if task is not None:
            templates = templates_for(task, templates)
        else:
            print(f"{args.task} is not a known task: matching by id and glob only", file=sys.stderr)
            matching = [t for t in templates if t.matches(args.task)]
            templates = sorted(matching, key=lambda t: (t.is_pattern, t.task == "*"))
    rows = [("ID", "VERSION", "TASK", "TYPE", "FILE")]
    rows += [
        (t.id, str(t.version), t.task, t.task_type, _rel(t.path, args.root)) for t in templates
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[4]]))
    return 0


def _show(args: argparse.Namespace) -> int:
    template = _find(load_templates(args.root), args.id)
    definition: dict[str, Any] = {
        "id": template.id,
        "version": template.version,
        "task": template.task,
        "task_type": template.task_type,
        "prompt": template.prompt,
    }
    if template.answer is not None:
        definition["answer"] = template.answer
    if template.choices_from_task:
        definition["answer_choices"] = "from_task"
    elif template.answer_choices is not None:
        definition["answer_choices"] = template.answer_choices
    definition["metrics"] = list(template.metrics)
    definition["weight"] = template.weight
    if template.vars:
        definition["vars"] = dict(template.vars)
    print(f"# {_rel(template.path, args.root)} (includes and defaults applied)")
    print(yaml.dump(definition, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True), end="")
    task = _example_task(template)
    bound = bind(template, task)
    out = render(bound, placeholder_row(task))
    print(f"\n# rendered for {task.id} with placeholder values")
    print(out.prompt)
    print(f"# answer: {out.answer}")
    if out.choices is not None:
        print(f"# choices: {' | '.join(out.choices)}")
    return 0


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as ``|-`` blocks, as the template files do."""


def _str_block(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_block)


_SCAFFOLD_CHOICES = {
    "binary": '{"0": "no", "1": "yes"}   # TODO: label -> answer text, or from_task',
    "multiclass": "from_task   # the task's class meanings; or {label: answer text}",
    "multilabel": "from_task   # the task's class meanings; or {label: answer text}",
}
_SCAFFOLD_ANSWER = {
    "regression": '"{{ label | round(3) }}"',
    "token": '"{{ label }}"',
    "generation": '"{{ TODO_answer_field }}"   # the field that holds the answer',
}
_SCAFFOLD_METRICS = {
    "binary": "[mcc, accuracy, f1]",
    "multiclass": "[mcc, accuracy, f1_macro]",
    "multilabel": "[f1_macro, precision, recall]",
    "regression": "[spearman, pearson, mse]",
    "token": "[accuracy]",
    "generation": "[exact_match, rouge_l]",
}


def scaffold(task_id: str, task_type: str) -> str:
    """The text ``templates new`` writes: one template with TODOs that lint refuses until done."""
    choices = (
        "      Answer {{ answer_choices | join_or }}.\n" if task_type in _SCAFFOLD_CHOICES else ""
    )
    answer = (
        f"    answer_choices: {_SCAFFOLD_CHOICES[task_type]}\n"
        if task_type in _SCAFFOLD_CHOICES
        else f"    answer: {_SCAFFOLD_ANSWER[task_type]}\n"
    )
    return (
        f"# Prompt templates for {task_id} ({task_type}); the format: prompt_templates/README.md.\n"
        "# Fill in every TODO, add a second template, then run `llamagene templates lint` and\n"
        "# `llamagene templates lint --update-lock`.\n"
        "templates:\n"
        f"  - id: {task_id}/TODO_name\n"
        "    version: 1\n"
        f"    task: {task_id}\n"
        f"    task_type: {task_type}\n"
        "    prompt: |-\n"
        "      TODO: ask the question in words specific to this task.\n"
        "      Sequence: {{ sequence | dna }}\n"
        f"{choices}"
        "      Answer:\n"
        f"{answer}"
        f"    metrics: {_SCAFFOLD_METRICS[task_type]}\n"
    )


def _new(args: argparse.Namespace) -> int:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)+", args.task):
        raise TemplateError(f"{args.task!r}: give SOURCE/TASK, e.g. gue/EMP/H3 or table/my_task")
    path = args.root / f"{args.task}.yaml"
    if path.exists():
        raise TemplateError("already exists: edit it, or remove it first", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(scaffold(args.task, args.task_type), encoding="utf-8")
    print(f"wrote {path}: fill in the TODOs, then run `llamagene templates lint`")
    return 0


def _lint(args: argparse.Namespace) -> int:
    if args.update_lock and args.paths:
        raise TemplateError("--update-lock checks every template: give no PATH")
    templates, problems = collect_templates(args.root, args.paths or None)
    lock_path = args.root / LOCK_NAME
    previous = read_lock(lock_path)
    if args.paths:  # a subset: compare only its templates with the lock
        ids = {t.id for t in templates}
        previous = {k: v for k, v in previous.items() if k in ids}
    problems += lint(templates, known_tasks(), previous=previous)
    warnings = [p for p in problems if p.warning]
    problems = [p for p in problems if not p.warning]
    if args.update_lock and not [p for p in problems if not p.lock]:
        text = lock_text(templates)
        if not lock_path.exists() or lock_path.read_text(encoding="utf-8") != text:
            write_lock(lock_path, templates)
            print(f"wrote {lock_path} ({len(templates)} templates)")
        problems = []
    for problem in [*problems, *warnings]:
        print(problem)
    if warnings:
        noun = "warning" if len(warnings) == 1 else "warnings"
        print(f"{len(warnings)} {noun} (lint passes with warnings)", file=sys.stderr)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        print(f"{len(templates)} templates, {len(problems)} {noun}", file=sys.stderr)
        return 1
    print(f"{len(templates)} templates, no problems")
    return 0


def _preview(args: argparse.Namespace) -> int:
    template = _find(load_templates(args.root), args.id)
    task_id = args.task or (None if template.is_pattern else template.task)
    if args.data is not None:
        task, rows = _data_rows(template, task_id, args.data, args.split, args.n)
    else:
        task = (_known_task(task_id) if task_id else None) or placeholder_task(template)
        rows = [(f"placeholder row {i + 1}", placeholder_row(task)) for i in range(min(args.n, 1))]
        print(f"# no --data: rendering placeholder values for {task.id}")
    bound = bind(template, task)
    counter = _token_counter(args.tokenizer)
    if counter is None:
        print("# no --tokenizer: lengths are characters, not tokens")
    for where, fields in rows:
        out = render(bound, fields, where=where)
        if counter is not None:
            (tokens,) = counter.count([(out.prompt, out.answer)])
            lengths = f"{tokens} tokens (in the prompt format, as build_sft counts a row)"
        else:
            lengths = f"{len(out.prompt)} + {len(out.answer)} characters (prompt + answer)"
        print(f"--- {where}: {lengths}")
        print(out.prompt)
        print(f">>> {out.answer}")
    return 0


def _data_rows(
    template: PromptTemplate, task_id: str | None, data: Path, split: str, n: int
) -> tuple[TaskInfo, list[tuple[str, dict[str, Any]]]]:
    """Rows of ``split`` from the task loaders (``llamagene.tasks.registry``)."""
    from pydantic import TypeAdapter, ValidationError

    from llamagene.tasks.registry import TaskSource, load_tasks

    if data.suffix in (".yaml", ".yml"):
        spec: dict[str, Any] = {"source": "table", "spec": data}
    elif task_id is None:
        raise TemplateError("a glob or generic template: give --task ID (or a table task YAML)")
    elif task_id.startswith("gue/"):
        spec = {"source": "gue", "root": data, "datasets": [task_id]}
    elif task_id.startswith("lucaone/"):
        name = task_id.split("/", 1)[1]
        spec = {"source": "lucaone", "dir": data, "name": name, "task_type": template.task_type}
    elif task_id.startswith("uniprot/"):
        spec = {"source": "uniprot", "path": data}
    else:
        raise TemplateError(f"{task_id}: give --data as a table task YAML for this task")
    try:
        source = TypeAdapter(TaskSource).validate_python(spec)
    except ValidationError as err:
        raise TemplateError(f"--data {data}: {err}") from None
    task = load_tasks([source])[0]
    if split not in task.splits():
        raise TemplateError(f"task {task.info.id} has no {split} split ({task.splits()})")
    examples = itertools.islice(task.examples(split), n)
    return task.info, [(ex.where, dict(ex.fields)) for ex in examples]


def _token_counter(tokenizer_dir: Path | None) -> TokenCounter | None:
    if tokenizer_dir is None:
        return None
    from llamagene.sft.lengths import TokenCounter

    for name in ("tokenizer.json", "tokenizer.model"):
        if not (tokenizer_dir / name).is_file():
            raise TemplateError(
                f"--tokenizer {tokenizer_dir}: no {name}; give merge_vocab's tokenizer folder "
                "(runs/<name>/merge_vocab/tokenizer)"
            )
    return TokenCounter(tokenizer_dir)


def _example_task(template: PromptTemplate) -> TaskInfo:
    """The first known task the template serves (not for generic ones), else a placeholder."""
    if template.task != "*":
        for task in known_tasks():
            if template.matches(task.id) and task.task_type == template.task_type:
                return task
    return placeholder_task(template)


def _known_task(task_id: str) -> TaskInfo | None:
    return next((t for t in known_tasks() if t.id == task_id), None)


def _find(templates: Iterable[PromptTemplate], template_id: str) -> PromptTemplate:
    templates = list(templates)
    for template in templates:
        if template.id == template_id:
            return template
    import difflib

    close = difflib.get_close_matches(template_id, [t.id for t in templates], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else " (llamagene templates ls)"
    raise TemplateError(f"no template {template_id!r}{hint}")


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)
