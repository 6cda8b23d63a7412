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
    english: [{path: english/alpaca.jsonl, format: alpaca}]
    english_share: 0.1                 # of the training rows
    length: {max_tokens: 512, overflow: trim, trim_from: both}

Relative paths resolve against the recipe's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from llamagene.config import InputPath, StrictModel, format_validation_error, load_yaml
from llamagene.errors import ConfigError
from llamagene.tasks.registry import TaskSource


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


class EnglishEntry(StrictModel):
    """English instruction data mixed into the training split, so the model keeps its English."""

    path: InputPath
    format: Literal["alpaca", "chat"]


class LengthPolicy(StrictModel):
    """How rows longer than the model's context are handled; the answer is never cut."""

    max_tokens: int = Field(512, ge=16)
    """Prompt + answer + BOS + EOS, in merged-tokenizer tokens."""
    overflow: Literal["trim", "drop"] = "trim"
    """``trim``: shorten the prompt's sequences by ``trim_from`` until the row fits;
    ``drop``: leave the row out. Both are counted in the summary."""
    trim_from: Literal["both", "end", "start"] = "both"
    """``both`` keeps the centre (where GUE puts splice sites and TSSs); ``end`` keeps the start;
    ``start`` keeps the end."""
    min_sequence_chars: int = Field(20, ge=1)
    """A row whose sequence would have to shrink below this is dropped instead."""


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
    dedupe_against_test: bool = True
    """Drop training rows whose sequence appears in any task's test split."""


def load_sft_recipe(path: Path) -> SftRecipe:
    """Read and validate a recipe; ConfigError names the file and lists every problem."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["an instruction recipe must be a mapping with 'tasks'"])
    try:
        recipe = SftRecipe.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err)) from None
    problems = []
    if recipe.english_share > 0 and not recipe.english:
        problems.append("english_share > 0 but no english files are listed")
    for i, entry in enumerate(recipe.english):
        if not entry.path.is_file():
            problems.append(f"english[{i}].path: {entry.path} does not exist")
    if problems:
        raise ConfigError(str(path), problems)
    return recipe
