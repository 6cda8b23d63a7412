"""The prompt format: exact ids and labels, the chat template's agreement, and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llamagene.alphabets import to_model_text
from llamagene.prompt_format import (
    CUE,
    IGNORE,
    FormatError,
    Message,
    PromptFormat,
    chat_template,
    messages_of,
    seam_problem,
    single_turn,
)

CONVERSATION = [
    Message("system", "Answer briefly."),
    Message("user", "Is <dna>ACGTTGCA</dna> a promoter?"),
    Message("assistant", "yes"),
    Message("user", "Translate <dna>ATGAAAGTT</dna> in frame 0."),
    Message("assistant", "<protein>MKV</protein>"),
]


@pytest.fixture(scope="module")
def fmt(merged_tokenizer_dir: Path) -> PromptFormat:
    return PromptFormat.from_dir(merged_tokenizer_dir)


@pytest.fixture(scope="module")
def hf_tokenizer(merged_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(merged_tokenizer_dir))


def _ids(fmt: PromptFormat, text: str, markup: bool = True) -> list[int]:
    return fmt.text_ids([text], markup)[0]


def test_single_turn_ids_and_labels_position_by_position(fmt: PromptFormat) -> None:
    prompt, answer = "Is <dna>ACGTTGCA</dna> a promoter?", "yes"
    encoded = fmt.encode(single_turn(prompt, answer))
    prompt_ids = _ids(fmt, prompt + CUE)
    answer_ids = _ids(fmt, answer)
    assert encoded.input_ids == [fmt.bos_id, *prompt_ids, *answer_ids, fmt.eos_id]
    assert encoded.labels == [IGNORE] * (1 + len(prompt_ids)) + [*answer_ids, fmt.eos_id]
    assert encoded.trained == len(answer_ids) + 1
    # the answer is a word of its own (``▁yes``), and the sequence is in the DNA alphabet
    assert fmt.tokenizer.id_to_token(answer_ids[0]) == "\u2581yes"
    dna = to_model_text("ACGTTGCA", "dna")
    assert "".join(fmt.tokenizer.id_to_token(i) for i in prompt_ids).count(dna[:2]) >= 1


def test_every_assistant_turn_is_trained_and_nothing_else(fmt: PromptFormat) -> None:
    encoded = fmt.encode(CONVERSATION)
    first = _ids(fmt, "Answer briefly.\n\nIs <dna>ACGTTGCA</dna> a promoter?" + CUE)
    second = _ids(fmt, "Translate <dna>ATGAAAGTT</dna> in frame 0." + CUE)
    yes, mkv = _ids(fmt, "yes"), _ids(fmt, "<protein>MKV</protein>")
    eos = fmt.eos_id
    assert encoded.input_ids == [fmt.bos_id, *first, *yes, eos, *second, *mkv, eos]
    want = (
        [IGNORE] * (1 + len(first)) + [*yes, eos] + [IGNORE] * len(second) + [*mkv, eos]
    )  # fmt: skip
    assert encoded.labels == want


def test_english_rows_are_plain_text(fmt: PromptFormat) -> None:
    text = "Tags like <dna>hello world</dna> stay text."
    encoded = fmt.encode(single_turn(text, "ok"), markup=False)
    prompt_ids, ok = _ids(fmt, text + CUE, markup=False), _ids(fmt, "ok", markup=False)
    assert encoded.input_ids == [fmt.bos_id, *prompt_ids, *ok, fmt.eos_id]
    with pytest.raises(FormatError, match="not a dna letter"):
        fmt.encode(single_turn(text, "ok"))  # read as markup, it is no DNA


def test_chat_template_gives_the_format_ids(fmt: PromptFormat, hf_tokenizer: Any) -> None:
    assert hf_tokenizer.chat_template == chat_template()
    cases: list[tuple[list[Message], bool]] = [
        (CONVERSATION, True),
        (single_turn("Name it.\nProtein: <protein>MSTNPKPQRK</protein>\nName:", "DnaA"), True),
        (single_turn("  Tags like <dna>hello</dna>, kept.  ", " fine "), False),
        (single_turn("Two <dna>AC</dna><dna>GTN</dna> and <protein>MKX</protein>?", "no"), True),
    ]
    for messages, markup in cases:
        plain = [{"role": m.role, "content": m.content, "markup": markup} for m in messages]
        got = hf_tokenizer.apply_chat_template(plain, tokenize=True, return_dict=False)
        assert list(got) == fmt.encode(messages, markup).input_ids
    # generation starts from the conversation up to the cue
    so_far = [{"role": m.role, "content": m.content} for m in CONVERSATION[:4]]
    got = hf_tokenizer.apply_chat_template(
        so_far, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert list(got) == fmt.prompt_ids(CONVERSATION[:4])
    assert hf_tokenizer.decode(got).endswith("in frame 0." + CUE)


def test_rows_give_their_conversation() -> None:
    row = {"prompt": "p", "answer": "a", "messages": None}
    assert messages_of(row) == single_turn("p", "a")
    chat = {"prompt": "q", "answer": "b", "messages": [
        {"role": "user", "content": "p"}, {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "b"},
    ]}  # fmt: skip
    assert [m.content for m in messages_of(chat)] == ["p", "a", "q", "b"]


@pytest.mark.parametrize(
    ("roles", "problem"),
    [
        (["user", "user", "assistant"], "alternate"),
        (["assistant"], "alternate"),
        (["system", "user"], "last turn must be the assistant's"),
        ([], "no turns"),
    ],
)
def test_conversations_out_of_order_are_refused(
    fmt: PromptFormat, roles: list[Any], problem: str
) -> None:
    with pytest.raises(FormatError, match=problem):
        fmt.encode([Message(r, "x") for r in roles])


def test_the_tokenizer_keeps_the_seams_clean(fmt: PromptFormat) -> None:
    assert seam_problem(fmt.tokenizer) is None
