"""Metrics per task type, each a :class:`Score` with a seeded bootstrap 95% interval.

Every point estimate comes from scikit-learn, scipy or biopython (chrF, which none of them has,
is written here; shares such as ``unparseable`` and string exact match are means of per-row
flags); the intervals come from :mod:`.bootstrap`, whose vectorised statistics equal these
values on the full sample (tested).
Values are on the 0–1 scale (MCC and correlations −1..1). A metric that is undefined has
``value=None`` and says why in ``na``. Every function raises ``ValueError("no rows")`` on empty
input. Answers arrive parsed by :mod:`.answers` (token, sequence and text answers are parsed
here, again: the parsers are idempotent); ``None`` is an unparseable answer.

- **Classification** (binary, multiclass): ``accuracy``, ``mcc``, ``f1_macro``, ``unparseable``.
  An unparseable answer is an extra class that is never gold: always wrong, a false negative of
  its gold class, left out of the macro average. Macro-F1 averages over the classes seen in gold
  or predictions (sklearn's default label set), ``zero_division=0``. MCC is n/a (``one class``)
  when the gold labels hold one class: it would read 0 whatever the model did.
- **Regression**: ``spearman``, ``pearson``, ``rmse``, ``r2``, ``unparseable``. An unparseable
  answer takes the caller's ``fallback`` value: the stage passes the training mean, the majority
  baseline's guess, so an unparseable answer scores like the baseline instead of vanishing.
  Correlations are n/a (``constant predictions``) when every prediction is the same, and the
  correlations and R² are n/a (``constant gold``) when every gold value is.
- **Multilabel**: ``f1_micro``, ``f1_macro`` (over the labels seen in gold or predictions;
  sklearn, ``zero_division=0``), ``exact_match`` (subset accuracy) and ``unparseable``; an
  unparseable answer is the empty label set. Both F1 are n/a (``no labels``) when no row has a
  label in gold or prediction.
- **Token labelling**: gold and predictions are label strings (:func:`.answers.parse_token_labels`:
  ``"OOOHHHEE"`` or ``"O O O H"``). ``accuracy`` and ``f1_macro`` are over all gold positions; a
  prediction is compared position by position, its missing positions are wrong (a marker label
  that is never gold) and positions past the gold's end are ignored. ``unparseable`` is the share
  of rows whose prediction is unparseable or of the wrong length. The bootstrap resamples rows
  (sequences), not positions.
- **Sequence generation** (answers through :func:`.answers.parse_sequence`): ``exact_match``;
  ``identity`` = the most identical pairs any global alignment can have (``PairwiseAligner``
  score with match 1, mismatch 0, gap 0: the longest common subsequence) / the length of the
  longer sequence; ``edit_distance`` = the Levenshtein distance (``PairwiseAligner`` score with
  match 0, mismatch −1, gap −1, negated) / the length of the longer sequence, lower is better.
  Each is per row, then averaged. An unparseable (``None`` or empty) answer scores identity 0
  and edit distance 1, and matches nothing.
- **Free text**: ``exact_match`` after :func:`.answers.normalise`, ``chrf`` and ``unparseable``.
  chrF (Popović 2015, sacrebleu's ``sentence_chrf`` defaults, on the texts as generated):
  whitespace removed; for n = 1..6 the character n-gram precision and recall (clipped counts);
  the orders that both texts have n-grams of are averaged into one precision P and one recall R;
  chrF = (1 + β²)·P·R / (β²·P + R) with β = 2 (recall weighs more), 0 when P + R = 0; the mean
  of the per-row chrF. An unparseable answer matches nothing and has chrF 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from Bio.Align import PairwiseAligner
from numpy.typing import NDArray
from scipy import sparse, stats  # type: ignore[import-untyped]
from sklearn.metrics import (  # type: ignore[import-untyped]
    accuracy_score,
    f1_score,
    matthews_corrcoef,
    r2_score,
    root_mean_squared_error,
)

from llamagene.evaluation.answers import normalise, parse_sequence, parse_token_labels
from llamagene.evaluation.bootstrap import (
    DEFAULT_RESAMPLES,
    FloatArray,
    Statistic,
    bootstrap,
    combine,
    confusion_statistic,
    label_f1_statistic,
    mean_statistic,
    percentile_interval,
    regression_statistic,
)

#: Which way is better, per metric name, for the report.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "mcc": True,
    "f1_macro": True,
    "f1_micro": True,
    "exact_match": True,
    "spearman": True,
    "pearson": True,
    "rmse": False,
    "r2": True,
    "identity": True,
    "edit_distance": False,
    "chrf": True,
    "unparseable": False,
}
CHRF_CHAR_ORDER = 6
CHRF_BETA = 2.0

_IDENTITY_ALIGNER = PairwiseAligner(  # type: ignore[no-untyped-call]
    mode="global", match_score=1, mismatch_score=0, gap_score=0
)
_EDIT_ALIGNER = PairwiseAligner(  # type: ignore[no-untyped-call]
    mode="global", match_score=0, mismatch_score=-1, gap_score=-1
)


@dataclass(frozen=True)
class Score:
    """One metric: its value, its 95% bootstrap interval, or why it has no value."""

    value: float | None
    low: float | None = None  # 95% bootstrap interval
    high: float | None = None
    na: str | None = None  # why value is None: "one class", "constant predictions", ...

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "na": self.na}


def classification_scores(
    gold: Sequence[int],
    pred: Sequence[int | None],
    n_classes: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Score]:
    """``accuracy``, ``mcc``, ``f1_macro``, ``unparseable`` of class indices in
    ``0..n_classes-1``."""
    n = _row_count(gold, pred)
    unparseable = np.array([p is None for p in pred])
    gold_ids = _class_ids(gold, n_classes)
    _class_ids([p for p in pred if p is not None] or [0], n_classes)
    pred_ids = np.array([n_classes if p is None else p for p in pred], dtype=np.int64)
    labels = sorted(set(gold_ids.tolist()) | set(pred_ids.tolist()) - {n_classes})
    one_class = np.unique(gold_ids).size == 1
    points: dict[str, float | str] = {
        "accuracy": accuracy_score(gold_ids, pred_ids),
        "mcc": "one class" if one_class else matthews_corrcoef(gold_ids, pred_ids),
        "f1_macro": f1_score(gold_ids, pred_ids, labels=labels, average="macro", zero_division=0),
        "unparseable": unparseable.mean(),
    }
    cells = _cell_counts(np.arange(n), gold_ids, pred_ids, n, n_classes + 1)
    statistic = combine(
        confusion_statistic(cells, n_classes + 1), _share("unparseable", unparseable)
    )
    return _scores(n, points, statistic, resamples, seed)


def regression_scores(
    gold: Sequence[float],
    pred: Sequence[float | None],
    *,
    fallback: float,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Score]:
    """``spearman``, ``pearson``, ``rmse``, ``r2``, ``unparseable``; an unparseable prediction
    takes ``fallback`` (the stage passes the training mean: the majority baseline's guess)."""
    n = _row_count(gold, pred)
    unparseable = np.array([p is None for p in pred])
    gold_values = _finite(gold, "gold")
    pred_values = _finite([fallback if p is None else p for p in pred], "predictions or fallback")
    gold_constant, pred_constant = np.ptp(gold_values) == 0, np.ptp(pred_values) == 0
    constant = "constant predictions" if pred_constant else "constant gold" if gold_constant else ""
    points: dict[str, float | str] = {
        "spearman": constant or stats.spearmanr(gold_values, pred_values).statistic,
        "pearson": constant or stats.pearsonr(gold_values, pred_values).statistic,
        "rmse": root_mean_squared_error(gold_values, pred_values),
        "r2": "constant gold" if gold_constant else r2_score(gold_values, pred_values),
        "unparseable": unparseable.mean(),
    }
    statistic = combine(
        regression_statistic(gold_values, pred_values), _share("unparseable", unparseable)
    )
    return _scores(n, points, statistic, resamples, seed)


def multilabel_scores(
    gold: Sequence[frozenset[int]],
    pred: Sequence[frozenset[int] | None],
    n_labels: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Score]:
    """``f1_micro``, ``f1_macro``, ``exact_match``, ``unparseable`` of label-index sets; an
    unparseable prediction is the empty set."""
    n = _row_count(gold, pred)
    unparseable = np.array([p is None for p in pred])
    gold_matrix = _indicator(gold, n_labels)
    pred_matrix = _indicator([frozenset() if p is None else p for p in pred], n_labels)
    labels = np.flatnonzero(gold_matrix.any(axis=0) | pred_matrix.any(axis=0))
    points: dict[str, float | str] = {"f1_micro": "no labels", "f1_macro": "no labels"}
    if labels.size:
        points["f1_micro"] = f1_score(gold_matrix, pred_matrix, average="micro", zero_division=0)
        points["f1_macro"] = f1_score(
            gold_matrix, pred_matrix, labels=labels, average="macro", zero_division=0
        )
    points["exact_match"] = accuracy_score(gold_matrix, pred_matrix)
    points["unparseable"] = unparseable.mean()
    statistic = combine(
        label_f1_statistic(gold_matrix, pred_matrix),
        _share("exact_match", (gold_matrix == pred_matrix).all(axis=1)),
        _share("unparseable", unparseable),
    )
    return _scores(n, points, statistic, resamples, seed)


def token_scores(
    gold: Sequence[str],
    pred: Sequence[str | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Score]:
    """``accuracy``, ``f1_macro`` over positions and ``unparseable`` (unparseable or wrong
    length) of per-position label strings."""
    n = _row_count(gold, pred)
    gold_labels = [_gold_tokens(i, text) for i, text in enumerate(gold)]
    pred_labels = [None if text is None else parse_token_labels(text) for text in pred]
    pairs = list(zip(gold_labels, pred_labels, strict=True))
    wrong = np.array([p is None or len(p) != len(g) for g, p in pairs])
    alphabet = sorted(set("".join(gold_labels)) | set("".join(p or "" for p in pred_labels)))
    code = {label: i for i, label in enumerate(alphabet)}
    missing = len(alphabet)  # the marker of a position the prediction does not reach
    gold_ids = np.array([code[label] for g in gold_labels for label in g])
    pred_ids = np.array(
        [
            code[p[i]] if p is not None and i < len(p) else missing
            for g, p in pairs
            for i in range(len(g))
        ]
    )
    rows = np.repeat(np.arange(n), [len(g) for g in gold_labels])
    cells = _cell_counts(rows, gold_ids, pred_ids, n, missing + 1)
    labels = np.unique(np.concatenate([gold_ids, pred_ids[pred_ids != missing]]))
    points: dict[str, float | str] = {
        "accuracy": accuracy_score(gold_ids, pred_ids),
        "f1_macro": f1_score(gold_ids, pred_ids, labels=labels, average="macro", zero_division=0),
        "unparseable": wrong.mean(),
    }
    statistic = combine(confusion_statistic(cells, missing + 1), _share("unparseable", wrong))
    return _scores(n, points, statistic, resamples, seed)


def sequence_scores(
    gold: Sequence[str],
    pred: Sequence[str | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Score]:
    """``exact_match``, ``identity``, ``edit_distance`` (normalised), ``unparseable`` of DNA or
    protein answers; both sides go through :func:`.answers.parse_sequence`."""
    n = _row_count(gold, pred)
    gold_seqs = [parse_sequence(text) for text in gold]
    pred_seqs = [None if text is None else parse_sequence(text) or None for text in pred]
    pairs = list(zip(gold_seqs, pred_seqs, strict=True))
    unparseable = np.array([p is None for p in pred_seqs])
    matches = np.array([g == p for g, p in pairs])
    identity = np.array([0.0 if p is None else sequence_identity(g, p) for g, p in pairs])
    distance = np.array([1.0 if p is None else normalised_edit_distance(g, p) for g, p in pairs])
    points: dict[str, float | str] = {
        "exact_match": matches.mean(),
        "identity": identity.mean(),
        "edit_distance": distance.mean(),
        "unparseable": unparseable.mean(),
    }
    statistic = combine(
        _share("exact_match", matches),
        mean_statistic("identity", identity),
        mean_statistic("edit_distance", distance),
        _share("unparseable", unparseable),
    )
    return _scores(n, points, statistic, resamples, seed)


def text_scores(
    gold: Sequence[str],
    pred: Sequence[str | None],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[str, Score]:
    """``exact_match`` (after :func:`.answers.normalise`), ``chrf``, ``unparseable`` of English
    answers."""
    n = _row_count(gold, pred)
    gold_norm = [normalise(text) for text in gold]
    pred_norm = [None if text is None else normalise(text) for text in pred]
    matches = np.array([g == p for g, p in zip(gold_norm, pred_norm, strict=True)])
    chrfs = np.array([chrf(p or "", g) for g, p in zip(gold, pred, strict=True)])
    unparseable = np.array([p is None for p in pred])
    points: dict[str, float | str] = {
        "exact_match": matches.mean(),
        "chrf": chrfs.mean(),
        "unparseable": unparseable.mean(),
    }
    statistic = combine(
        _share("exact_match", matches),
        mean_statistic("chrf", chrfs),
        _share("unparseable", unparseable),
    )
    return _scores(n, points, statistic, resamples, seed)


def mean_scores(
    values: Sequence[float], *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Score:
    """The mean of per-row ``values`` (e.g. 1.0 where an answer is the translation) with its
    interval."""
    n = _row_count(values, values)
    finite = _finite(values, "values")
    scores = _scores(n, {"mean": finite.mean()}, mean_statistic("mean", finite), resamples, seed)
    return scores["mean"]


def sequence_identity(gold: str, pred: str) -> float:
    """Most identical aligned pairs of any global alignment / the longer length (1.0 if both
    are empty)."""
    if not gold or not pred:
        return float(gold == pred)
    return _alignment_score(_IDENTITY_ALIGNER, gold, pred) / max(len(gold), len(pred))


def normalised_edit_distance(gold: str, pred: str) -> float:
    """Levenshtein distance / the longer length (0.0 if both are empty)."""
    if not gold or not pred:
        return float(gold != pred)
    return -_alignment_score(_EDIT_ALIGNER, gold, pred) / max(len(gold), len(pred))


def _alignment_score(aligner: PairwiseAligner, gold: str, pred: str) -> float:
    return float(aligner.score(gold, pred))  # type: ignore[no-untyped-call]


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence-level chrF (n = 1..6, β = 2, whitespace removed) on the 0–1 scale."""
    hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
    precisions: list[float] = []
    recalls: list[float] = []
    for order in range(1, CHRF_CHAR_ORDER + 1):
        hyp_ngrams = Counter(hyp[i : i + order] for i in range(len(hyp) - order + 1))
        ref_ngrams = Counter(ref[i : i + order] for i in range(len(ref) - order + 1))
        if hyp_ngrams and ref_ngrams:  # an order that one text is too short for is left out
            matches = sum((hyp_ngrams & ref_ngrams).values())
            precisions.append(matches / hyp_ngrams.total())
            recalls.append(matches / ref_ngrams.total())
    if not precisions:
        return 0.0
    precision, recall = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if precision + recall == 0:
        return 0.0
    factor = CHRF_BETA**2
    return (1 + factor) * precision * recall / (factor * precision + recall)


def _scores(
    n: int, points: dict[str, float | str], statistic: Statistic, resamples: int, seed: int
) -> dict[str, Score]:
    """A :class:`Score` per point value (a string: the reason it has none), with intervals."""
    resampled = bootstrap(n, statistic, resamples=resamples, seed=seed)
    scores: dict[str, Score] = {}
    for name, point in points.items():
        if isinstance(point, str):
            scores[name] = Score(None, na=point)
        else:
            low, high = percentile_interval(resampled[name]) if name in resampled else (None, None)
            scores[name] = Score(float(point), low, high)
    return scores


def _share(name: str, flags: NDArray[np.bool_]) -> Statistic:
    return mean_statistic(name, flags.astype(np.float64))


def _cell_counts(
    rows: NDArray[np.int64],
    gold_ids: NDArray[np.int64],
    pred_ids: NDArray[np.int64],
    n: int,
    n_classes: int,
) -> sparse.csr_array:
    """Per row, how many of its (gold, prediction) pairs fall in each confusion-matrix cell
    ``gold * n_classes + pred`` (sparse, n × n_classes²; repeated pairs are summed)."""
    cells = gold_ids * n_classes + pred_ids
    return sparse.csr_array((np.ones(rows.size), (rows, cells)), shape=(n, n_classes**2))


def _row_count(gold: Sequence[Any], pred: Sequence[Any]) -> int:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold rows but {len(pred)} predictions")
    if not gold:
        raise ValueError("no rows")
    return len(gold)


def _class_ids(labels: Sequence[int], n_classes: int) -> NDArray[np.int64]:
    ids = np.asarray(labels, dtype=np.int64)
    if ids.min() < 0 or ids.max() >= n_classes:
        raise ValueError(f"class indices must be in 0..{n_classes - 1}: {sorted(set(labels))}")
    return ids


def _indicator(sets: Sequence[frozenset[int]], n_labels: int) -> NDArray[np.bool_]:
    matrix = np.zeros((len(sets), n_labels), dtype=bool)
    for row, labels in enumerate(sets):
        if any(not 0 <= label < n_labels for label in labels):
            raise ValueError(f"label indices must be in 0..{n_labels - 1}: {sorted(labels)}")
        matrix[row, list(labels)] = True
    return matrix


def _finite(values: Sequence[float], what: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite numbers")
    return array


def _gold_tokens(row: int, text: str) -> str:
    labels = parse_token_labels(text)
    if labels is None:
        raise ValueError(f"gold row {row} is not one label character per position: {text!r}")
    return labels
