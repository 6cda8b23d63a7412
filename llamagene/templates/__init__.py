"""Prompt templates: YAML files of sandboxed Jinja that turn a task row into a prompt and an answer.

Templates are data (promptsource / lm-evaluation-harness style), kept under
``prompt_templates/<source>/<name>.yaml`` (format: ``prompt_templates/README.md``). One template
renders both the training example and the evaluation prompt, so the two cannot drift: train on
``prompt`` then ``answer`` (encoded separately, so the loss mask is exact); evaluate by scoring
each of ``choices`` as the continuation of ``prompt``.

The package, by job:

- :mod:`.loading`: read template files and their includes (:func:`load_templates`);
- :mod:`.rendering`: pick a task's templates, bind them to it, render rows (:func:`render`);
- :mod:`.sandbox` and :mod:`.limits`: the Jinja sandbox, the sequence filters, and the limits
  on what one render may cost;
- :mod:`.problems`: :class:`TemplateError` and :class:`LintProblem`, one line each;
- :mod:`.lint` and :mod:`.placeholders`: checks that need no training, on real or made-up rows;
- :mod:`.lock`: ``templates.lock.json``, which pins each version to one text;
- :mod:`.cli`: ``llamagene templates ls | show | new | lint | preview``.

Rendering runs in the sandbox (strict undefined variables, no ``_`` attributes, bounded output,
loops, recursion and time): a variable the row lacks, a Python internal (``{{ ''.__class__
}}``), a letter that is not DNA / protein or a render over its limits stops with a
:class:`TemplateError` naming the file, the template id and the row. Templates never cut a
sequence: ``build_sft``'s length rule trims, by the task's declared signal, and records it.
"""

from llamagene.templates.loading import (
    BOUND_VARIABLES,
    CLASSIFICATION,
    PromptTemplate,
    collect_templates,
    load_templates,
    shipped_templates_dir,
)
from llamagene.templates.problems import LintProblem, TemplateError, show_path
from llamagene.templates.rendering import (
    Rendered,
    answer_fields,
    applies,
    available_variables,
    bind,
    compile_part,
    field_title,
    label_key,
    render,
    template_variables,
    templates_for,
)

__all__ = [
    "BOUND_VARIABLES",
    "CLASSIFICATION",
    "LintProblem",
    "PromptTemplate",
    "Rendered",
    "TemplateError",
    "answer_fields",
    "applies",
    "available_variables",
    "bind",
    "collect_templates",
    "compile_part",
    "field_title",
    "label_key",
    "load_templates",
    "render",
    "shipped_templates_dir",
    "show_path",
    "template_variables",
    "templates_for",
]
