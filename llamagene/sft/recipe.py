"""Instruction-data recipes: which tasks, which templates, how much of each, and the length rule.

    recipe = load_sft_recipe(Path("data_recipes/sft_demo.yaml"))

A recipe is YAML (``data_recipes/README.md``)::

    seed: 42
    tasks:
      - data: {source: gue, root: /data/GUE, datasets: [prom/prom_core_all, splice/reconstructed]}
        templates: all                 # or template ids / globs: [gue/splice/*/site_type]
        weight: 1.0                    # 0.5 keeps half the training rows, 2 uses each twice
        max_train_examples: 20000
        reverse_complement: false      # add reverse complements (strand-symmetric tasks only)
        # signal: centre               # override what trimming keeps (the task declares it)
    english: [{path: english/alpaca.jsonl, format: alpaca}]
    english_share: 0.1                 # of the training rows
    length: {max_tokens: 512, overflow: trim, eval_overflow: error}
    leak_check: {enabled: true, min_overlap_bp: 50, min_overlap_aa: 30}
    eval_templates: one                # or all: every dev/test row through every template

Relative paths resolve against the recipe's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from llamagene.config import InputPath, StrictModel, format_validation_error, load_yaml
from llamagene.errors import ConfigError
from llamagene.tasks.registry import TaskSource
from llamagene.tasks.table import SignalSpec


class TaskEntry(StrictModel):
    """One task source of the mix and how it is used."""

    data: TaskSource
    """Where the task's rows come from (``source: gue | lucaone | uniprot | table``)."""
    templates: list[str] | Literal["all"] = "all"
    """Template ids or globs among the templates written for the task; ``all`` uses every one.
    Each row gets one template, drawn by the templates' ``weight`` (seeded, per row)."""
    weight: float = Field(1.0, gt=0)
    """Training rows used = weight x rows available (below 1: a seeded subsample; above 1:
    rows repeat, each time with a freshly drawn template)."""
    max_train_examples: int | None = Field(None, ge=1)
    """Cap on the training rows of each dataset of this source (after ``weight``)."""
    max_eval_examples: int | None = Field(None, ge=1)
    """Cap on the dev and test rows of each dataset (a seeded subsample)."""
    reverse_complement: bool = False
    """Add the reverse complement of every training DNA sequence as a further example, for
    tasks whose label does not depend on the strand (refused for the others)."""
    signal: SignalSpec | None = None
    """Where the signal lies, overriding the task's own declaration (``centre``, ``start``,
    ``end``, ``whole`` or ``{position: N}``): what trimming a too-long row keeps."""


class EnglishEntry(StrictModel):
    """English instruction data mixed into the training split, so the model keeps its English."""

    path: InputPath
    format: Literal["alpaca", "chat"]


def _refuse_key(value: Any, key: str, message: str) -> Any:
    """A key that older recipes used: say what replaced it rather than "extra inputs"."""
    if isinstance(value, dict) and key in value:
        raise ValueError(message)
    return value


class LengthPolicy(StrictModel):
    """How rows longer than the model's context are handled; the answer is never cut.

    A trimmed row keeps the part of its longest prompt sequence where the task's signal lies
    (:class:`llamagene.tasks.Signal`: GUE's promoter windows keep the transcription start site,
    splice sites the centre), and records its original length and the span it kept."""

    max_tokens: int = Field(512, ge=16)
    """Prompt + answer + BOS + EOS, in merged-tokenizer tokens."""
    overflow: Literal["trim", "drop"] = "trim"
    """Training rows: ``trim`` shortens the prompt's longest sequence around its signal until
    the row fits; ``drop`` leaves the row out. Both are counted in the summary."""
    eval_overflow: Literal["error", "drop", "trim"] = "error"
    """Dev and test rows, which scores are computed on: ``error`` (default) stops the build
    naming the task, the row and the limit, since a trimmed or missing test row changes the
    benchmark; ``drop`` and ``trim`` are explicit choices, counted in the summary."""
    min_sequence_chars: int = Field(20, ge=1)
    """A row whose sequence would have to shrink below this is dropped instead."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, value: Any) -> Any:
        return _refuse_key(
            value,
            "trim_from",
            "trim_from is gone: each task declares where its signal lies (GUE's built in; "
            "`signal:` in a table task YAML or in the recipe's task entry)",
        )


class LeakCheck(StrictModel):
    """Which train and dev rows count as leaks of a test row (they are dropped and counted)."""

    enabled: bool = True
    """Drop train and dev rows whose sequence is related to a test sequence of any task."""
    min_overlap_bp: int = Field(50, ge=8)
    """DNA: a sequence inside another (either strand) counts when it is at least this long."""
    min_overlap_aa: int = Field(30, ge=5)
    """Protein: a sequence inside another counts when it is at least this long."""


class SftRecipe(StrictModel):
    """A whole instruction-data recipe."""

    description: str = ""
    seed: int = 42
    """Seeds template draws, subsampling and the order of the training rows."""
    tasks: list[TaskEntry] = Field(min_length=1)
    english: list[EnglishEntry] = Field(default_factory=list)
    english_share: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of the training rows that are English instructions (0: none)."""
    length: LengthPolicy = LengthPolicy()
    leak_check: LeakCheck = LeakCheck()
    """Train and dev rows related to a test sequence (equal, reverse complement, containing or
    contained) are dropped; ``summary.md`` counts each kind per task."""
    eval_templates: Literal["one", "all"] = "one"
    """``one``: each dev/test row gets one template, drawn like training rows; ``all``: each
    dev/test row is rendered through every template of its task (rows name their template), so
    evaluation can report per-template scores and their median."""

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, value: Any) -> Any:
        return _refuse_key(
            value,
            "dedupe_against_test",
            "dedupe_against_test is now leak_check: {enabled: true|false, min_overlap_bp: 50, "
            "min_overlap_aa: 30}",
        )


def load_sft_recipe(path: Path) -> SftRecipe:
    """Read and validate a recipe; ConfigError names the file and lists every problem."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["an instruction recipe must be a mapping with 'tasks'"])
    try:
        recipe = SftRecipe.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err, model=SftRecipe)) from None
    problems = []
    if recipe.english_share > 0 and not recipe.english:
        problems.append("english_share > 0 but no english files are listed")
    for i, entry in enumerate(recipe.english):
        if not entry.path.is_file():
            problems.append(f"english[{i}].path: {entry.path} does not exist")
    if problems:
        raise ConfigError(str(path), problems)
    return recipe
