"""Token counts of rows (by parts = whole text), and fitting a sequence window to a budget."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llamagene.alphabets import SequenceKind
from llamagene.prompt_format import CUE, PromptFormat, single_turn
from llamagene.sft.lengths import TokenCounter, fit_window
from llamagene.tasks import Signal


@pytest.fixture(scope="module")
def counter(merged_tokenizer_dir: Path) -> TokenCounter:
    return TokenCounter(merged_tokenizer_dir)


def test_counting_by_parts_equals_the_prompt_format(
    counter: TokenCounter, merged_tokenizer_dir: Path
) -> None:
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
    fmt = PromptFormat.from_dir(merged_tokenizer_dir)
    assert by_parts == [len(fmt.encode(single_turn(*pair))) for pair in pairs]
    assert counter.by_parts  # the self-check agreed
    # a sequence's own count is what it adds to a row, wherever it sits
    (seq_tokens,) = counter.sequence_tokens([("dna", "ACGTTGCAAGGCTTAACG")])
    (without,) = counter.count([("Is <dna>A</dna> a promoter?\nAnswer:", "yes")])
    (one,) = counter.sequence_tokens([("dna", "A")])
    assert by_parts[0] == without - one + seq_tokens


def test_plain_rows_read_no_markup(counter: TokenCounter, merged_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    text = "Tags like <dna>hello world</dna> stay text."
    (n,) = counter.count_conversations([single_turn(text, "ok")], markup=False)
    tokenizer = AutoTokenizer.from_pretrained(str(merged_tokenizer_dir))
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (text + CUE, "ok")]
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


def test_windows_cut_at_piece_boundaries_count_exactly(counter: TokenCounter) -> None:
    """A window cut at the whole sequence's piece boundaries encodes as exactly those pieces,
    N (three byte pieces for one letter) included; fit_window finds the longest such window
    that fits, wherever its signal puts it."""
    rng = random.Random(7)
    signals = [Signal("centre"), Signal("start"), Signal("end"), Signal("position", 249)]
    for i in range(60):
        kind: SequenceKind = "dna" if i % 4 else "protein"
        letters = "ACGTN" if kind == "dna" else "ACDEFGHIKLMNPQRSTVWYXBZ"
        seq = "".join(rng.choices(letters, k=rng.randint(60, 700)))
        pieces = counter.pieces(kind, seq)
        assert pieces.offsets[0] == 0 and pieces.offsets[-1] == len(seq)
        assert pieces.tokens == counter.sequence_tokens([(kind, seq)])[0]
        signal = signals[i % 4]
        budget = max(60, pieces.tokens // rng.randint(2, 6))
        fit = fit_window(pieces, len(seq), budget, signal, 20)
        assert fit is not None and fit.tokens <= budget and fit.end - fit.start >= 20
        counter.forget()
        (encoded,) = counter.sequence_tokens([(kind, seq[fit.start : fit.end])])
        assert encoded == fit.tokens  # exact, without encoding the window
        a, b = signal.window(len(seq), fit.end - fit.start)  # where the signal puts it
        assert abs(fit.start - a) <= 12 and abs(fit.end - b) <= 12
        spans = [pieces.span(*signal.window(len(seq), n)) for n in range(20, len(seq))]
        longest = max(end - start for start, end, tokens in spans if tokens <= budget)
        assert fit.end - fit.start == longest


def test_fit_window_refuses_what_cannot_fit(counter: TokenCounter) -> None:
    seq = "ACGTTGCAAGGCTTAACG" * 20
    pieces = counter.pieces("dna", seq)
    assert fit_window(pieces, len(seq), pieces.tokens // 2, Signal("whole"), 20) is None
    assert fit_window(pieces, len(seq), 1, Signal("centre"), 20) is None  # 20 bases need more
    assert fit_window(pieces, len(seq), 0, Signal("centre"), 20) is None
