"""Growing the vocabulary, LoRA with trainable embedding rows, and loading an adapter back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llamagene.alphabets import to_model_text
from llamagene.errors import StageError
from llamagene.training.export import copy_tokenizer
from llamagene.training.model import (
    PAD_VOCAB_TO,
    LoraSettings,
    attach_lora,
    build_base_model,
    grow_embeddings,
    load_adapter_model,
    tokenizer_meta,
)

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
        "num_key_value_heads": 1}  # fmt: skip


def _base(tokenizer_dir: Path, seed: int = 0) -> torch.nn.Module:
    meta = tokenizer_meta(tokenizer_dir)
    return build_base_model(None, TINY, seed, int(meta["base_vocab_size"]))


def test_built_base_is_seeded(merged_tokenizer_dir: Path) -> None:
    a, b, c = (_base(merged_tokenizer_dir, s) for s in (0, 0, 1))
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert wa.shape[0] == 32000


def test_grow_pads_rows_and_composes_new_rows(merged_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    model = _base(merged_tokenizer_dir)
    before = model.get_input_embeddings().weight[:32000].clone()
    before_out = model.get_output_embeddings().weight[:32000].clone()
    grown = grow_embeddings(model, merged_tokenizer_dir, "compose")
    emb = model.get_input_embeddings().weight
    assert grown.rows % PAD_VOCAB_TO == 0 and grown.rows >= grown.tokenizer_size
    assert emb.shape[0] == grown.rows == model.get_output_embeddings().weight.shape[0]
    assert model.config.vocab_size == grown.rows
    assert torch.equal(emb[:32000], before)  # base rows untouched
    assert torch.equal(model.get_output_embeddings().weight[:32000], before_out)
    assert grown.composed_from_base == len(grown.new_token_ids) > 0
    # a DNA piece's row is the mean of the base rows of its letters' base tokens
    tok = AutoTokenizer.from_pretrained(str(merged_tokenizer_dir))
    piece_id = tok(to_model_text("ACGT", "dna"), add_special_tokens=False)["input_ids"][-1]
    letters = tok.decode([piece_id])
    # inside a word: the base's split of "x" + letters, less the tokens of "x"
    ids = tok("x" + letters, add_special_tokens=False)["input_ids"]
    ids = ids[len(tok("x", add_special_tokens=False)["input_ids"]) :]
    assert torch.allclose(emb[piece_id], before[ids].mean(dim=0), atol=1e-6)
    # padding rows beyond the tokenizer hold the mean of the base rows
    if grown.rows > grown.tokenizer_size:
        assert torch.allclose(emb[-1], before.mean(dim=0), atol=1e-6)


def test_compose_builds_no_row_from_word_start_tokens(merged_tokenizer_dir: Path) -> None:
    """On the real mistral-common base (32,000 pieces): every new DNA and protein piece is
    composed from the tokens its letters get inside a word, none starting with ``▁``."""
    from transformers import AutoTokenizer

    from llamagene.training.model import _base_ids

    tok = AutoTokenizer.from_pretrained(str(merged_tokenizer_dir))
    meta = tokenizer_meta(merged_tokenizer_dir)
    new_ids = range(int(meta["base_vocab_size"]), int(meta["vocab_size"]))
    composed = {i: _base_ids(tok, tok.convert_ids_to_tokens(i), 32000) for i in new_ids}
    assert all(composed.values())
    starts = [
        (i, tok.convert_ids_to_tokens(j))
        for i, ids in composed.items() for j in ids
        if tok.convert_ids_to_tokens(j).startswith("\u2581")
    ]  # fmt: skip
    assert starts == []
    assert len(composed) > 500  # DNA and protein pieces both


def test_mean_init_gives_every_new_row_the_mean(merged_tokenizer_dir: Path) -> None:
    model = _base(merged_tokenizer_dir)
    before = model.get_input_embeddings().weight[:32000].clone()
    grown = grow_embeddings(model, merged_tokenizer_dir, "mean")
    new_rows = model.get_input_embeddings().weight[grown.base_vocab_size :]
    assert torch.allclose(new_rows, before.mean(dim=0).expand_as(new_rows), atol=1e-6)
    assert grown.composed_from_base == 0


def test_grow_refuses_a_model_of_another_vocabulary(merged_tokenizer_dir: Path) -> None:
    small = build_base_model(None, TINY, 0, 1000)
    with pytest.raises(StageError, match="do not belong together"):
        grow_embeddings(small, merged_tokenizer_dir, "compose")


@pytest.mark.parametrize("mode", ["modules_to_save", "trainable_tokens", "frozen"])
def test_lora_trains_adapters_and_chosen_rows_only(merged_tokenizer_dir: Path, mode: str) -> None:
    model = _base(merged_tokenizer_dir)
    grown = grow_embeddings(model, merged_tokenizer_dir, "compose")
    peft_model = attach_lora(model, LoraSettings(r=4), grown.new_token_ids, mode)  # type: ignore[arg-type]
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    embedding_names = {n for n in trainable if "embed_tokens" in n or "lm_head" in n}
    if mode == "frozen":
        assert not embedding_names
    else:
        assert any("embed_tokens" in n for n in embedding_names)
        assert any("lm_head" in n for n in embedding_names)
    assert not any("base_layer" in n or n.endswith("q_proj.weight") for n in trainable)


def test_adapter_loads_only_onto_a_resized_base(merged_tokenizer_dir: Path, tmp_path: Path) -> None:
    model = _base(merged_tokenizer_dir)
    grown = grow_embeddings(model, merged_tokenizer_dir, "compose")
    peft_model = attach_lora(model, LoraSettings(r=4), grown.new_token_ids, "trainable_tokens")
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    peft_model.save_pretrained(str(tmp_path))
    copy_tokenizer(merged_tokenizer_dir, tmp_path)
    info = {"rows": grown.rows, "embedding_init": "compose"}
    (tmp_path / "llamagene_adapter.json").write_text(json.dumps(info))
    peft_model.eval()
    x = torch.tensor([[1, grown.new_token_ids[0], 5, grown.new_token_ids[-1]]])
    with torch.no_grad():
        expected = peft_model(input_ids=x).logits
    fresh = _base(merged_tokenizer_dir)  # 32,000 rows: load_adapter_model resizes it first
    loaded = load_adapter_model(fresh, tmp_path).eval()
    with torch.no_grad():
        got = loaded(input_ids=x).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_embedding_rows_get_their_own_learning_rate(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

    from llamagene.training.collate import PackedCollator
    from llamagene.training.model import LoraSettings, attach_lora
    from llamagene.training.trainer import TrainingData, embedding_parameter, make_trainer

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=128,
                         tie_word_embeddings=False)  # fmt: skip
    model = attach_lora(LlamaForCausalLM(config), LoraSettings(r=2), [100, 101], "trainable_tokens")
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1,
                             use_cpu=True, report_to=[])  # fmt: skip
    data = TrainingData([{"input_ids": [1, 2], "labels": [1, 2]}], [], PackedCollator(), False)
    trainer = make_trainer(model, args, data, tmp_path / "logs", embedding_lr=5e-3)
    optimizer = trainer.create_optimizer()
    rows = {id(p) for n, p in model.named_parameters() if embedding_parameter(n)}
    assert rows and all(p.requires_grad for n, p in model.named_parameters()
                        if embedding_parameter(n))  # fmt: skip
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & rows:
            assert ids == rows and group["lr"] == 5e-3 and group["weight_decay"] == 0.0
        else:
            assert group["lr"] == 1e-3
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    frozen = model.get_input_embeddings().token_adapter.base_layer.weight  # the base rows
    assert not frozen.requires_grad and id(frozen) not in trained
