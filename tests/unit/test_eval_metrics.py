"""Metrics per task type on small hand-made predictions, checked against sklearn/scipy/biopython
computed directly or numbers derived by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, r2_score

from llamagene.evaluation.metrics import (
    HIGHER_IS_BETTER,
    Score,
    chrf,
    classification_scores,
    mean_scores,
    multilabel_scores,
    normalised_edit_distance,
    regression_scores,
    sequence_identity,
    sequence_scores,
    text_scores,
    token_scores,
)


def _values(scores: dict[str, Score]) -> dict[str, float | None]:
    return {name: score.value for name, score in scores.items()}


def test_classification_against_sklearn_with_unparseable_counted_wrong() -> None:
    gold = [0, 1, 2, 1, 0, 2, 1, 1]
    pred = [0, 1, None, 1, 2, 2, None, 0]
    as_class = [3 if p is None else p for p in pred]  # a class that is never gold
    scores = classification_scores(gold, pred, 3)
    assert list(scores) == ["accuracy", "mcc", "f1_macro", "unparseable"]
    assert scores["accuracy"].value == pytest.approx(4 / 8)
    assert scores["mcc"].value == pytest.approx(matthews_corrcoef(gold, as_class))
    expected_f1 = f1_score(gold, as_class, labels=[0, 1, 2], average="macro", zero_division=0)
    assert scores["f1_macro"].value == pytest.approx(expected_f1)
    assert scores["unparseable"].value == pytest.approx(2 / 8)
    for score in scores.values():
        assert score.low is not None and score.high is not None
        assert score.value is not None and score.low <= score.value <= score.high


def test_classification_one_class_mcc_is_na_not_zero() -> None:
    scores = classification_scores([1, 1, 1, 1], [1, 0, 1, None], 2)
    assert scores["mcc"] == Score(None, na="one class")
    assert scores["accuracy"].value == pytest.approx(0.5)
    # macro-F1 over the classes seen: 1 (gold) and 0 (predicted, F1 0)
    assert scores["f1_macro"].value == pytest.approx((2 * 2 / (2 * 2 + 2) + 0) / 2)


def test_classification_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="no rows"):
        classification_scores([], [], 2)
    with pytest.raises(ValueError, match="predictions"):
        classification_scores([0, 1], [0], 2)
    with pytest.raises(ValueError, match="class indices"):
        classification_scores([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="class indices"):
        classification_scores([0, 1], [0, 2], 2)  # 2 is no class, not "unparseable"


def test_regression_against_scipy_with_fallback() -> None:
    gold = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    pred = [1.2, None, 2.9, 4.4, None, 5.5]
    filled = [1.2, 3.5, 2.9, 4.4, 3.5, 5.5]  # fallback 3.5 (the training mean)
    scores = regression_scores(gold, pred, fallback=3.5)
    assert list(scores) == ["spearman", "pearson", "rmse", "r2", "unparseable"]
    assert scores["spearman"].value == pytest.approx(stats.spearmanr(gold, filled).statistic)
    assert scores["pearson"].value == pytest.approx(stats.pearsonr(gold, filled).statistic)
    rmse = np.sqrt(np.mean((np.array(gold) - np.array(filled)) ** 2))
    assert scores["rmse"].value == pytest.approx(rmse)
    assert scores["r2"].value == pytest.approx(r2_score(gold, filled))
    assert scores["unparseable"].value == pytest.approx(2 / 6)


def test_regression_constant_predictions_and_gold_are_na() -> None:
    scores = regression_scores([1.0, 2.0, 3.0], [None, None, None], fallback=2.0)
    assert scores["spearman"].na == scores["pearson"].na == "constant predictions"
    assert scores["spearman"].value is None and scores["spearman"].low is None
    assert scores["rmse"].value == pytest.approx(np.sqrt(2 / 3))
    assert scores["unparseable"].value == 1.0
    flat = regression_scores([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], fallback=0.0)
    assert flat["pearson"].na == flat["r2"].na == "constant gold"


def test_multilabel_against_sklearn() -> None:
    gold = [frozenset({0, 1}), frozenset({2}), frozenset(), frozenset({0})]
    pred = [frozenset({0}), frozenset({2}), None, frozenset({0, 3})]
    gold_matrix = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    pred_matrix = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]])
    scores = multilabel_scores(gold, pred, 5)  # label 4 never occurs: not averaged
    assert list(scores) == ["f1_micro", "f1_macro", "exact_match", "unparseable"]
    micro = f1_score(gold_matrix, pred_matrix, average="micro", zero_division=0)
    macro = f1_score(gold_matrix, pred_matrix, average="macro", zero_division=0)
    assert scores["f1_micro"].value == pytest.approx(micro)  # 2*3 / (2*3 + 1 + 1)
    assert scores["f1_micro"].value == pytest.approx(0.75)
    assert scores["f1_macro"].value == pytest.approx(macro)  # (1 + 0 + 1 + 0) / 4
    assert scores["exact_match"].value == pytest.approx(accuracy_score(gold_matrix, pred_matrix))
    assert scores["exact_match"].value == pytest.approx(2 / 4)  # the empty set matches ∅
    assert scores["unparseable"].value == pytest.approx(1 / 4)


def test_multilabel_without_any_label_is_na() -> None:
    scores = multilabel_scores([frozenset(), frozenset()], [frozenset(), None], 3)
    assert scores["f1_micro"].na == scores["f1_macro"].na == "no labels"
    assert scores["exact_match"].value == 1.0


def test_token_labels_wrong_length_and_unparseable() -> None:
    gold = ["OOOHHHEE", "HHEE", "OOH"]
    pred = ["O O O H H H E E", "HH", "OO H X"]  # row 2 too short, row 3 unparseable
    scores = token_scores(gold, pred)
    flat_gold = list("OOOHHHEE" + "HHEE" + "OOH")
    flat_pred = list("OOOHHHEE" + "HH##" + "###")  # "#": a position that is missing
    assert scores["accuracy"].value == pytest.approx(10 / 15)
    assert scores["accuracy"].value == pytest.approx(accuracy_score(flat_gold, flat_pred))
    expected = f1_score(flat_gold, flat_pred, labels=["E", "H", "O"], average="macro")
    assert scores["f1_macro"].value == pytest.approx(expected)
    assert scores["unparseable"].value == pytest.approx(2 / 3)


def test_token_labels_longer_prediction_is_scored_on_the_gold_positions() -> None:
    scores = token_scores(["HE"], ["HEEE"], resamples=10)
    assert scores["accuracy"].value == 1.0 and scores["f1_macro"].value == 1.0
    assert scores["unparseable"].value == 1.0  # wrong length


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _lcs(a: str, b: str) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


@pytest.mark.parametrize(
    ("gold", "pred", "identity", "distance"),
    [
        ("ACGT", "AGT", 3 / 4, 1 / 4),
        ("ACGT", "ACGT", 1.0, 0.0),
        ("AAAA", "TTTT", 0.0, 1.0),
        ("ACGT", "TACG", 3 / 4, 2 / 4),
        ("MKV", "", 0.0, 1.0),
    ],
)
def test_identity_and_edit_distance_on_small_pairs(
    gold: str, pred: str, identity: float, distance: float
) -> None:
    assert sequence_identity(gold, pred) == pytest.approx(identity)
    assert normalised_edit_distance(gold, pred) == pytest.approx(distance)


def test_identity_and_edit_distance_match_the_definitions_on_random_pairs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        a, b = ("".join(rng.choice(list("ACGT"), rng.integers(1, 25))) for _ in range(2))
        longer = max(len(a), len(b))
        assert sequence_identity(a, b) == pytest.approx(_lcs(a, b) / longer)
        assert normalised_edit_distance(a, b) == pytest.approx(_levenshtein(a, b) / longer)


def test_sequence_scores() -> None:
    gold = ["ACGT", "MKVL", "<dna>ggcc</dna>"]
    pred = ["AGT", None, "<dna>GG CC</dna>"]
    scores = sequence_scores(gold, pred)
    assert list(scores) == ["exact_match", "identity", "edit_distance", "unparseable"]
    assert scores["exact_match"].value == pytest.approx(1 / 3)
    assert scores["identity"].value == pytest.approx((3 / 4 + 0 + 1) / 3)
    assert scores["edit_distance"].value == pytest.approx((1 / 4 + 1 + 0) / 3)
    assert scores["unparseable"].value == pytest.approx(1 / 3)


def test_unparseable_answers_match_not_even_an_empty_gold() -> None:
    sequences = sequence_scores(["", "ACGT"], [None, ""], resamples=10)
    assert sequences["exact_match"].value == 0.0 and sequences["identity"].value == 0.0
    assert sequences["edit_distance"].value == 1.0 and sequences["unparseable"].value == 1.0
    texts = text_scores([".", "yes"], [None, "yes"], resamples=10)  # "." normalises to ""
    assert texts["exact_match"].value == 0.5


def test_chrf_hand_derived() -> None:
    assert chrf("the cat sat", "the cat sat") == 1.0
    assert chrf("xyz", "abc") == 0.0
    assert chrf("", "abc") == 0.0
    # order 1: P = 2/2, R = 2/3; order 2: P = 1/1, R = 1/2; orders 3-6: "ab" has none
    # P = 1, R = 7/12, chrF = 5 * P * R / (4 * P + R) = 7/11
    assert chrf("ab", "abc") == pytest.approx(7 / 11)
    assert chrf("a b", "ab c") == pytest.approx(7 / 11)  # whitespace is removed


def test_chrf_equals_sacrebleu() -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    pairs = [
        ("The protein binds ATP.", "This protein binds ATP and GTP."),
        ("a kinase", "A kinase involved in signalling"),
        ("yes", "no"),
        ("Transcription factor", "transcription factor"),
        ("ab", "abc"),
        ("", "reference"),
        ("hypothesis", "x"),
    ]
    for hypothesis, reference in pairs:
        expected = sacrebleu.sentence_chrf(hypothesis, [reference]).score / 100
        assert chrf(hypothesis, reference) == pytest.approx(expected, abs=1e-12)


def test_text_scores() -> None:
    gold = ["The answer is ATP.", "A kinase"]
    pred = ['"the answer is ATP"', None]
    scores = text_scores(gold, pred)
    assert list(scores) == ["exact_match", "chrf", "unparseable"]
    assert scores["exact_match"].value == 0.5
    expected = (chrf('"the answer is ATP"', "The answer is ATP.") + 0.0) / 2
    assert scores["chrf"].value == pytest.approx(expected)
    assert scores["unparseable"].value == 0.5


def test_mean_scores() -> None:
    score = mean_scores([1.0, 0.0, 1.0, 1.0])
    assert score.value == 0.75
    assert score.low is not None and score.high is not None and score.low <= 0.75 <= score.high
    with pytest.raises(ValueError, match="no rows"):
        mean_scores([])


def test_same_seed_same_intervals() -> None:
    rng = np.random.default_rng(5)
    gold = rng.integers(0, 3, 200).tolist()
    pred = [g if rng.random() < 0.6 else None for g in gold]
    first = classification_scores(gold, pred, 3, seed=4)
    assert classification_scores(gold, pred, 3, seed=4) == first
    assert classification_scores(gold, pred, 3, seed=5) != first
    assert all(s.low is None for s in classification_scores(gold, pred, 3, resamples=0).values())


def test_every_metric_has_a_direction_and_json() -> None:
    every = [
        classification_scores([0, 1], [0, 1], 2, resamples=10),
        regression_scores([1.0, 2.0], [1.0, 3.0], fallback=0.0, resamples=10),
        multilabel_scores([frozenset({0})], [frozenset({0})], 1, resamples=10),
        token_scores(["HE"], ["HE"], resamples=10),
        sequence_scores(["ACGT"], ["ACGT"], resamples=10),
        text_scores(["yes"], ["yes"], resamples=10),
    ]
    for scores in every:
        assert set(scores) <= set(HIGHER_IS_BETTER)
    assert Score(0.5, 0.4, 0.6).to_json() == {"value": 0.5, "low": 0.4, "high": 0.6, "na": None}
    assert Score(None, na="one class").to_json()["na"] == "one class"
