"""Token counts of rows (by parts = whole text), and fitting a sequence window to a budget."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llamagene.sft.lengths import FitRequest, TokenCounter, fit_windows
from llamagene.tasks import Signal


@pytest.fixture(scope="module")
def counter(merged_tokenizer_dir: Path) -> TokenCounter:
    return TokenCounter(merged_tokenizer_dir)


def test_counting_by_parts_equals_whole_text_counting(counter: TokenCounter) -> None:
    texts = [
        "Is <dna>ACGTTGCAAGGCTTAACG</dna> a promoter?\nAnswer:",
        "<dna>ACGT</dna> and <protein>MKVLAAGIWQ</protein> interact? ",
        "Sequence:<dna>GGGCCCAAATTT</dna>\n Answer with yes or no:",
        "<protein>MSTNPKPQRKTKRNTNRRPQDVKFPGG</protein>",
        "plain English only, no sequence at all.",
        "Two:<dna>AC</dna><dna>GT</dna>  double  spaces ",
    ]
    pairs = [(t, "yes") for t in texts] + [("Translate:", "<protein>MKV</protein>")]
    by_parts = counter.count(pairs)
    whole = counter._whole([t for pair in pairs for t in pair])
    assert by_parts == [whole[2 * i] + whole[2 * i + 1] + 2 for i in range(len(pairs))]
    assert counter.by_parts  # the self-check agreed
    # a sequence's own count is what it adds to a row, wherever it sits
    (seq_tokens,) = counter.sequence_tokens([("dna", "ACGTTGCAAGGCTTAACG")])
    (without,) = counter.count([("Is <dna>A</dna> a promoter?\nAnswer:", "yes")])
    (one,) = counter.sequence_tokens([("dna", "A")])
    assert by_parts[0] == without - one + seq_tokens


def test_plain_rows_read_no_markup(counter: TokenCounter, merged_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    text = "Tags like <dna>hello world</dna> stay text."
    (n,) = counter.count_plain([(text, "ok")])
    tokenizer = AutoTokenizer.from_pretrained(str(merged_tokenizer_dir))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (text, "ok")]
    assert n == len(ids[0]) + len(ids[1]) + 2
    with pytest.raises(ValueError, match="not a dna letter"):
        counter.count([(text, "ok")])  # as markup, it is not DNA


@pytest.mark.parametrize(
    ("signal", "where"),
    [(Signal("centre"), "centre"), (Signal("start"), "start"), (Signal("end"), "end"),
     (Signal("position", 249), "position")],
)  # fmt: skip
def test_signal_windows_keep_the_declared_part(signal: Signal, where: str) -> None:
    start, end = signal.window(300, 100)
    assert end - start == 100
    expected = {"centre": (100, 200), "start": (0, 100), "end": (200, 300),
                "position": (199, 299)}[where]  # fmt: skip
    assert (start, end) == expected
    assert Signal("position", 10).window(300, 100) == (0, 100)  # clamped at the start
    assert Signal("centre").window(50, 80) == (0, 50)  # never longer than the sequence


def test_fit_windows_finds_a_near_longest_window_that_fits(counter: TokenCounter) -> None:
    """Every window fits its budget, sits where its signal says, and is within two tokens'
    worth of bases of the longest window below the shortest that does not fit (found here by
    trying every length)."""
    rng = random.Random(7)
    requests = []
    for i in range(60):
        seq = "".join(rng.choices("ACGT", k=rng.randint(60, 900)))
        (tokens,) = counter.sequence_tokens([("dna", seq)])
        signal = [Signal("centre"), Signal("start"), Signal("position", 249)][i % 3]
        requests.append(FitRequest("dna", seq, tokens, max(15, tokens // rng.randint(2, 6)),
                                   signal, 20))  # fmt: skip
    windows = fit_windows(counter, requests)
    for request, window in zip(requests, windows, strict=True):
        assert window is not None
        start, end = window
        assert (start, end) == request.signal.window(len(request.sequence), end - start)
        (fits,) = counter.sequence_tokens([("dna", request.sequence[start:end])])
        assert fits <= request.budget
        first_over = min(
            n for n in range(request.min_chars, len(request.sequence) + 1)
            if counter.sequence_tokens([("dna", request.sequence[slice(*request.signal.window(
                len(request.sequence), n))])])[0] > request.budget
        )  # fmt: skip
        longest = first_over - 1  # counts are not monotone in length: the first run that fits
        bases_per_token = len(request.sequence) / request.tokens
        assert end - start >= longest - 2 * bases_per_token


def test_fit_windows_refuses_what_cannot_fit(counter: TokenCounter) -> None:
    seq = "ACGTTGCAAGGCTTAACG" * 20
    (tokens,) = counter.sequence_tokens([("dna", seq)])
    whole, tiny, short = fit_windows(counter, [
        FitRequest("dna", seq, tokens, tokens // 2, Signal("whole"), 20),  # never trimmed
        FitRequest("dna", seq, tokens, 1, Signal("centre"), 20),  # 20 bases need more
        FitRequest("dna", seq, tokens, 0, Signal("centre"), 20),
    ])  # fmt: skip
    assert whole is None and tiny is None and short is None
