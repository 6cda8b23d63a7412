"""Which tasks to load: a small config (one entry per source) and the function that loads them.

Used by the ``build_sft`` recipe, e.g.::

    - {source: gue, root: data/GUE, datasets: [EMP, prom/prom_300_all]}   # or datasets: all
    - {source: lucaone, dir: data/lucaone/DeepLocPro, name: deeplocpro, task_type: multiclass}
    - {source: uniprot, path: data/uniprot_sprot.dat.gz, dev_fraction: 0.01, test_fraction: 0.01}
    - {source: table, spec: tasks/coding_frame.yaml}

``source`` picks the model (a pydantic discriminated union), so a typo in it or a key of the
wrong source is reported against that entry. Relative paths resolve against the recipe's folder.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from llamagene.config import InputPath, StrictModel
from llamagene.errors import ConfigError
from llamagene.tasks import Task, TaskType
from llamagene.tasks.gue import gue_files, load_gue, select_gue
from llamagene.tasks.lucaone import load_lucaone, lucaone_files
from llamagene.tasks.table import load_table, table_files
from llamagene.tasks.uniprot import TASK_ID as UNIPROT_TASK_ID
from llamagene.tasks.uniprot import load_uniprot


class GueSource(StrictModel):
    """GUE datasets under ``root`` (the unzipped GUE folder): names, group names or ``all``."""

    source: Literal["gue"]
    root: InputPath
    datasets: list[str] | Literal["all"] = "all"

    @field_validator("datasets")
    @classmethod
    def _known(cls, value: list[str] | Literal["all"]) -> list[str] | Literal["all"]:
        if not value:
            raise ValueError("name at least one dataset, or write datasets: all")
        select_gue(value)  # ValueError names an unknown dataset and suggests close ones
        return value


class LucaOneSource(StrictModel):
    """One LucaOne-style task folder (``train/dev/test`` CSVs and ``label.txt``)."""

    source: Literal["lucaone"]
    dir: InputPath
    name: str = Field(min_length=1)
    task_type: TaskType
    metric: str | None = None


class UniProtSource(StrictModel):
    """UniProt function text (``uniprot/function``) from a Swiss-Prot ``.dat`` or UniProt TSV."""

    source: Literal["uniprot"]
    path: InputPath
    dev_fraction: float = Field(default=0.05, ge=0, lt=1)
    test_fraction: float = Field(default=0.05, ge=0, lt=1)

    @model_validator(mode="after")
    def _fractions(self) -> Self:
        if self.dev_fraction + self.test_fraction >= 1:
            raise ValueError("dev_fraction + test_fraction must be below 1")
        return self


class TableSource(StrictModel):
    """A task YAML describing CSV / TSV / JSONL files (:mod:`llamagene.tasks.table`)."""

    source: Literal["table"]
    spec: InputPath


TaskSource = Annotated[
    GueSource | LucaOneSource | UniProtSource | TableSource, Field(discriminator="source")
]


def load_tasks(sources: Sequence[TaskSource]) -> list[Task]:
    """Every task of ``sources``, in order; a task id given twice is a :class:`ConfigError`."""
    tasks: list[Task] = []
    for source in sources:
        tasks += _load(source)
    counts = Counter(t.info.id for t in tasks)
    twice = [task_id for task_id, n in counts.items() if n > 1]
    if twice:
        raise ConfigError("tasks", [f"task {i} is listed more than once" for i in twice])
    return tasks


def source_files(source: TaskSource) -> dict[str, Path]:
    """The files a source reads, by name, for manifest hashing (no rows are read)."""
    if isinstance(source, GueSource):
        return gue_files(source.root, source.datasets)
    if isinstance(source, LucaOneSource):
        return lucaone_files(source.dir, source.name)
    if isinstance(source, UniProtSource):
        return {UNIPROT_TASK_ID: source.path}
    return table_files(source.spec)


def _load(source: TaskSource) -> list[Task]:
    if isinstance(source, GueSource):
        return load_gue(source.root, source.datasets)
    if isinstance(source, LucaOneSource):
        return [load_lucaone(source.dir, source.name, source.task_type, source.metric)]
    if isinstance(source, UniProtSource):
        return [load_uniprot(source.path, source.dev_fraction, source.test_fraction)]
    return [load_table(source.spec)]
