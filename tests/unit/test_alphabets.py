"""Private-use sequence alphabets: mapping, markup, and errors."""

from __future__ import annotations

import pytest

from llamagene.alphabets import (
    DNA_LETTERS,
    PROTEIN_LETTERS,
    encode_markup,
    from_model_text,
    to_model_text,
)


def test_alphabets_are_disjoint_private_use() -> None:
    dna = to_model_text(DNA_LETTERS, "dna")
    protein = to_model_text(PROTEIN_LETTERS, "protein")
    assert not set(dna) & set(protein)
    assert all(0xE000 <= ord(c) <= 0xF8FF for c in dna + protein)
    assert from_model_text(dna) == DNA_LETTERS and from_model_text(protein) == PROTEIN_LETTERS


def test_bad_letters_are_named() -> None:
    with pytest.raises(ValueError, match="'X' is not a dna letter"):
        to_model_text("ACGX", "dna")
    with pytest.raises(ValueError, match="'a' is not a dna letter"):
        to_model_text("ACGa", "dna")
    with pytest.raises(ValueError, match="'1' is not a protein letter"):
        to_model_text("MKV1", "protein")


def test_markup_round_trip() -> None:
    text = "Does <protein>MKVLA</protein> bind <dna>ACGTN</dna>? <dna></dna> ACGT stays."
    mapped = encode_markup(text)
    assert "ACGT stays" in mapped and "MKVLA" not in mapped
    assert from_model_text(mapped) == text
    with pytest.raises(ValueError, match="in <dna> span at offset 0: 'B' is not a dna letter"):
        encode_markup("<dna>ACB</dna>")


def test_split_markup_cuts_at_the_inside_of_spans() -> None:
    from llamagene.alphabets import split_markup

    parts = split_markup("Is <dna>ACGT</dna> like <protein>MKV</protein>?")
    assert parts.texts == ["Is <dna>", "</dna> like <protein>", "</protein>?"]
    assert parts.sequences == [("dna", "ACGT"), ("protein", "MKV")]
    assert split_markup("no spans").texts == ["no spans"]
