"""The vectorised bootstrap: seeded, its statistics equal the library values on the full sample
and on any one resample taken row by row, and its intervals behave."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse, stats
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    matthews_corrcoef,
    r2_score,
    root_mean_squared_error,
)

from llamagene.evaluation import bootstrap as bs
from llamagene.evaluation.bootstrap import (
    FloatArray,
    Statistic,
    bootstrap,
    confusion_statistic,
    full_sample,
    label_f1_statistic,
    mean_statistic,
    percentile_interval,
    regression_statistic,
    resample_counts,
)

RNG = np.random.default_rng(7)
N = 300
#: 3 classes, about 70% right, some answers the unparseable class 3 (never gold).
GOLD = RNG.integers(0, 3, N)
PRED = np.where(RNG.random(N) < 0.7, GOLD, RNG.integers(0, 4, N))
#: regression values with many ties (rounded), so ranks use mean ranks
Y = np.round(RNG.normal(size=N), 1)
X = np.round(Y + RNG.normal(size=N), 1)
#: multilabel indicator matrices over 4 labels; label 3 never occurs
Y_LABELS = RNG.random((N, 4)) < [0.5, 0.3, 0.1, 0.0]
P_LABELS = np.where(RNG.random((N, 4)) < 0.8, Y_LABELS, RNG.random((N, 4)) < 0.2)
P_LABELS[:, 3] = False


def _confusion() -> Statistic:
    cells = sparse.csr_array((np.ones(N), (np.arange(N), GOLD * 4 + PRED)), shape=(N, 16))
    return confusion_statistic(cells, 4)


def _library(rows: np.ndarray) -> dict[str, float]:
    """The sklearn/scipy values on the rows ``rows`` (indices, repeats allowed)."""
    gold, pred, y, x = GOLD[rows], PRED[rows], Y[rows], X[rows]
    labels = sorted(set(gold) | set(pred) - {3})
    present = np.flatnonzero(Y_LABELS[rows].any(axis=0) | P_LABELS[rows].any(axis=0))
    return {
        "accuracy": accuracy_score(gold, pred),
        "mcc": matthews_corrcoef(gold, pred),
        "f1_macro": f1_score(gold, pred, labels=labels, average="macro", zero_division=0),
        "label_f1_micro": f1_score(Y_LABELS[rows], P_LABELS[rows], average="micro"),
        "label_f1_macro": f1_score(
            Y_LABELS[rows], P_LABELS[rows], labels=present, average="macro", zero_division=0
        ),
        "spearman": stats.spearmanr(y, x).statistic,
        "pearson": stats.pearsonr(y, x).statistic,
        "rmse": root_mean_squared_error(y, x),
        "r2": r2_score(y, x),
        "mean": float(np.mean(x)),
    }


def _ours(counts: FloatArray) -> dict[str, FloatArray]:
    labels = label_f1_statistic(Y_LABELS, P_LABELS)(counts)
    return {
        **_confusion()(counts),
        "label_f1_micro": labels["f1_micro"],
        "label_f1_macro": labels["f1_macro"],
        **regression_statistic(Y, X)(counts),
        **mean_statistic("mean", X)(counts),
    }


def test_full_sample_statistics_equal_the_library_values() -> None:
    ours = _ours(full_sample(N))
    for name, value in _library(np.arange(N)).items():
        assert ours[name].shape == (1,)
        assert ours[name][0] == pytest.approx(value, abs=1e-12), name


def test_each_resample_equals_the_library_on_its_rows() -> None:
    counts = resample_counts(N, 5, np.random.default_rng(3))
    ours = _ours(counts)
    for r in range(5):
        rows = np.repeat(np.arange(N), counts[r].astype(int))
        for name, value in _library(rows).items():
            assert ours[name][r] == pytest.approx(value, abs=1e-12), (name, r)


def test_resample_counts_are_draws_of_n_rows() -> None:
    counts = resample_counts(50, 200, np.random.default_rng(0))
    assert counts.shape == (200, 50)
    assert (counts.sum(axis=1) == 50).all()
    assert (counts >= 0).all() and (counts == np.round(counts)).all()
    assert counts.mean() == pytest.approx(1.0)


def test_same_seed_same_values_other_seed_other_values() -> None:
    statistic = _confusion()
    first = bootstrap(N, statistic, resamples=200, seed=11)
    again = bootstrap(N, statistic, resamples=200, seed=11)
    other = bootstrap(N, statistic, resamples=200, seed=12)
    for name in ("accuracy", "mcc", "f1_macro"):
        assert first[name].shape == (200,)
        assert np.array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name])


def test_blocks_give_every_resample(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bs, "BLOCK_COUNTS", 7 * N)  # blocks of 7 resamples
    values = bootstrap(N, _confusion(), resamples=100, seed=0)["accuracy"]
    assert values.shape == (100,)
    assert np.isfinite(values).all()


def test_interval_contains_the_estimate_and_narrows_with_more_rows() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 10_000):
        correct = (rng.random(n) < 0.7).astype(np.float64)
        values = bootstrap(n, mean_statistic("accuracy", correct), seed=0)["accuracy"]
        assert values.shape == (1000,)
        low, high = percentile_interval(values)
        assert low is not None and high is not None
        assert low <= correct.mean() <= high
        widths.append(high - low)
    # the width shrinks like 1 / sqrt(n): 10x here
    assert widths[1] < widths[0] / 5


def test_percentile_interval_leaves_out_undefined_resamples() -> None:
    values = np.array([np.nan, *np.linspace(0.0, 1.0, 101), np.inf])
    low, high = percentile_interval(values)
    assert low == pytest.approx(0.025) and high == pytest.approx(0.975)
    assert percentile_interval(np.full(5, np.nan)) == (None, None)


def test_undefined_resamples_are_nan_but_mcc_is_zero_like_sklearn() -> None:
    gold, constant = np.array([0, 1, 0, 1]), np.array([1, 1, 1, 1])
    cells = sparse.csr_array((np.ones(4), (np.arange(4), gold * 3 + constant)), shape=(4, 9))
    assert confusion_statistic(cells, 3)(full_sample(4))["mcc"][0] == 0.0
    assert matthews_corrcoef(gold, constant) == 0.0
    values = regression_statistic(gold.astype(float), constant.astype(float))(full_sample(4))
    assert np.isnan(values["spearman"][0]) and np.isnan(values["pearson"][0])


def test_resamples_are_bounded() -> None:
    with pytest.raises(ValueError, match="resamples"):
        bootstrap(N, _confusion(), resamples=1001)
    assert bootstrap(N, _confusion(), resamples=0) == {}
