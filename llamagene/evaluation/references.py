"""Published GUE scores, shipped as data beside this module, for the report's reference rows.

``published_scores.yaml`` holds, per GUE dataset (keyed by this project's task ids,
``gue/<group>/<name>``), the test scores the DNABERT-2 paper (Zhou et al., ICLR 2024, arXiv
2306.15006v2) published for **DNABERT-2 (117M)** and **NT-2500M-multi**, on a 0-100 scale: MCC x
100, and macro F1 x 100 for ``gue/virus/covid`` (the task's own metric in
:mod:`llamagene.tasks.gue`). It also records the paper's stated 28-dataset average per model, so
the file checks itself: the mean of a model's 28 values must match its stated average to 0.01
(the paper averages unrounded seed means, so the last digit may differ). The file's header says
where each number was confirmed.

A value the file could not confirm is an explicit ``null``: :meth:`PublishedTable.for_task` leaves
it out, and :meth:`PublishedTable.average` refuses a model with any value missing rather than
average a subset. With the shipped file, DNABERT-2's 28 values average 66.805 (stated 66.80);
NT-2500M-multi lacks tf/1-4, so only its stated 66.93 is available.

Rules checked on load, all reported at once as one line naming the file
(:class:`PublishedScoresError`): unknown keys, and values that are not numbers in [0, 100]; a
dataset that is not a GUE task id, or whose metric is not that task's metric; a dataset that does
not list every model (a value, or null) or lists a model not declared under ``models``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llamagene.config import load_yaml
from llamagene.errors import ConfigError, LlamageneError

#: The file shipped beside this module.
PUBLISHED_SCORES_PATH = Path(__file__).with_name("published_scores.yaml")
#: How far a model's computed average may sit from the average the paper states.
AVERAGE_TOLERANCE = 0.01

Score = Annotated[float, Field(ge=0.0, le=100.0)]


class PublishedScoresError(ConfigError):
    """The published-scores file is malformed: one line, the file then every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        LlamageneError.__init__(self, f"{source}: {'; '.join(problems)}")


@dataclass(frozen=True)
class Published:
    """One published score: ``value`` is on the 0-100 scale of ``metric``."""

    model: str
    metric: str
    value: float
    source: str


class PublishedTable:
    """The loaded file: published scores per task, and the paper's stated average per model."""

    def __init__(
        self,
        source: str,
        stated_averages: dict[str, float],
        metrics: dict[str, str],
        scores: dict[str, dict[str, float | None]],
    ) -> None:
        self.source = source
        self.models: tuple[str, ...] = tuple(stated_averages)
        self._stated = dict(stated_averages)
        self._metrics = dict(metrics)
        self._scores = {task: dict(values) for task, values in scores.items()}

    @property
    def task_ids(self) -> tuple[str, ...]:
        """The task ids the file covers, in file order."""
        return tuple(self._scores)

    def for_task(self, task_id: str) -> list[Published]:
        """The published scores of ``task_id`` (one per model with a value); [] for other tasks."""
        values = self._scores.get(task_id, {})
        return [
            Published(model, self._metrics[task_id], value, self.source)
            for model in self.models
            if (value := values.get(model)) is not None
        ]

    def stated_average(self, model: str) -> float:
        """The 28-dataset average the paper states for ``model``."""
        self._check_model(model)
        return self._stated[model]

    def missing(self, model: str) -> tuple[str, ...]:
        """GUE task ids with no value for ``model`` (left out of the file, or null)."""
        self._check_model(model)
        return tuple(t for t in _gue_ids() if self._scores.get(t, {}).get(model) is None)

    def average(self, model: str) -> float:
        """The mean of ``model``'s values over all 28 GUE datasets; ValueError if any is missing."""
        missing = self.missing(model)
        if missing:
            raise ValueError(
                f"{model}: no published value for {len(missing)} of {len(_gue_ids())} GUE "
                f"datasets ({', '.join(missing)}); its average cannot be computed"
            )
        values = [self._scores[t][model] for t in _gue_ids()]
        return math.fsum(v for v in values if v is not None) / len(values)

    def _check_model(self, model: str) -> None:
        if model not in self._stated:
            raise ValueError(f"unknown model {model!r}; the file has {', '.join(self.models)}")


def load_published(path: Path | None = None) -> PublishedTable:
    """Load and check the published scores (default: the file shipped beside this module)."""
    path = path or PUBLISHED_SCORES_PATH
    try:
        data = load_yaml(path)
    except ConfigError as err:
        raise PublishedScoresError(err.source, err.problems) from None
    try:
        parsed = _File.model_validate(data)
    except ValidationError as err:
        raise PublishedScoresError(str(path), [_describe(e) for e in err.errors()]) from None
    problems = _cross_check(parsed)
    if problems:
        raise PublishedScoresError(str(path), problems)
    src = parsed.source
    surname = src.authors.split(",")[0].split()[-1]
    citation = f"{surname} et al., {src.title} ({src.venue}; arXiv {src.arxiv})"
    return PublishedTable(
        citation,
        {name: model.stated_average for name, model in parsed.models.items()},
        {task: entry.metric for task, entry in parsed.datasets.items()},
        {task: dict(entry.scores) for task, entry in parsed.datasets.items()},
    )


# ---- the file's schema ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Source(_Strict):
    title: str
    authors: str
    venue: str
    arxiv: str
    tables: str


class _Model(_Strict):
    stated_average: Score


class _Dataset(_Strict):
    metric: Literal["mcc", "f1_macro"]
    scores: dict[str, Score | None]


class _File(_Strict):
    source: _Source
    models: dict[str, _Model] = Field(min_length=1)
    datasets: dict[str, _Dataset] = Field(min_length=1)


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "file"
    message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
    return f"{where}: {message}"


def _cross_check(parsed: _File) -> list[str]:
    from llamagene.tasks.gue import GUE_DATASETS

    metrics = {info.id: info.metric for info in GUE_DATASETS.values()}
    models = set(parsed.models)
    problems = []
    for task, entry in parsed.datasets.items():
        where = f"datasets.{task}"
        if task not in metrics:
            problems.append(f"{where}: not a GUE task id (gue/<group>/<name>)")
        elif entry.metric != metrics[task]:
            problems.append(
                f"{where}.metric: {entry.metric}, but the task's metric is {metrics[task]}"
            )
        for model in sorted(models - set(entry.scores)):
            problems.append(f"{where}.scores: no entry for {model!r} (write null if unknown)")
        for model in sorted(set(entry.scores) - models):
            problems.append(f"{where}.scores: {model!r} is not declared under models")
    return problems


def _gue_ids() -> tuple[str, ...]:
    from llamagene.tasks.gue import GUE_DATASETS

    return tuple(info.id for info in GUE_DATASETS.values())
