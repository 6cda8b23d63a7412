"""Packed pretraining blocks: the documents of a block do not see each other.

``PackedBlocks`` gives position ids that restart at every document and no attention mask; given
those and no cache, transformers builds a block-diagonal causal mask. These tests run a tiny
LLaMA on real packed blocks and compare every document with the same tokens run alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from llamagene.training.corpus import PackedBlocks, PackedCorpus, prepare_corpus
from llamagene.training.data_recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
BOS, EOS = 1, 2  # <s> and </s> of the merged Mistral tokenizer
BLOCK = 128
ATOL = 1e-5


# ---- position ids and labels on hand-made blocks --------------------------------------------


def _blocks(tmp_path: Path, tokens: list[int], block: int, real: int, **kw: Any) -> PackedBlocks:
    path = tmp_path / "split.bin"
    np.array(tokens, dtype=np.uint32).tofile(path)
    return PackedBlocks(path, block, len(tokens) // block, real, **kw)


def test_positions_restart_at_each_document_block_start_and_padding(tmp_path: Path) -> None:
    tokens = [
        BOS, 5, 6, EOS, BOS, 7, EOS, BOS,  # two documents, then the first token of a third
        8, 9, EOS, BOS, 4, EOS, EOS, EOS,  # the rest of it (mid-document start), one more, pad
    ]  # fmt: skip
    data = _blocks(tmp_path, tokens, 8, real=14)
    assert data.bos_id is None and len(data) == 2
    first, last = data[0], data[-1]
    assert data.bos_id == BOS  # the first token of the file always starts a document
    assert set(first) == {"input_ids", "labels", "position_ids"}  # no attention_mask
    assert first["input_ids"].tolist() == tokens[:8]
    assert first["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
    assert first["labels"].tolist() == [-100, 5, 6, EOS, -100, 7, EOS, -100]
    assert last["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert last["labels"].tolist() == [8, 9, EOS, -100, 4, EOS, -100, -100]
    for item in (first, last):
        assert all(t.dtype == torch.long and t.shape == (8,) for t in item.values())


def test_one_padding_token_and_a_block_of_one_document(tmp_path: Path) -> None:
    data = _blocks(tmp_path, [BOS, 3, 3, 3, 3, 3, 3, 3, 3, 3, EOS, EOS], 6, real=11, bos_id=BOS)
    assert data[0]["position_ids"].tolist() == [0, 1, 2, 3, 4, 5]  # linear: plain causal
    assert data[0]["labels"].tolist() == [-100, 3, 3, 3, 3, 3]
    assert data[1]["position_ids"].tolist() == [0, 1, 2, 3, 4, 0]
    assert data[1]["labels"].tolist() == [3, 3, 3, 3, EOS, -100]
    with pytest.raises(IndexError):
        data[2]


def test_an_explicit_bos_id_wins_over_the_first_token(tmp_path: Path) -> None:
    data = _blocks(tmp_path, [7, BOS, 5, EOS], 4, real=4, bos_id=BOS)
    assert data[0]["position_ids"].tolist() == [0, 0, 1, 2]


# ---- a tiny LLaMA on a real packed corpus ---------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, merged_tokenizer_dir: Path) -> PackedCorpus:
    """DNA, protein and English documents of 30-60 tokens packed into blocks of 128."""
    tmp = tmp_path_factory.mktemp("packing")
    sources = [
        {"name": "dna", "kind": "dna", "paths": [str(FIXTURES / "genomes" / "genes_a.fa")],
         "window_chars": 120},
        {"name": "protein", "kind": "protein",
         "paths": [str(FIXTURES / "genomes" / "proteins.faa")], "window_chars": 60},
        {"name": "english", "kind": "text", "paths": [str(FIXTURES / "corpus" / "prose.txt")]},
    ]  # fmt: skip
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"sources": sources, "validation_fraction": 0.1}))
    return prepare_corpus(load_recipe(recipe), merged_tokenizer_dir, BLOCK, tmp / "cache")


@pytest.fixture(scope="module")
def batch(corpus: PackedCorpus) -> dict[str, torch.Tensor]:
    """Three blocks of 3+ documents each and the padded last block, stacked (micro batch 4),
    with ``real``: how many tokens of each block are not padding."""
    data = corpus.dataset("train")
    many = [i for i in range(len(data) - 1) if int((data[i]["input_ids"] == BOS).sum()) >= 3]
    assert len(many) >= 3 and corpus.stats["padding_tokens"] > 0
    rows = [*many[:3], len(data) - 1]
    items = [data[i] for i in rows]
    real = [min(BLOCK, corpus.stats["real_tokens"] - i * BLOCK) for i in rows]
    assert real[-1] < BLOCK
    return {**{k: torch.stack([x[k] for x in items]) for k in items[0]}, "real": torch.tensor(real)}


def _model(corpus: PackedCorpus, attn: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = int(np.fromfile(corpus.dir / "train.bin", dtype=np.uint32).max()) + 1
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=BLOCK,
        initializer_range=0.05, use_cache=False, attn_implementation=attn,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _segments(batch: dict[str, torch.Tensor], row: int) -> list[tuple[int, int]]:
    """(start, end) of each document of a row, or of its part in the block, found from the
    token ids (not from the position ids under test); padding excluded."""
    real = int(batch["real"][row])
    starts = sorted({0, *torch.nonzero(batch["input_ids"][row, :real] == BOS).flatten().tolist()})
    return list(zip(starts, [*starts[1:], real], strict=True))


def test_the_corpus_bos_is_the_tokenizers(corpus: PackedCorpus, merged_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    data = corpus.dataset("train")
    tokenizer = AutoTokenizer.from_pretrained(str(merged_tokenizer_dir))
    for i in range(len(data)):
        item = data[i]
        starts = item["input_ids"] == tokenizer.bos_token_id
        assert (item["labels"][starts] == -100).all()
        starts[0] = True
        real = corpus.stats["real_tokens"] - i * BLOCK
        if real < BLOCK:
            starts[real] = True
        assert torch.equal(item["position_ids"] == 0, starts), i
    assert data.bos_id == tokenizer.bos_token_id == BOS


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_documents_in_a_block_match_the_documents_alone(
    corpus: PackedCorpus, batch: dict[str, torch.Tensor], attn: str
) -> None:
    model = _model(corpus, attn)
    ids, labels = batch["input_ids"], batch["labels"]
    assert "attention_mask" not in batch
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=batch["position_ids"], labels=labels)
    token_loss = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
    )
    alone_sum, alone_count, checked = 0.0, 0, 0
    for row in range(len(ids)):
        for a, e in _segments(batch, row):
            with torch.no_grad():
                alone = model(input_ids=ids[row, a:e][None]).logits[0]
            assert (out.logits[row, a:e] - alone).abs().max() < ATOL, (row, a, e)
            loss = torch.nn.functional.cross_entropy(
                alone[:-1], labels[row, a + 1 : e], ignore_index=-100, reduction="none"
            )
            # token losses near 10: fp32 rounding of a log-sum-exp over ~40k rows is ~1e-6 of it
            gap = (token_loss[row, a : e - 1] - loss).abs() - 1e-6 * loss.abs()
            assert gap.max() < ATOL, (row, a, e)
            if e < BLOCK:  # the last token predicts no token of the next segment
                assert labels[row, e] == -100
            alone_sum += float(loss.sum())
            alone_count += int((labels[row, a + 1 : e] != -100).sum())
            checked += 1
    assert checked >= 10
    # the loss the Trainer sees is the mean over the documents' own token losses
    assert float(out.loss) == pytest.approx(alone_sum / alone_count, abs=ATOL)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_old_way_and_near_misses_let_documents_see_each_other(
    corpus: PackedCorpus, batch: dict[str, torch.Tensor], attn: str
) -> None:
    model = _model(corpus, attn)
    ids, positions = batch["input_ids"], batch["position_ids"]
    ones = torch.ones_like(ids)
    with torch.no_grad():
        new = model(input_ids=ids, position_ids=positions).logits
        variants = {
            "old: a mask of ones, positions 0..n": model(input_ids=ids, attention_mask=ones),
            "restarting positions with a mask": model(
                input_ids=ids, position_ids=positions, attention_mask=ones
            ),
            "restarting positions with a cache": model(
                input_ids=ids, position_ids=positions, use_cache=True
            ),
        }
    for name, out in variants.items():
        worst = 0.0
        for row in range(len(ids)):
            for a, e in _segments(batch, row)[1:]:  # the first segment sees nothing before it
                worst = max(worst, float((out.logits[row, a:e] - new[row, a:e]).abs().max()))
        assert worst > 1000 * ATOL, name
