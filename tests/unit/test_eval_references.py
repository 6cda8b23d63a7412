"""The shipped published GUE scores load, check themselves, and a malformed file fails clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamagene.errors import ConfigError
from llamagene.evaluation.references import (
    AVERAGE_TOLERANCE,
    PUBLISHED_SCORES_PATH,
    PublishedScoresError,
    load_published,
)
from llamagene.tasks.gue import GUE_DATASETS

DNABERT2 = "DNABERT-2 (117M)"
NT = "NT-2500M-multi"
GUE_IDS = [info.id for info in GUE_DATASETS.values()]


def test_the_shipped_file_loads_with_both_models() -> None:
    table = load_published()
    assert table.models == (DNABERT2, NT)
    assert "arXiv 2306.15006v2" in table.source
    assert set(table.task_ids) <= set(GUE_IDS)
    assert table.stated_average(DNABERT2) == 66.80
    assert table.stated_average(NT) == 66.93


def test_each_complete_model_reproduces_its_stated_average() -> None:
    """Internal consistency: the mean of the 28 values is the average the paper states."""
    table = load_published()
    complete = [model for model in table.models if not table.missing(model)]
    assert DNABERT2 in complete
    for model in complete:
        assert abs(table.average(model) - table.stated_average(model)) <= AVERAGE_TOLERANCE
    for model in set(table.models) - set(complete):
        with pytest.raises(ValueError, match="cannot be computed"):
            table.average(model)


@pytest.mark.parametrize(
    ("task_id", "dnabert2", "nt", "metric"),
    [
        ("gue/prom/prom_300_all", 86.77, 91.01, "mcc"),
        ("gue/prom/prom_core_all", 69.37, 70.33, "mcc"),
        ("gue/splice/reconstructed", 84.99, 89.35, "mcc"),
        ("gue/virus/covid", 71.02, 73.04, "f1_macro"),
        ("gue/EMP/H3", 78.27, 78.77, "mcc"),
    ],
)
def test_the_anchor_scores_are_in_the_file(
    task_id: str, dnabert2: float, nt: float, metric: str
) -> None:
    by_model = {p.model: p for p in load_published().for_task(task_id)}
    assert by_model[DNABERT2].value == dnabert2
    assert by_model[NT].value == nt
    assert {p.metric for p in by_model.values()} == {metric}


def test_every_metric_is_the_tasks_own_and_values_are_on_a_0_100_scale() -> None:
    table = load_published()
    for task_id in table.task_ids:
        info = next(i for i in GUE_DATASETS.values() if i.id == task_id)
        for published in table.for_task(task_id):
            assert published.metric == info.metric
            assert 0.0 <= published.value <= 100.0


def test_a_null_value_is_left_out_of_for_task() -> None:
    table = load_published()
    for task_id in table.missing(NT):
        assert [p.model for p in table.for_task(task_id)] == [DNABERT2]


def test_for_task_outside_the_table_is_empty() -> None:
    table = load_published()
    assert table.for_task("lucaone/ProtStab") == []
    assert table.for_task("gue/EMP") == []
    with pytest.raises(ValueError, match="unknown model"):
        table.average("HyenaDNA")


def _write(tmp_path: Path, old: str, new: str) -> Path:
    text = PUBLISHED_SCORES_PATH.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "published_scores.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


TF1 = "{DNABERT-2 (117M): 76.06, NT-2500M-multi: null}"


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("78.27", "178.27", "datasets.gue/EMP/H3.scores.DNABERT-2 (117M): Input should be less"),
        ("78.27", '"78.27"', "datasets.gue/EMP/H3.scores.DNABERT-2 (117M): Input should be a"),
        ("  venue:", "  colour: red\n  venue:", "source.colour: unknown key"),
        (TF1, "{DNABERT-2 (117M): 76.06}", "no entry for 'NT-2500M-multi' (write null if unknown)"),
        (TF1, TF1[:-1] + ", HyenaDNA: 3.0}", "'HyenaDNA' is not declared under models"),
        ("gue/tf/1:", "gue/tf/9:", "datasets.gue/tf/9: not a GUE task id"),
        ("covid: {metric: f1_macro", "covid: {metric: mcc", "the task's metric is f1_macro"),
        ("gue/tf/2:", "gue/tf/1:", "duplicate key 'gue/tf/1'"),
        ("datasets:", "datasets: [", "line "),
    ],
)
def test_a_malformed_file_gives_one_line_naming_the_file(
    tmp_path: Path, old: str, new: str, problem: str
) -> None:
    path = _write(tmp_path, old, new)
    with pytest.raises(PublishedScoresError) as caught:
        load_published(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert isinstance(caught.value, ConfigError)


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(PublishedScoresError, match="file not found"):
        load_published(tmp_path / "absent.yaml")
