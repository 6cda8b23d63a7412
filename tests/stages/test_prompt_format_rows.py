"""build_sft's rows in the prompt format: every demo row's ``tokens`` is its length there, and
the chat template that ships with the tokenizer gives the very same ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import write_pipeline

from llamagene.pipeline import load_pipeline
from llamagene.prompt_format import PromptFormat, messages_of

REPO = Path(__file__).resolve().parents[2]
DEMO_RECIPE = REPO / "data_recipes" / "sft_demo.yaml"


@pytest.fixture(scope="module")
def demo_rows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, object]]]:
    """The demo's instruction recipe built with the fixtures' merged tokenizer."""
    root = tmp_path_factory.mktemp("demo_sft")
    recipe = yaml.safe_load(DEMO_RECIPE.read_text(encoding="utf-8"))
    for entry in recipe["tasks"]:
        entry["data"]["spec"] = str(DEMO_RECIPE.parent / entry["data"]["spec"])
    for entry in recipe["english"]:
        entry["path"] = str(DEMO_RECIPE.parent / entry["path"])
    # the fixtures' tokenizer has small vocabularies, so rows are longer than the demo's
    recipe["length"]["max_tokens"] = 1024
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    pipeline = write_pipeline(root, build_sft={"recipe": "recipe.yaml"})
    load_pipeline(pipeline).run()
    out = root / "run" / "build_sft"
    rows = [
        json.loads(line)
        for split in ("train", "dev", "test")
        for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    return root / "run" / "merge_vocab" / "tokenizer", rows


def test_every_demo_row_counts_its_length_in_the_prompt_format(
    demo_rows: tuple[Path, list[dict[str, object]]],
) -> None:
    tokenizer_dir, rows = demo_rows
    fmt = PromptFormat.from_dir(tokenizer_dir)
    assert len(rows) > 900
    encoded = fmt.encode_many([messages_of(r) for r in rows], [bool(r["markup"]) for r in rows])
    wrong = [(r["task"], r["index"]) for r, e in zip(rows, encoded, strict=True)
             if len(e) != r["tokens"]]  # fmt: skip
    assert wrong == []
    chats = [(r, e) for r, e in zip(rows, encoded, strict=True) if r["messages"]]
    answers = [sum(m["role"] == "assistant" for m in r["messages"]) for r, _ in chats]  # type: ignore[attr-defined]
    assert len(chats) == 6 and sum(n > 1 for n in answers) == 4  # every turn is kept
    # every assistant turn is trained: one EOS label per answer
    assert [e.labels.count(fmt.eos_id) for _, e in chats] == answers


def test_the_tokenizers_chat_template_gives_the_same_ids(
    demo_rows: tuple[Path, list[dict[str, object]]],
) -> None:
    from transformers import AutoTokenizer

    tokenizer_dir, rows = demo_rows
    fmt = PromptFormat.from_dir(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for row in rows[::7]:
        messages = [
            {"role": m.role, "content": m.content, "markup": row["markup"]}
            for m in messages_of(row)
        ]
        got = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
        assert list(got) == fmt.encode(messages_of(row), bool(row["markup"])).input_ids
