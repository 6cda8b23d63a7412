"""Merging into the real 32,000-piece Mistral v1 SentencePiece base, and bases that are refused."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sentencepiece as spm

from llamagene.alphabets import to_model_text
from llamagene.errors import StageError
from llamagene.vocab import (
    build_fast_tokenizer,
    load_base_tokenizer,
    merge_models,
    train_sentencepiece_bpe,
)


def _random_dna(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("AACGTT") for _ in range(n))


@pytest.fixture(scope="module")
def merged(base_tokenizer_path: Path):  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    dna = train_sentencepiece_bpe([_random_dna(rng, 300) for _ in range(200)], 200, 16, 400, 1, 0)
    protein = train_sentencepiece_bpe(
        ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(200)) for _ in range(100)],
        150, 16, 400, 1, 0,
    )  # fmt: skip
    base = load_base_tokenizer(base_tokenizer_path)
    return base, merge_models(base, {"dna": dna, "protein": protein}), dna


def test_merged_layout(merged) -> None:  # type: ignore[no-untyped-def]
    base, vocab, _ = merged
    assert vocab.base_size == 32000
    assert vocab.ranges == {"dna": (32000, 32199), "protein": (32199, 32348)}
    for i in (0, 1, 2, 500, 31999):  # base pieces keep their ids and scores
        assert vocab.proto.pieces[i].piece == base.pieces[i].piece
        assert vocab.proto.pieces[i].score == base.pieces[i].score
    scores = [p.score for p in vocab.proto.pieces[32000:]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert max(scores) < min(p.score for p in base.pieces if p.type == 1 and p.score > -1e8)


def test_fast_equals_slow_on_whitespace_and_mixed_text(merged) -> None:  # type: ignore[no-untyped-def]
    _, vocab, dna_model = merged
    fast = build_fast_tokenizer(vocab.proto)
    slow = spm.SentencePieceProcessor(model_proto=vocab.proto.SerializeToString())
    only = spm.SentencePieceProcessor(model_proto=dna_model)
    rng = random.Random(1)
    seq = _random_dna(rng, 500)
    texts = [
        "", " ", "  two  spaces", " " * 40 + "x" + " " * 17 + "y", "tab\tand\nnewline",
        "Ünïcødé 世界 🙂 and bytes \x01", "ACGT GATTACA all-caps DNA-looking English",
        f"Sequence: {to_model_text(seq, 'dna')} -> yes",
    ]  # fmt: skip
    texts += [
        "".join(rng.choice(" ▁aA\té世🙂") for _ in range(rng.randint(0, 30))) for _ in range(300)
    ]
    for text in texts:
        assert fast.encode(text, add_special_tokens=False).ids == slow.encode(text), repr(text)
    got = fast.encode(to_model_text(seq, "dna"), add_special_tokens=False).tokens
    assert got[1:] == [to_model_text(p, "dna") for p in only.encode(seq, out_type=str)]
    assert fast.decode(fast.encode(f"x {to_model_text(seq, 'dna')}").ids) == f"x {seq}"


def test_base_refusals(tmp_path: Path) -> None:
    not_sp = tmp_path / "tokenizer.model"
    not_sp.write_bytes(b"\x00\x01 definitely not protobuf \xff" * 10)
    with pytest.raises(StageError, match="not a SentencePiece model"):
        load_base_tokenizer(not_sp)
    byte_level = tmp_path / "llama3"
    byte_level.mkdir()
    (byte_level / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel"}})
    )
    with pytest.raises(StageError, match=r"byte-level BPE tokenizer .* is not supported"):
        load_base_tokenizer(byte_level)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StageError, match=r"no tokenizer\.model or tokenizer\.json here"):
        load_base_tokenizer(empty)


def test_unigram_base_refused(tmp_path: Path) -> None:
    model = tmp_path / "uni.model"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["the quick brown fox jumps over the lazy dog"] * 50),
        model_prefix=str(tmp_path / "uni"), model_type="unigram", vocab_size=30, minloglevel=2,
    )  # fmt: skip
    with pytest.raises(StageError, match="SentencePiece Unigram model"):
        load_base_tokenizer(model)


def test_hf_dir_with_tokenizer_model(tmp_path: Path, base_tokenizer_path: Path) -> None:
    (tmp_path / "tokenizer.model").write_bytes(base_tokenizer_path.read_bytes())
    assert len(load_base_tokenizer(tmp_path).pieces) == 32000


def test_hf_trainer_becomes_an_equivalent_sentencepiece_model() -> None:
    from tokenizers import Tokenizer, models, trainers

    from llamagene.vocab import parse_model, train_hf_bpe

    rng = random.Random(5)
    sentences = [_random_dna(rng, 400) for _ in range(150)]
    model = train_hf_bpe(sentences, 300, 16)
    proto = parse_model(model)
    assert len(proto.pieces) == 300 and proto.pieces[0].piece == "<unk>"
    sp = spm.SentencePieceProcessor(model_proto=model)
    hf = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"], max_token_length=16,
                                  show_progress=False)  # fmt: skip
    hf.train_from_iterator(sentences, trainer=trainer)
    held_out = [_random_dna(rng, 300) for _ in range(50)]
    same = sum(sp.encode(s, out_type=str) == hf.encode(s).tokens for s in held_out)
    assert same == len(held_out)
