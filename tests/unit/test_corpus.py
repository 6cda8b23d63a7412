"""The pretraining corpus: recipes, documents, split, mixing, packing, the content cache."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import llamagene.training.corpus as corpus_module
from llamagene.errors import ConfigError
from llamagene.sequences import SequenceFormatError
from llamagene.training.corpus import CorpusError, PackedCorpus, prepare_corpus, sample_documents
from llamagene.training.data_recipe import DataRecipe, load_recipe, recipe_inputs
from llamagene.training.documents import _documents, split_validation

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
PROSE = FIXTURES / "corpus" / "prose.txt"
NOTES = FIXTURES / "corpus" / "notes.jsonl"
GENES_A = FIXTURES / "genomes" / "genes_a.fa"
GENES_B = FIXTURES / "genomes" / "genes_b.fa.gz"
PROTEINS = FIXTURES / "genomes" / "proteins.faa"
BOS, EOS, DUMMY = 1, 2, 28705  # <s>, </s> and the lone '▁' of the merged Mistral tokenizer


def _recipe(tmp_path: Path, sources: list[dict[str, Any]], **top: Any) -> DataRecipe:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"sources": sources, **top}), encoding="utf-8")
    return load_recipe(path)


def _text_source(path: Path = PROSE, **extra: Any) -> dict[str, Any]:
    return {"name": "english", "kind": "text", "paths": [str(path)], **extra}


def _docs(source: dict[str, Any], tmp_path: Path) -> tuple[list[str], dict[str, Any]]:
    stats = tmp_path / "counts.json"
    recipe = _recipe(tmp_path, [source])
    source_json = recipe.sources[0].model_dump_json(exclude_unset=True)
    docs = [row["text"] for row in _documents(source_json, str(stats))]
    return docs, json.loads(stats.read_text())


def _token_docs(corpus: PackedCorpus, split: str, source: str | None = None) -> list[list[int]]:
    """The documents of a split (or of one source's validation blocks), cut at each eos,
    padding removed."""
    tokens = np.fromfile(corpus.dir / f"{split}.bin", dtype=np.uint32)
    parts = corpus.stats["splits"][split].get("sources")
    if parts is None:
        return _cut(tokens[: corpus.stats["splits"][split]["real_tokens"]].tolist())
    docs = []
    for name, part in parts.items():
        if source in (None, name):
            start = part["first_block"] * corpus.block_size
            docs += _cut(tokens[start : start + part["real_tokens"]].tolist())
    return docs


def _cut(tokens: list[int]) -> list[list[int]]:
    docs, current = [], []
    for t in tokens:
        current.append(t)
        if t == EOS:
            docs.append(current)
            current = []
    assert not current
    return docs


# ---- recipes --------------------------------------------------------------------------------


def test_recipe_problems_reported_together_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    sources = [
        _text_source(weight=0),
        _text_source(path=tmp_path / "missing.txt"),
        {"name": "dna", "kind": "dna", "paths": [str(GENES_A)], "text_field": "x"},
        {"name": "jl", "kind": "jsonl", "paths": [str(tmp_path / "gone.jsonl")], "wight": 2},
        {"name": "ok", "kind": "jsonl", "paths": [str(tmp_path / "gone.jsonl")]},
    ]
    path.write_text(yaml.safe_dump({"sources": sources, "seeed": 1}), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    text = "\n".join(info.value.problems)
    assert str(path) in str(info.value)
    assert "sources: duplicate source names: english" in text
    assert "sources.0.weight: Input should be greater than 0" in text
    assert "sources.3.wight: unknown key" in text
    assert "sources.2: Value error, text_field: not used by dna sources" in text
    assert "seeed: unknown key" in text
    assert f"sources.english.paths[0]: {tmp_path / 'missing.txt'} does not exist" in text
    assert f"sources.ok.paths[0]: {tmp_path / 'gone.jsonl'} does not exist" in text
    assert len(info.value.problems) == 7, text


def test_paths_resolve_against_the_recipe_and_inputs_are_named(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(PROSE, tmp_path / "data" / "a.txt")
    (tmp_path / "data" / "skip.md").write_text("not a .txt file\n")
    recipe = _recipe(tmp_path, [{"name": "en", "kind": "text", "paths": ["data"]}])
    assert recipe_inputs(recipe) == {"sources.en.paths[0]": tmp_path / "data"}
    assert recipe.sources[0].files() == [tmp_path / "data" / "a.txt"]
    with pytest.raises(ConfigError, match=r"folder .*data holds no .jsonl files \(or .gz\)"):
        _recipe(tmp_path, [{"name": "en", "kind": "jsonl", "paths": ["data"]}])


@pytest.mark.parametrize("path", sorted((ROOT / "data_recipes").glob("*pretrain*.yaml")), ids=str)
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path, check_files=path.name == "demo_pretrain.yaml")
    assert recipe.sources and recipe_inputs(recipe)


# ---- documents ------------------------------------------------------------------------------


def test_text_paragraphs_are_documents(tmp_path: Path) -> None:
    docs, counts = _docs(_text_source(), tmp_path)
    assert len(docs) == 6 and counts["dropped_short"] == 1  # "Short." is under 16 characters
    assert docs[0].startswith("Every living cell") and docs[0].endswith("argued about.")
    assert docs[0].count("\n") == 3 and "\n\n" not in "".join(docs)
    assert counts["chars"] == sum(map(len, docs)) and not counts["max_chars_reached"]


def test_jsonl_documents_and_max_chars(tmp_path: Path) -> None:
    source = {"name": "notes", "kind": "jsonl", "paths": [str(NOTES)]}
    docs, counts = _docs(source, tmp_path)
    assert len(docs) == 7 and docs[0].startswith("The ribosome") and counts["dropped_short"] == 1
    docs, counts = _docs({**source, "max_chars": 100}, tmp_path)
    assert len(docs) == 2 and counts["chars"] >= 100  # the document that reaches the cap is kept
    assert counts["max_chars_reached"] and counts["stopped_at"] == f"{NOTES}:4"


def test_fasta_windows(tmp_path: Path) -> None:
    source = {"name": "dna", "kind": "dna", "paths": [str(GENES_A), str(GENES_B)]}
    docs, counts = _docs({**source, "window_chars": 300, "min_doc_chars": 150}, tmp_path)
    assert all(150 <= len(d) <= 300 for d in docs) and set("".join(docs)) <= set("ACGTN")
    assert counts["documents"] == len(docs) == 40 and counts["dropped_short"] == 1
    protein, _ = _docs({"name": "p", "kind": "protein", "paths": [str(PROTEINS)]}, tmp_path)
    assert len(protein) == 14 and not any("*" in d for d in protein)


def test_bad_inputs_name_file_and_line(tmp_path: Path) -> None:
    bad_text = tmp_path / "latin1.txt"
    bad_text.write_bytes(b"fine first line here\n\nna\xefve second paragraph\n")
    with pytest.raises(CorpusError, match=rf"{bad_text}:3: not valid UTF-8 \(byte 0xef"):
        _docs(_text_source(bad_text), tmp_path)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a good first document"}\n{"text": oops}\n')
    with pytest.raises(CorpusError, match=rf"{bad_json}:2: not valid JSON"):
        _docs({"name": "j", "kind": "jsonl", "paths": [str(bad_json)]}, tmp_path)
    with pytest.raises(CorpusError, match=rf"{NOTES}:1: no string field 'body' \(found: text"):
        _docs({"name": "j", "kind": "jsonl", "paths": [str(NOTES)], "text_field": "body"}, tmp_path)
    bad_fasta = tmp_path / "bad.fa"
    bad_fasta.write_text(">r1\nACGT\n>r2\nACGJ\n")
    with pytest.raises(SequenceFormatError, match=rf"{bad_fasta}:4: record 'r2'"):
        _docs({"name": "d", "kind": "dna", "paths": [str(bad_fasta)]}, tmp_path)
    truncated = tmp_path / "cut.txt.gz"
    truncated.write_bytes(gzip.compress(PROSE.read_bytes())[:200])
    with pytest.raises(CorpusError, match="truncated or corrupt gzip"):
        _docs(_text_source(truncated), tmp_path)


# ---- split and mixing (pure) ----------------------------------------------------------------


def test_validation_split_is_a_stable_hash() -> None:
    first = split_validation(10_000, 42, "dna", 0.05, 1)
    assert np.array_equal(first, split_validation(10_000, 42, "dna", 0.05, 1))
    assert 400 < first.sum() < 600
    assert not np.array_equal(first, split_validation(10_000, 43, "dna", 0.05, 1))
    assert not np.array_equal(first, split_validation(10_000, 42, "protein", 0.05, 1))
    longer = split_validation(20_000, 42, "dna", 0.05, 1)  # more data: old choices unchanged
    assert np.array_equal(longer[:10_000], first)
    assert split_validation(5, 42, "x", 0.0, 2).sum() == 2
    assert split_validation(1, 42, "x", 0.9, 5).sum() == 0  # always one document to train on
    assert split_validation(2, 42, "x", 0.99, 0).sum() == 1


def test_sample_documents_epochs_and_partial() -> None:
    lengths = np.full(100, 10, dtype=np.int64)
    idx, epochs = sample_documents(lengths, 254, np.random.default_rng(0))
    assert epochs == 0 and len(idx) == 25 and len(set(idx.tolist())) == 25  # nearest boundary
    idx, epochs = sample_documents(lengths, 2_556, np.random.default_rng(0))
    assert epochs == 2 and len(idx) == 256 and int(lengths[idx].sum()) == 2_560
    assert np.bincount(idx).min() == 2 and np.bincount(idx).max() == 3
    assert len(sample_documents(lengths, 4, np.random.default_rng(0))[0]) == 0
    again, _ = sample_documents(lengths, 2_556, np.random.default_rng(0))
    assert np.array_equal(idx, again)


# ---- prepare_corpus -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, merged_tokenizer_dir: Path) -> PackedCorpus:
    """DNA, protein, text and JSONL, with 3x more tokens asked for than the sources hold."""
    tmp = tmp_path_factory.mktemp("mixed")
    sources = [
        {"name": "dna", "kind": "dna", "paths": [str(GENES_A), str(GENES_B)],
         "window_chars": 200, "weight": 4},
        {"name": "protein", "kind": "protein", "paths": [str(PROTEINS)], "weight": 3},
        _text_source(weight=2),
        {"name": "notes", "kind": "jsonl", "paths": [str(NOTES)], "weight": 1},
    ]  # fmt: skip
    recipe = _recipe(tmp, sources, total_tokens=30_000, validation_fraction=0.1)
    return prepare_corpus(recipe, merged_tokenizer_dir, 64, tmp / "cache")


def test_mixing_shares_and_repeats(mixed: PackedCorpus) -> None:
    sources = mixed.stats["sources"]
    for name, share in {"dna": 0.4, "protein": 0.3, "english": 0.2, "notes": 0.1}.items():
        assert sources[name]["share_requested"] == pytest.approx(share)
        assert sources[name]["share_actual"] == pytest.approx(share, abs=0.01)
    assert sources["notes"]["full_epochs"] >= 10 and sources["notes"]["repeat_factor"] > 10
    assert sum(s["tokens_used"] for s in sources.values()) == mixed.stats["real_tokens"]
    assert mixed.stats["real_tokens"] == pytest.approx(30_000, rel=0.01)  # whole documents


def test_validation_documents_are_never_mixed(mixed: PackedCorpus) -> None:
    valid = _token_docs(mixed, "valid")
    sources = mixed.stats["sources"]
    assert len(valid) == sum(s["valid_documents"] for s in sources.values())
    assert all(s["valid_documents"] >= 1 for s in sources.values())
    train = {tuple(d) for d in _token_docs(mixed, "train")}
    assert not train & {tuple(d) for d in valid}


def test_each_source_has_validation_blocks_of_its_own(mixed: PackedCorpus) -> None:
    """So the validation loss of each source (DNA, protein, English) is measured alone."""
    parts = mixed.valid_by_source()
    assert list(parts) == ["dna", "protein", "english", "notes"]
    assert sum(len(p) for p in parts.values()) == mixed.valid_blocks == len(mixed.dataset("valid"))
    for name, blocks in parts.items():
        want = _token_docs(mixed, "valid", name)
        assert len(want) == mixed.stats["sources"][name]["valid_documents"]
        got = np.concatenate([blocks[i]["input_ids"].numpy() for i in range(len(blocks))])
        real = mixed.stats["splits"]["valid"]["sources"][name]["real_tokens"]
        assert _cut(got[:real].tolist()) == want
        last = blocks[len(blocks) - 1]
        assert (last["labels"][real - (len(blocks) - 1) * mixed.block_size :] == -100).all()


def test_the_windows_of_one_record_never_straddle_the_split(
    tmp_path: Path, merged_tokenizer_dir: Path
) -> None:
    from llamagene.training.documents import read_source

    source = {"name": "dna", "kind": "dna", "paths": [str(GENES_A), str(GENES_B)],
              "window_chars": 100}  # fmt: skip
    recipe = _recipe(tmp_path, [source], validation_fraction=0.3)
    (tmp_path / "work").mkdir()
    docs = read_source(recipe.sources[0], recipe, merged_tokenizer_dir, "v", tmp_path / "work", 1)
    records = docs.record
    assert len(np.unique(records)) < len(records)  # records of several windows
    valid, train = set(records[docs.valid].tolist()), set(records[docs.train].tolist())
    assert valid and train and not valid & train
    assert docs.stats["valid_records"] == len(valid) and docs.stats["records"] == len(valid | train)


def test_documents_are_bos_tokens_eos_without_dummy_prefix(mixed: PackedCorpus) -> None:
    docs = _token_docs(mixed, "train") + _token_docs(mixed, "valid")
    assert all(d[0] == BOS and d.count(BOS) == 1 for d in docs)
    sequence_docs = [d for d in docs if d[1] >= 32000]  # ids past the base vocabulary
    assert len(sequence_docs) > len(docs) / 3
    assert not any(DUMMY in d for d in sequence_docs)


def test_packing_keeps_the_tail_and_pads_it(mixed: PackedCorpus) -> None:
    bs, stats = mixed.block_size, mixed.stats
    tokens = np.fromfile(mixed.dir / "train.bin", dtype=np.uint32)
    assert len(tokens) == mixed.train_blocks * bs == stats["real_tokens"] + stats["padding_tokens"]
    assert 0 < stats["padding_tokens"] < bs and stats["packing_efficiency"] > 0.99
    train = mixed.dataset("train")
    last = train[len(train) - 1]
    real = bs - stats["padding_tokens"]
    assert last["input_ids"].dtype.is_floating_point is False and last["input_ids"].shape == (bs,)
    assert (last["labels"][real:] == -100).all() and (last["input_ids"][real:] == EOS).all()
    assert "attention_mask" not in last and last["position_ids"][real] == 0  # own segment
    bos = last["input_ids"] == BOS  # a bos label is -100: no eos -> bos across the seam
    assert (last["labels"][:real] == last["input_ids"][:real].masked_fill(bos[:real], -100)).all()
    assert ((train[0]["labels"] == -100) == (train[0]["input_ids"] == BOS)).all()
    valid = mixed.dataset("valid")
    assert len(valid) == mixed.valid_blocks and valid[-1]["labels"][-1] == -100
    with pytest.raises(IndexError):
        train[len(train)]


def test_cache_hit_miss_and_leftovers(
    tmp_path: Path, merged_tokenizer_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data.txt"
    shutil.copy(PROSE, data)
    cache = tmp_path / "cache"
    recipe = _recipe(tmp_path, [_text_source(data)], validation_fraction=0.2)
    first = prepare_corpus(recipe, merged_tokenizer_dir, 32, cache)
    assert sorted(p.name for p in first.dir.iterdir()) == [
        "meta.json", "stats.json", "train.bin", "valid.bin",
    ]  # fmt: skip
    assert sorted(p.name for p in cache.iterdir()) == [first.dir.name, "file_hashes.json"]
    mtime = (first.dir / "train.bin").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="llamagene"):
        again = prepare_corpus(recipe, merged_tokenizer_dir, 32, cache)
    assert "corpus cache hit" in caplog.text and again == first
    assert (first.dir / "train.bin").stat().st_mtime_ns == mtime

    moved = tmp_path / "elsewhere.txt"  # same content under another name: same key
    shutil.move(data, moved)
    same = _recipe(tmp_path, [_text_source(moved)], validation_fraction=0.2, description="x")
    assert prepare_corpus(same, merged_tokenizer_dir, 32, cache).key == first.key

    with pytest.raises(CorpusError, match=rf"source 'english': {data} does not exist"):
        prepare_corpus(recipe, merged_tokenizer_dir, 32, cache)
    reseeded = same.model_copy(update={"seed": 1})
    keys = {first.key, prepare_corpus(reseeded, merged_tokenizer_dir, 32, cache).key}
    reweighted = same.model_copy(
        update={"sources": [same.sources[0].model_copy(update={"weight": 2.0})]}
    )
    keys.add(prepare_corpus(reweighted, merged_tokenizer_dir, 32, cache).key)
    keys.add(prepare_corpus(same, merged_tokenizer_dir, 48, cache).key)
    tok2 = tmp_path / "tok2"
    shutil.copytree(merged_tokenizer_dir, tok2)
    tokenizer_json = tok2 / "tokenizer.json"  # the same tokenizer, written differently
    tokenizer_json.write_text(json.dumps(json.loads(tokenizer_json.read_text())))
    keys.add(prepare_corpus(same, tok2, 32, cache).key)
    moved.write_bytes(moved.read_bytes().replace(b"Every", b"every"))  # one byte
    keys.add(prepare_corpus(same, merged_tokenizer_dir, 32, cache).key)
    assert len(keys) == 6


def test_interrupted_prepare_leaves_nothing_usable(
    tmp_path: Path, merged_tokenizer_dir: Path
) -> None:
    recipe = _recipe(tmp_path, [_text_source()])
    cache = tmp_path / "cache"
    key = prepare_corpus(recipe, merged_tokenizer_dir, 32, cache).key
    shutil.rmtree(cache / key[:16])
    leftover = cache / f".tmp-{key[:16]}-999-dead"  # a prepare killed mid-way
    leftover.mkdir()
    (leftover / "train.bin").write_bytes(b"junk")
    half = cache / key[:16]  # a folder without meta.json is never trusted
    half.mkdir()
    (half / "train.bin").write_bytes(b"junk")
    corpus = prepare_corpus(recipe, merged_tokenizer_dir, 32, cache)
    assert (corpus.dir / "meta.json").is_file() and corpus.train_blocks > 0
    assert len(corpus.dataset("train")[0]["input_ids"]) == 32


def test_a_racing_process_that_finished_first_wins(
    tmp_path: Path, merged_tokenizer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    real_build = corpus_module._build

    def racing_build(*args: Any) -> None:
        real_build(*args)
        work, meta = args[-2:]
        winner = cache / meta["key"][:16]  # another process renamed its folder in first
        shutil.copytree(work, winner)
        (winner / "winner").touch()

    monkeypatch.setattr(corpus_module, "_build", racing_build)
    corpus = prepare_corpus(_recipe(tmp_path, [_text_source()]), merged_tokenizer_dir, 32, cache)
    assert (corpus.dir / "winner").exists() and corpus.train_blocks > 0
    assert sorted(p.name for p in cache.iterdir()) == [corpus.dir.name, "file_hashes.json"]


def test_empty_source_is_an_error(tmp_path: Path, merged_tokenizer_dir: Path) -> None:
    recipe = _recipe(tmp_path, [_text_source(min_doc_chars=10_000)])
    with pytest.raises(CorpusError, match=r"source 'english': no documents .* \(7 shorter than"):
        prepare_corpus(recipe, merged_tokenizer_dir, 32, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_num_proc_gives_the_same_bytes_and_hf_cache_stays_inside(
    tmp_path: Path, merged_tokenizer_dir: Path
) -> None:
    import datasets

    hf_cache = Path(datasets.config.HF_DATASETS_CACHE)
    before = sorted(hf_cache.rglob("*")) if hf_cache.exists() else None
    recipe = _recipe(tmp_path, [_text_source(), {"name": "p", "kind": "protein",
                                                  "paths": [str(PROTEINS)]}])  # fmt: skip
    one = prepare_corpus(recipe, merged_tokenizer_dir, 32, tmp_path / "a", num_proc=1)
    two = prepare_corpus(recipe, merged_tokenizer_dir, 32, tmp_path / "b", num_proc=2)
    assert one.key == two.key
    for name in ("train.bin", "valid.bin"):
        assert (one.dir / name).read_bytes() == (two.dir / name).read_bytes()
    assert (sorted(hf_cache.rglob("*")) if hf_cache.exists() else None) == before
