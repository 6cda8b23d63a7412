"""Normalising and parsing generated answers: the rules written in the module docstring."""

from __future__ import annotations

import pytest

from llamagene.evaluation.answers import (
    normalise,
    parse_choice,
    parse_labels,
    parse_number,
    parse_sequence,
    parse_token_labels,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Yes  ", "yes"),
        ("Yes.", "yes"),
        ("NO!", "no"),
        ("yes..", "yes."),  # one trailing mark only
        ('"Yes".', "yes"),
        ('"Yes."', "yes"),
        ("“Binding site”", "binding site"),
        ("'a'", "a"),
        ("Ｙｅｓ", "yes"),  # full-width letters, NFKC
        ("Straße", "strasse"),  # casefold
        ("two\t\n  words", "two words"),
        ('"', '"'),  # a lone quote is no pair
        ("", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_parse_choice() -> None:
    choices = ["Yes", "No"]
    assert parse_choice(" yes. ", choices) == 0
    assert parse_choice('"NO"', choices) == 1
    assert parse_choice("yes, it is", choices) is None
    assert parse_choice("", choices) is None
    with pytest.raises(ValueError, match="both normalise"):
        parse_choice("yes", ["Yes", "yes."])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.5", 3.5),
        ("-2", -2.0),
        ("+1e3", 1000.0),
        ("1.5E-3", 0.0015),
        (".5", 0.5),
        ("5.", 5.0),  # the trailing "." is dropped by normalise
        ("−3", -3.0),  # Unicode minus
        (" 42 \n", 42.0),
        ("1,5", None),  # comma: refused as decimal comma and as thousands separator
        ("1,000", None),
        ("inf", None),
        ("nan", None),
        ("1e999", None),  # overflows to inf
        ("about 3", None),
        ("3 kcal/mol", None),
        ("1_000", None),
        ("", None),
    ],
)
def test_parse_number(text: str, expected: float | None) -> None:
    assert parse_number(text) == expected


def test_parse_labels() -> None:
    choices = ["Nucleus", "Cytoplasm", "Membrane"]
    assert parse_labels("nucleus, membrane", choices) == frozenset({0, 2})
    assert parse_labels("Cytoplasm;Nucleus.", choices) == frozenset({0, 1})
    assert parse_labels("nucleus, nucleus", choices) == frozenset({0})
    assert parse_labels("None", choices) == frozenset()
    assert parse_labels("nucleus, golgi", choices) is None
    assert parse_labels("nucleus,,membrane", choices) is None
    assert parse_labels("", choices) is None
    # "none" that is itself a choice is that choice
    assert parse_labels("none", ["a", "none"]) == frozenset({1})
    with pytest.raises(ValueError, match="may not contain"):
        parse_labels("a", ["a, b", "c"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("OOOHHHEE", "OOOHHHEE"),
        ("O O O H", "OOOH"),
        ("  H\tE\n", "HE"),
        ("hHe", "hHe"),  # case kept
        ("OO O H", None),  # a separated part longer than one character
        ("the helix", None),
        ("", None),
        ("   ", None),
    ],
)
def test_parse_token_labels(text: str, expected: str | None) -> None:
    assert parse_token_labels(text) == expected


def test_parse_sequence() -> None:
    assert parse_sequence("<dna>acg t</dna>") == "ACGT"
    assert parse_sequence("<DNA>ACGT</DNA>\n") == "ACGT"
    assert parse_sequence(" <protein>MKV\nLL</protein> ") == "MKVLL"
    assert parse_sequence("atg") == "ATG"
    assert parse_sequence("") == ""
    once = parse_sequence("<protein>mkv</protein>")
    assert parse_sequence(once) == once
