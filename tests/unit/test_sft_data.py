"""Instruction rows as the worker sees them: exact labels at every position, packed batches that
give each row its own loss, padded batches, and the errors of bad splits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from llamagene.errors import StageError
from llamagene.prompt_format import CUE, IGNORE, PromptFormat
from llamagene.training.collate import PackedCollator, PaddedCollator, padding_share
from llamagene.training.sft_data import open_sft, prepare_sft

ROWS: list[dict[str, Any]] = [
    {"prompt": "Is <dna>ACGTTGCA</dna> a promoter?", "answer": "yes", "markup": True},
    {"prompt": "Translate <dna>ATGAAAGTT</dna>.", "answer": "<protein>MKV</protein>",
     "markup": True},
    {"prompt": "Hi", "answer": "Hello <dna>there</dna>.", "markup": False},
    {"prompt": "And TAA?", "answer": "A stop codon.", "markup": False, "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Is ATG a start codon?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "And TAA?"},
        {"role": "assistant", "content": "A stop codon."},
    ]},
]  # fmt: skip


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def prepared(tmp_path: Path, merged_tokenizer_dir: Path) -> Path:
    splits = {"train": _write(tmp_path / "train.jsonl", ROWS),
              "dev": _write(tmp_path / "dev.jsonl", ROWS[:1])}  # fmt: skip
    prepare_sft(splits, merged_tokenizer_dir, tmp_path / "data", 512, "error")
    return tmp_path / "data"


def test_every_label_position_of_a_few_rows(prepared: Path, merged_tokenizer_dir: Path) -> None:
    fmt = PromptFormat.from_dir(merged_tokenizer_dir)
    rows = open_sft(prepared, "train")
    assert len(rows) == 4 and len(open_sft(prepared, "dev")) == 1

    def ids(text: str, markup: bool = True) -> list[int]:
        return fmt.text_ids([text], markup)[0]

    bos, eos = fmt.bos_id, fmt.eos_id
    prompt, answer = ids(ROWS[0]["prompt"] + CUE), ids("yes")
    assert rows[0] == {
        "input_ids": [bos, *prompt, *answer, eos],
        "labels": [IGNORE] * (1 + len(prompt)) + [*answer, eos],
    }
    plain_prompt, plain_answer = ids("Hi" + CUE, False), ids("Hello <dna>there</dna>.", False)
    assert rows[2]["labels"] == [IGNORE] * (1 + len(plain_prompt)) + [*plain_answer, eos]
    # a conversation: both answers trained, the system message, questions and cues not
    first = ids("Answer briefly.\n\nIs ATG a start codon?" + CUE, False)
    yes, second, stop = (
        ids("Yes.", False),
        ids("And TAA?" + CUE, False),
        ids("A stop codon.", False),
    )
    assert rows[3]["input_ids"] == [bos, *first, *yes, eos, *second, *stop, eos]
    assert rows[3]["labels"] == (
        [IGNORE] * (1 + len(first)) + [*yes, eos] + [IGNORE] * len(second) + [*stop, eos]
    )


def _tiny_model(vocab: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                         use_cache=False, attn_implementation="sdpa")  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed token loss (next-token, labels shifted) of one sequence."""
    return torch.nn.functional.cross_entropy(
        logits[:-1], labels[1:], ignore_index=IGNORE, reduction="sum"
    )


def test_a_packed_batch_gives_each_row_its_loss_alone(prepared: Path) -> None:
    rows = [open_sft(prepared, "train")[i] for i in range(4)]
    model = _tiny_model(max(max(r["input_ids"]) for r in rows) + 1)
    batch = PackedCollator()(rows)
    assert batch.keys() == {"input_ids", "labels", "position_ids"}  # no mask: block-diagonal
    with torch.no_grad():
        packed = model(**batch).logits[0]
        start = 0
        for row in rows:
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            assert (packed[start : start + n] - alone).abs().max() < 1e-5
            labels = torch.tensor(row["labels"])
            want = _row_losses(alone, labels)
            got = _row_losses(packed[start : start + n], labels)
            assert abs(float(got - want)) < 1e-5
            start += n
        # the model's own loss over the packed batch is the token-weighted mean of the rows'
        total = sum(_row_losses(model(input_ids=torch.tensor([r["input_ids"]])).logits[0],
                                torch.tensor(r["labels"])) for r in rows)  # fmt: skip
        trained = sum(sum(label != IGNORE for label in r["labels"][1:]) for r in rows)
        assert abs(float(model(**batch).loss) - float(total) / trained) < 1e-5


def test_a_padded_batch_gives_the_same_logits(prepared: Path) -> None:
    rows = [open_sft(prepared, "train")[i] for i in range(4)]
    model = _tiny_model(max(max(r["input_ids"]) for r in rows) + 1)
    batch = PaddedCollator(pad_id=2)(rows)
    with torch.no_grad():
        padded = model(**batch).logits
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            assert (padded[i, :n] - alone).abs().max() < 1e-5
            assert (batch["labels"][i, n:] == IGNORE).all()
    assert padding_share([[10, 10]]) == 0.0 and padding_share([[10, 30]]) == pytest.approx(1 / 3)


def test_rows_over_the_context_are_refused_or_dropped(
    tmp_path: Path, merged_tokenizer_dir: Path
) -> None:
    splits = {"train": _write(tmp_path / "train.jsonl", ROWS),
              "dev": _write(tmp_path / "dev.jsonl", [])}  # fmt: skip
    with pytest.raises(
        StageError,
        match=r"3 of 4 train rows are longer than the model's context "
        r"of 20 tokens \(the longest, line 4, has \d+\)",
    ):
        prepare_sft(splits, merged_tokenizer_dir, tmp_path / "a", 20, "error")
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a.tmp-*"))
    stats = prepare_sft(splits, merged_tokenizer_dir, tmp_path / "b", 20, "drop")
    assert stats["train"]["rows"] == 1 and stats["train"]["dropped_too_long"] == 3
    assert stats["dev"]["rows"] == 0 and len(open_sft(tmp_path / "b", "dev")) == 0


def test_a_broken_row_names_its_line(tmp_path: Path, merged_tokenizer_dir: Path) -> None:
    bad = [ROWS[0], {"prompt": "Is <dna>ACGZ</dna> one?", "answer": "no", "markup": True}]
    splits = {"train": _write(tmp_path / "train.jsonl", bad)}
    with pytest.raises(StageError, match=r"train.jsonl:2: cannot encode the row .*'Z'"):
        prepare_sft(splits, merged_tokenizer_dir, tmp_path / "a", 512, "error")
    (tmp_path / "train.jsonl").write_text('{"prompt": "x", "answer": "y"}\n{oops\n')
    with pytest.raises(StageError, match=r"train.jsonl:2: not valid JSON"):
        prepare_sft(splits, merged_tokenizer_dir, tmp_path / "a", 512, "error")
