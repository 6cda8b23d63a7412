"""Data recipes: the sources of a pretraining corpus, their weights, caps and seed.

    recipe = load_recipe(Path("data_recipes/demo_pretrain.yaml"))   # ConfigError lists problems
    recipe_inputs(recipe)   # {"sources.dna.paths[0]": Path(...)}: what the manifest hashes

A recipe is YAML (see ``data_recipes/README.md``)::

    seed: 42
    validation_fraction: 0.01
    sources:
      - {name: genomes, kind: dna, paths: [genomes/], weight: 0.4, window_chars: 4096}
      - {name: uniprot, kind: protein, paths: [uniprot_sprot.fasta.gz], weight: 0.3}
      - {name: english, kind: jsonl, paths: [english.jsonl.gz], weight: 0.3, text_field: text}

Relative paths resolve against the recipe's folder; ``pkg://package/path`` reads package data.
:mod:`llamagene.training.corpus` turns a recipe into packed training blocks.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from llamagene.config import InputPath, StrictModel, format_validation_error, load_yaml
from llamagene.errors import ConfigError

SUFFIXES = {
    "dna": (".fa", ".fasta", ".fna", ".ffn", ".fq", ".fastq"),
    "protein": (".fa", ".fasta", ".faa"),
    "text": (".txt",),
    "jsonl": (".jsonl",),
}
SEQUENCE_KEYS = {"window_chars", "iupac", "n_run_min_length", "protein_ambiguous"}


class SourceConfig(StrictModel):
    """One source of documents in a data recipe."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    """Unique within the recipe; also seeds this source's validation split and sampling."""
    kind: Literal["dna", "protein", "text", "jsonl"]
    paths: list[InputPath] = Field(min_length=1)
    """FASTA/FASTQ (plain or gzip) for dna/protein, text for text, JSONL for jsonl. A folder
    stands for its files (recursively) ending in the kind's usual suffixes (+ .gz)."""
    weight: float = Field(1.0, gt=0)
    """Relative share of the training tokens (``weight / sum of weights``)."""
    max_chars: int | None = Field(None, ge=1)
    """Stop reading this source after this many document characters (reported in stats)."""
    window_chars: int = Field(4096, ge=1)
    """dna/protein: records are cut into documents of at most this many residues."""
    min_doc_chars: int = Field(16, ge=1)
    """Shorter documents (paragraphs, lines, record tails) are dropped and counted."""
    text_field: str = "text"
    """jsonl: the field that holds a document."""
    iupac: Literal["to_n", "error"] = "to_n"
    """dna: IUPAC ambiguity codes become N, or are an error."""
    n_run_min_length: int = Field(10, ge=0)
    """dna: N runs at least this long (assembly gaps) are skipped and end a document."""
    protein_ambiguous: Literal["keep", "to_x", "error"] = "keep"
    """protein: B, Z, J, U, O kept, mapped to X, or an error."""

    @model_validator(mode="after")
    def _keys_fit_kind(self) -> SourceConfig:
        unused = set() if self.kind == "jsonl" else {"text_field"}
        if self.kind in ("text", "jsonl"):
            unused |= SEQUENCE_KEYS
        else:
            unused |= {"protein_ambiguous"} if self.kind == "dna" else {"iupac", "n_run_min_length"}
        if unused & self.model_fields_set:
            keys = ", ".join(sorted(unused & self.model_fields_set))
            raise ValueError(f"{keys}: not used by {self.kind} sources")
        return self

    def files(self) -> list[Path]:
        """The input files, folders expanded (sorted, hidden files skipped)."""
        out: list[Path] = []
        for path in self.paths:
            if not path.is_dir():
                out.append(path)
                continue
            ends = tuple(s + z for s in SUFFIXES[self.kind] for z in ("", ".gz"))
            found = (p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(ends))
            out.extend(sorted(p for p in found if not p.name.startswith(".")))
        return out


class DataRecipe(StrictModel):
    """A pretraining mix: sources, weights, caps, split and size."""

    description: str = ""
    """Free text; not part of the cache key."""
    sources: list[SourceConfig] = Field(min_length=1)
    seed: int = 42
    """Seeds the validation split, the sampling of each source and the packing order."""
    validation_fraction: float = Field(0.01, ge=0, lt=1)
    """Share of each source's documents held out (by hash: stable across runs and resumes)."""
    min_validation_documents: int = Field(1, ge=0)
    """Hold out at least this many records per source that has two or more (a FASTA record
    with all its windows, a text paragraph, a JSONL line: records are never split)."""
    total_tokens: int | None = Field(None, ge=1)
    """Training tokens after mixing; None: the most for which no source repeats."""

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        problem = _duplicates([s.name for s in sources])
        if problem:
            raise ValueError(problem)
        return sources


def _duplicates(names: list[Any]) -> str | None:
    dups = sorted({str(n) for n in names if names.count(n) > 1})
    return f"duplicate source names: {', '.join(dups)}" if dups else None


def load_recipe(path: Path, check_files: bool = True) -> DataRecipe:
    """Read and validate a recipe; ConfigError lists every problem (and missing input)."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["a data recipe must be a mapping with a 'sources' list"])
    ctx = {"base_dir": path.resolve().parent}
    problems: list[str] = []
    recipe: DataRecipe | None = None
    sources: list[SourceConfig] = []
    try:
        recipe = DataRecipe.model_validate(data, context=ctx)
        sources = recipe.sources
    except ValidationError as err:
        problems += format_validation_error(err, model=DataRecipe)
        raw_sources = data.get("sources")
        raw_sources = raw_sources if isinstance(raw_sources, list) else []
        for raw in raw_sources:
            with contextlib.suppress(ValidationError):  # check files of the valid sources too
                sources.append(SourceConfig.model_validate(raw, context=ctx))
        problem = _duplicates([r.get("name") for r in raw_sources if isinstance(r, dict)])
        if problem and not any(problem in p for p in problems):
            problems.append(f"sources: {problem}")
    for source in sources if check_files else []:
        for i, p in enumerate(source.paths):
            where = f"sources.{source.name}.paths[{i}]"
            if not p.exists():
                problems.append(f"{where}: {p} does not exist")
            elif p.is_dir() and not source.model_copy(update={"paths": [p]}).files():
                ends = "/".join(SUFFIXES[source.kind])
                problems.append(f"{where}: folder {p} holds no {ends} files (or .gz)")
    if problems or recipe is None:
        raise ConfigError(str(path), problems)
    return recipe


def recipe_inputs(recipe: DataRecipe) -> dict[str, Path]:
    """``{"sources.<name>.paths[<i>]": path}``: the files (or folders) for the manifest."""
    return {
        f"sources.{s.name}.paths[{i}]": p for s in recipe.sources for i, p in enumerate(s.paths)
    }
