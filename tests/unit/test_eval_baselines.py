"""The majority and k-mer baselines on small seeded synthetic tasks (offline, about a second)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from llamagene.evaluation.baselines import Examples, Kind, kmer_baseline, majority_baseline


def accuracy(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    return sum(bool(g == p) for g, p in zip(gold, pred, strict=True)) / len(gold)


def neg_mse(gold: Sequence[Any], pred: Sequence[Any]) -> float:
    return -sum(float(g - p) ** 2 for g, p in zip(gold, pred, strict=True)) / len(gold)


def biased(rng: random.Random, length: int, gc: float) -> str:
    """A sequence whose bases are G/C with probability ``gc``."""
    return "".join(
        rng.choice("GC") if rng.random() < gc else rng.choice("AT") for _ in range(length)
    )


def gc_task(seed: int, n: int, field: str = "sequence") -> Examples:
    """Class 1 is GC-rich (60% G/C), class 0 AT-rich (40%): learnable from k-mer counts only."""
    rng = random.Random(seed)
    labels = [rng.randint(0, 1) for _ in range(n)]
    rows = [{field: biased(rng, 80, 0.6 if y else 0.4)} for y in labels]
    return Examples(rows, labels)


def splits(n_train: int = 200) -> tuple[Examples, Examples, Examples]:
    return gc_task(1, n_train), gc_task(2, 100), gc_task(3, 100)


# ---- majority ---------------------------------------------------------------------------------


def test_majority_takes_the_commonest_class_and_breaks_ties_low() -> None:
    train = Examples([{"sequence": "ACGT"}] * 5, [2, 1, 2, 1, 0])
    result = majority_baseline(train, 3, regression=False)
    assert result.name == "majority"
    assert result.predictions == [1, 1, 1]  # classes 1 and 2 tie at two rows: the lower wins
    assert result.detail == {"class": 1, "train_share": 0.4}


def test_majority_regression_predicts_the_train_mean() -> None:
    train = Examples([{"sequence": "A"}] * 4, [1.0, 2.0, 3.0, 6.0])
    result = majority_baseline(train, 2, regression=True)
    assert result.predictions == [3.0, 3.0]
    assert result.detail == {"mean": 3.0}


def test_majority_works_with_one_class_and_refuses_no_rows() -> None:
    train = Examples([{"sequence": "A"}] * 3, [1, 1, 1])
    assert majority_baseline(train, 1, regression=False).predictions == [1]
    with pytest.raises(ValueError, match="no rows"):
        majority_baseline(Examples([], []), 1, regression=False)


# ---- k-mer ------------------------------------------------------------------------------------


def test_kmer_beats_majority_on_a_gc_task_and_reports_its_k() -> None:
    train, dev, test = splits()
    kmer = kmer_baseline(train, dev, test, {"sequence": "dna"}, regression=False, select=accuracy)
    majority = majority_baseline(train, len(test.labels), regression=False)
    kmer_acc = accuracy(test.labels, kmer.predictions)
    assert kmer_acc > 0.85
    assert kmer_acc > accuracy(test.labels, majority.predictions) + 0.3
    detail = kmer.detail
    assert detail["selected_on"] == "dev"
    assert set(detail["score_by_k"]) == {"dna=3", "dna=4", "dna=5", "dna=6"}
    assert detail["k"]["dna"] in (3, 4, 5, 6)
    best = max(detail["score_by_k"].values())
    assert detail["score_by_k"][f"dna={detail['k']['dna']}"] == best
    assert detail["model"] == "LogisticRegression(C=1.0)"
    assert all(isinstance(p, int) for p in kmer.predictions)


def test_kmer_ties_go_to_the_smallest_k() -> None:
    train, dev, test = splits()
    result = kmer_baseline(
        train, dev, test, {"sequence": "dna"}, regression=False, select=lambda g, p: 0.5
    )
    assert result.detail["k"] == {"dna": 3}


def test_kmer_ridge_predicts_gc_content() -> None:
    rng = random.Random(7)

    def split(n: int) -> Examples:
        seqs = [biased(rng, 100, rng.uniform(0.2, 0.8)) for _ in range(n)]
        gc = [sum(b in "GC" for b in s) / len(s) for s in seqs]
        return Examples([{"sequence": s} for s in seqs], gc)

    train, dev, test = split(200), split(60), split(60)
    result = kmer_baseline(train, dev, test, {"sequence": "dna"}, regression=True, select=neg_mse)
    assert result.detail["model"] == "Ridge(alpha=1.0)"
    assert all(isinstance(p, float) for p in result.predictions)
    mean = majority_baseline(train, len(test.labels), regression=True)
    assert neg_mse(test.labels, result.predictions) > 20 * neg_mse(test.labels, mean.predictions)
    assert max(abs(g - p) for g, p in zip(test.labels, result.predictions, strict=True)) < 0.05


def test_kmer_without_dev_selects_k_by_cross_validation() -> None:
    train, _, test = splits()
    result = kmer_baseline(
        train, Examples([], []), test, {"sequence": "dna"}, regression=False, select=accuracy
    )
    assert result.detail["selected_on"] == "cv3 on train"
    assert len(result.detail["score_by_k"]) == 4
    assert accuracy(test.labels, result.predictions) > 0.85


def test_kmer_pair_task_stacks_one_block_per_field() -> None:
    """The label is whether sequence_b is GC-rich; sequence_a is noise of the opposite bias."""
    rng = random.Random(11)

    def split(n: int) -> Examples:
        labels = [rng.randint(0, 1) for _ in range(n)]
        rows = [
            {"sequence_a": biased(rng, 60, 0.5), "sequence_b": biased(rng, 60, 0.6 if y else 0.4)}
            for y in labels
        ]
        return Examples(rows, labels)

    train, dev, test = split(200), split(100), split(100)
    kinds: dict[str, Kind] = {"sequence_a": "dna", "sequence_b": "dna"}
    result = kmer_baseline(train, dev, test, kinds, regression=False, select=accuracy)
    assert result.detail["fields"] == kinds
    assert set(result.detail["k"]) == {"dna"}  # one k shared by the task's DNA fields
    assert accuracy(test.labels, result.predictions) > 0.8


def test_kmer_dna_and_protein_fields_try_every_k_pair() -> None:
    rng = random.Random(5)

    def split(n: int) -> Examples:
        labels = [rng.randint(0, 1) for _ in range(n)]
        rows = [
            {
                "gene": biased(rng, 40, 0.5),
                "protein": "".join(rng.choice("KR" if y else "DE") for _ in range(20)),
            }
            for y in labels
        ]
        return Examples(rows, labels)

    train, dev, test = split(120), split(60), split(60)
    kinds: dict[str, Kind] = {"gene": "dna", "protein": "protein"}
    result = kmer_baseline(train, dev, test, kinds, regression=False, select=accuracy)
    assert len(result.detail["score_by_k"]) == 4 * 3
    assert set(result.detail["k"]) == {"dna", "protein"}
    assert result.detail["k"]["protein"] in (1, 2, 3)
    assert accuracy(test.labels, result.predictions) > 0.95


def test_kmer_is_deterministic() -> None:
    train, dev, test = splits()
    first = kmer_baseline(train, dev, test, {"sequence": "dna"}, regression=False, select=accuracy)
    second = kmer_baseline(train, dev, test, {"sequence": "dna"}, regression=False, select=accuracy)
    assert first == second


def test_kmer_handles_unknown_letters_short_rows_and_an_empty_test() -> None:
    train, dev, _ = splits()
    test = Examples(
        [{"sequence": "NNNNNNNN"}, {"sequence": "AC"}, {"sequence": "GCGCGCNN"}], [0, 0, 1]
    )
    result = kmer_baseline(train, dev, test, {"sequence": "dna"}, regression=False, select=accuracy)
    assert len(result.predictions) == 3
    empty = kmer_baseline(
        train, dev, Examples([], []), {"sequence": "dna"}, regression=False, select=accuracy
    )
    assert empty.predictions == []


def test_kmer_errors_are_clear() -> None:
    train, dev, test = splits()
    kinds: dict[str, Any] = {"sequence": "dna"}
    with pytest.raises(ValueError, match="train split has no rows"):
        kmer_baseline(Examples([], []), dev, test, kinds, regression=False, select=accuracy)
    one_class = Examples(train.sequences, [1] * len(train.labels))
    with pytest.raises(ValueError, match="one class only"):
        kmer_baseline(one_class, dev, test, kinds, regression=False, select=accuracy)
    with pytest.raises(ValueError, match=r"train row 0 lacks sequence field 'other'"):
        kinds_two: dict[str, Any] = {"sequence": "dna", "other": "dna"}
        kmer_baseline(train, dev, test, kinds_two, regression=False, select=accuracy)
    wrong_field = Examples([{"sequence": "ACGT"}, {"seq": "ACGT"}], [0, 1])
    with pytest.raises(ValueError, match=r"test row 1 lacks sequence field 'sequence'"):
        kmer_baseline(train, dev, wrong_field, kinds, regression=False, select=accuracy)
    with pytest.raises(ValueError, match="2 sequence rows but 1 labels"):
        kmer_baseline(
            Examples([{"sequence": "ACGT"}] * 2, [0]),
            dev,
            test,
            kinds,
            regression=False,
            select=accuracy,
        )
    with pytest.raises(ValueError, match="not dna/protein"):
        rna: dict[str, Any] = {"sequence": "rna"}
        kmer_baseline(train, dev, test, rna, regression=False, select=accuracy)
