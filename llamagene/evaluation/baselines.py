"""Baselines computed in the same run, on the same splits as the model: majority and k-mer.

A model's score means little without the floor it has to clear. Both baselines here learn from
the task's train split only and predict its test split, so they sit in the report beside the
model's score on exactly the same rows.

**Majority** (:func:`majority_baseline`): the most frequent class of the train labels, ties going
to the lowest class index; for regression, the mean of the train values. It predicts that one
answer for every test row.

**k-mer** (:func:`kmer_baseline`): a linear model on k-mer counts, the classic sequence baseline.

- Features: for each sequence field of the task (a pair task has two, e.g. ``sequence_a`` and
  ``sequence_b``) the counts of every k-mer over the field's alphabet (DNA ``ACGT``, protein the
  20 standard residues), divided by the sequence's number of k-mers (frequencies, so long and
  short sequences are comparable). A k-mer holding any other letter (``N``, ``X``) is not
  counted, and a sequence shorter than k has no features. The fields' blocks are stacked side by
  side (one vocabulary per field), then every column is scaled to unit variance on the rows the
  model is fitted on (:class:`~sklearn.preprocessing.StandardScaler` without centring, which
  keeps the matrix sparse and gives the regulariser the same grip on every k-mer).
- k: DNA k in {3, 4, 5, 6} (4^k columns: 64 to 4,096); protein k in {1, 2, 3} only, because
  20^k grows fast (8,000 columns at k = 3, 160,000 at k = 4). k is one number per sequence kind:
  all DNA fields of a task share one k, all protein fields another, and a task with both kinds
  tries every combination (4 x 3 = 12 fits).
- Model: classification (binary or multiclass) is
  :class:`~sklearn.linear_model.LogisticRegression` (L2, C = 1, lbfgs, multinomial for more than
  two classes); regression is :class:`~sklearn.linear_model.Ridge` (alpha = 1).
- Selection: each k is fitted on train and scored on dev with the caller's ``select(gold, pred)``
  (the task's headline metric, higher is better; a NaN score counts as the worst); the best k
  wins, ties going to the smaller k. With an empty dev split, the score is the mean over a
  seeded 3-fold cross-validation of train (stratified for classification). The model that
  predicts test is always the one fitted on the whole train split.
- Deterministic: the folds are seeded and the solvers are deterministic; the same inputs give the
  same predictions and the same ``detail``.

Speed: k-mers are counted with numpy over the concatenated sequences (no Python loop per k-mer)
into a scipy CSR matrix. Measured on a shared 2-core machine, a binary task of 30,000 train,
3,000 dev and 3,000 test rows of 300 bp (a planted 6-mer motif), all four DNA k tried: 21-28 s in
all over three runs. Counting takes 1-2 s per k for the train split; the logistic regressions
take about 1, 2, 4-5 and 8-11 s for k = 3, 4, 5, 6 (k = 6 has 4,096 columns and needs about 130
lbfgs steps). Time grows with rows x length, and with the number of classes.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

Kind = Literal["dna", "protein"]
#: The letters a k-mer may hold, per sequence kind.
ALPHABETS: Mapping[Kind, str] = {"dna": "ACGT", "protein": "ACDEFGHIKLMNPQRSTVWY"}
#: The k values tried, per sequence kind (see the module docstring for why protein stops at 3).
K_VALUES: Mapping[Kind, tuple[int, ...]] = {"dna": (3, 4, 5, 6), "protein": (1, 2, 3)}
CV_FOLDS = 3
LOGISTIC_C = 1.0
RIDGE_ALPHA = 1.0
MAX_ITER = 1000


@dataclass(frozen=True)
class Examples:
    """One split's rows: per row, sequence field -> sequence (upper-case letters), and labels."""

    sequences: list[dict[str, str]]
    labels: list[int] | list[float]  # class index, or value for regression


@dataclass(frozen=True)
class BaselineResult:
    """A baseline's test predictions and how it got them (``detail`` is JSON-friendly)."""

    name: str  # "majority" or "kmer"
    predictions: list[int] | list[float]  # one per test row
    detail: dict[str, Any]


def majority_baseline(train: Examples, n_test: int, *, regression: bool) -> BaselineResult:
    """The train split's most frequent class (ties: lowest index), or its mean, for every row."""
    _check_rows(train, "train")
    if not train.labels:
        raise ValueError("majority baseline: the train split has no rows")
    if regression:
        mean = math.fsum(float(y) for y in train.labels) / len(train.labels)
        return BaselineResult("majority", [mean] * n_test, {"mean": mean})
    counts = Counter(int(y) for y in train.labels)
    best = min(counts, key=lambda label: (-counts[label], label))
    detail = {"class": best, "train_share": counts[best] / len(train.labels)}
    return BaselineResult("majority", [best] * n_test, detail)


def kmer_baseline(
    train: Examples,
    dev: Examples,
    test: Examples,
    kinds: Mapping[str, Kind],
    *,
    regression: bool,
    select: Callable[[Sequence[Any], Sequence[Any]], float],
    seed: int = 0,
) -> BaselineResult:
    """Logistic regression (or ridge) on k-mer frequencies, k chosen on dev (see the module doc).

    ``kinds`` maps each sequence field to ``"dna"`` or ``"protein"``. Raises ValueError when train
    has no rows, a classification train split has one class only, or a row lacks a field.
    """
    fields = _check_inputs(train, dev, test, kinds, regression)
    kinds_used = sorted({kinds[f] for f in fields})
    grid = [
        dict(zip(kinds_used, ks, strict=True)) for ks in product(*(K_VALUES[k] for k in kinds_used))
    ]
    encoded = {
        name: {f: _encode([row[f] for row in split.sequences], kinds[f]) for f in fields}
        for name, split in (("train", train), ("dev", dev), ("test", test))
    }
    y_train = list(train.labels)
    selected_on = "dev" if dev.labels else f"cv{CV_FOLDS} on train"
    scores: dict[str, float] = {}
    fitted: dict[str, Any] = {}
    for ks in grid:
        key = _key(ks)
        x_train = _features(encoded["train"], fields, kinds, ks)
        if dev.labels:
            model = _fit(x_train, y_train, regression, seed)
            fitted[key] = model
            pred = _predict(model, _features(encoded["dev"], fields, kinds, ks), regression)
            scores[key] = _score(select, list(dev.labels), pred)
        else:
            scores[key] = _cross_validate(x_train, y_train, regression, select, seed)
    best = max(grid, key=lambda ks: (scores[_key(ks)], [-k for k in ks.values()]))
    key = _key(best)
    if key in fitted:
        model = fitted[key]
    else:
        model = _fit(_features(encoded["train"], fields, kinds, best), y_train, regression, seed)
    predictions = _predict(model, _features(encoded["test"], fields, kinds, best), regression)
    name = f"Ridge(alpha={RIDGE_ALPHA})" if regression else f"LogisticRegression(C={LOGISTIC_C})"
    detail: dict[str, Any] = {
        "k": best,
        "score_by_k": scores,
        "selected_on": selected_on,
        "model": name,
        "features": "k-mer frequencies per field, columns scaled to unit variance",
        "fields": {f: kinds[f] for f in fields},
    }
    return BaselineResult("kmer", predictions, detail)


# ---- checks -----------------------------------------------------------------------------------


def _check_rows(split: Examples, name: str) -> None:
    if len(split.sequences) != len(split.labels):
        raise ValueError(
            f"{name} split: {len(split.sequences)} sequence rows but {len(split.labels)} labels"
        )


def _check_inputs(
    train: Examples, dev: Examples, test: Examples, kinds: Mapping[str, Kind], regression: bool
) -> list[str]:
    for name, split in (("train", train), ("dev", dev), ("test", test)):
        _check_rows(split, name)
    if not train.labels:
        raise ValueError("k-mer baseline: the train split has no rows")
    if not kinds:
        raise ValueError("k-mer baseline: the task names no sequence field")
    for field, kind in kinds.items():
        if kind not in K_VALUES:
            raise ValueError(f"k-mer baseline: field {field!r} has kind {kind!r}, not dna/protein")
    fields = sorted(kinds)
    for name, split in (("train", train), ("dev", dev), ("test", test)):
        for i, row in enumerate(split.sequences):
            missing = [f for f in fields if f not in row]
            if missing:
                raise ValueError(
                    f"k-mer baseline: {name} row {i} lacks sequence field {missing[0]!r}"
                )
    if not regression and len({int(y) for y in train.labels}) < 2:
        raise ValueError(
            "k-mer baseline: the train split has one class only; a classifier needs two or more"
        )
    return fields


# ---- features ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoded:
    """Sequences of one field joined into one code array; -1 marks a letter outside the alphabet
    and the separator between sequences, so no counted k-mer spans two rows."""

    codes: npt.NDArray[np.int8]
    rows: npt.NDArray[np.int32]  # the row of each position
    n_rows: int


def _encode(sequences: list[str], kind: Kind) -> _Encoded:
    import numpy as np

    alphabet = ALPHABETS[kind]
    table = np.full(256, -1, dtype=np.int8)
    for i, letter in enumerate(alphabet):
        table[ord(letter)] = i
        table[ord(letter.lower())] = i
    joined = "\n".join(sequences).encode("ascii", "replace")
    codes = table[np.frombuffer(joined, dtype=np.uint8)]
    lengths = np.array([len(s) + 1 for s in sequences], dtype=np.int64)
    rows = np.repeat(np.arange(len(sequences), dtype=np.int32), lengths)[: len(codes)]
    return _Encoded(codes, rows, len(sequences))


def _kmer_counts(enc: _Encoded, k: int, size: int) -> Any:
    """The rows x size**k CSR matrix of k-mer frequencies (each non-empty row sums to 1)."""
    import numpy as np
    import scipy.sparse as sp  # type: ignore[import-untyped]
    from sklearn.preprocessing import normalize  # type: ignore[import-untyped]

    n_windows = len(enc.codes) - k + 1
    if n_windows <= 0:
        return sp.csr_matrix((enc.n_rows, size**k), dtype=np.float64)
    bad = np.concatenate(([0], np.cumsum(enc.codes < 0)))
    ok = (bad[k:] - bad[:-k]) == 0
    index = np.zeros(n_windows, dtype=np.int64)
    for j in range(k):
        index = index * size + np.maximum(enc.codes[j : j + n_windows], 0)
    counts = sp.coo_matrix(
        (np.ones(int(ok.sum())), (enc.rows[:n_windows][ok], index[ok])),
        shape=(enc.n_rows, size**k),
    ).tocsr()
    return normalize(counts, norm="l1")


def _features(
    encoded: Mapping[str, _Encoded],
    fields: list[str],
    kinds: Mapping[str, Kind],
    ks: Mapping[Kind, int],
) -> Any:
    import scipy.sparse as sp

    blocks = [_kmer_counts(encoded[f], ks[kinds[f]], len(ALPHABETS[kinds[f]])) for f in fields]
    return sp.hstack(blocks, format="csr")


# ---- models -----------------------------------------------------------------------------------


def _fit(x: Any, y: list[int] | list[float], regression: bool, seed: int) -> Any:
    """A fitted scaler + linear model; a single-class training fold gets a constant predictor."""
    from sklearn.dummy import DummyClassifier  # type: ignore[import-untyped]
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
    from sklearn.linear_model import LogisticRegression, Ridge  # type: ignore[import-untyped]
    from sklearn.pipeline import make_pipeline  # type: ignore[import-untyped]
    from sklearn.preprocessing import StandardScaler

    if regression:
        model = Ridge(alpha=RIDGE_ALPHA, random_state=seed)
    elif len(set(y)) < 2:
        model = DummyClassifier(strategy="most_frequent")
    else:
        model = LogisticRegression(C=LOGISTIC_C, max_iter=MAX_ITER, random_state=seed)
    pipeline = make_pipeline(StandardScaler(with_mean=False), model)
    with warnings.catch_warnings():
        # An unconverged fit after MAX_ITER steps is still a usable baseline.
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(x, y)
    return pipeline


def _predict(model: Any, x: Any, regression: bool) -> list[int] | list[float]:
    if x.shape[0] == 0:
        return []
    pred = model.predict(x)
    if regression:
        return [float(v) for v in pred]
    return [int(v) for v in pred]


def _score(
    select: Callable[[Sequence[Any], Sequence[Any]], float],
    gold: Sequence[Any],
    pred: Sequence[Any],
) -> float:
    value = float(select(gold, pred))
    return -math.inf if math.isnan(value) else value


def _cross_validate(
    x: Any,
    y: list[int] | list[float],
    regression: bool,
    select: Callable[[Sequence[Any], Sequence[Any]], float],
    seed: int,
) -> float:
    """The mean ``select`` score over a seeded CV_FOLDS-fold split of the train rows."""
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold  # type: ignore[import-untyped]

    if len(y) < CV_FOLDS:
        raise ValueError(
            f"k-mer baseline: no dev split and {len(y)} train rows, too few for "
            f"{CV_FOLDS}-fold cross-validation"
        )
    labels = np.asarray(y)
    if regression:
        folds = KFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed).split(x)
    else:
        smallest = min(Counter(int(v) for v in y).values())
        splitter = StratifiedKFold if smallest >= CV_FOLDS else KFold
        folds = splitter(n_splits=CV_FOLDS, shuffle=True, random_state=seed).split(x, labels)
    scores = []
    for fit_rows, held_rows in folds:
        model = _fit(x[fit_rows], labels[fit_rows].tolist(), regression, seed)
        pred = _predict(model, x[held_rows], regression)
        scores.append(_score(select, labels[held_rows].tolist(), pred))
    return math.fsum(scores) / len(scores)


def _key(ks: Mapping[Kind, int]) -> str:
    """``dna=4`` or ``dna=4,protein=2``: a JSON-friendly name for one k setting."""
    return ",".join(f"{kind}={k}" for kind, k in sorted(ks.items()))
