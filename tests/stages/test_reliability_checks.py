"""Runs that survive odd configs: hints that name real keys, alphabet and vocabulary-size checks
in ``train_bpe``, bases whose normalizer changes whitespace, and byte-reproducible outputs.

1. Unknown keys name the keys allowed where they stand (:func:`format_validation_error` with a
   model); a DNA file holding protein is told the key of the config that read it.
2. A protein input that looks like DNA is a warning, or with ``strict_alphabet`` an error.
3. A vocabulary larger than the input supports is an error, from ``validate`` and at run time.
4. ``merge_vocab`` refuses a base whose normalizer changes whitespace, naming the setting.
5. Two runs of train_bpe + merge_vocab write byte-identical files, ``timings.json`` aside.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
from conftest import GENOMES, write_pipeline
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llamagene.config import MAX_KEYS_SHOWN, format_validation_error
from llamagene.errors import ConfigError, StageError
from llamagene.pipeline import PipelineConfig, load_pipeline
from llamagene.sequences import SequenceFormatError, SequencePolicy, decompressed_size_upto
from llamagene.sequences import iter_fragments as fragments
from llamagene.stages import StageContext
from llamagene.stages.merge_vocab import STAGE as MERGE_VOCAB
from llamagene.stages.merge_vocab import MergeVocabConfig
from llamagene.stages.train_bpe import MIN_PAIR_COUNT, TrainBpeConfig, largest_sensible_vocab_size
from llamagene.stages.train_bpe import STAGE as TRAIN_BPE
from llamagene.training.data_recipe import load_recipe
from llamagene.vocab import load_base_tokenizer, parse_model, whitespace_problem

DNA_AS_PROTEIN = "looks like DNA"


def _problems(model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return format_validation_error(info.value, model=model)


# 1. hints -----------------------------------------------------------------------------------


class _Leaf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window_chars: int = 1


class _Tree(BaseModel):
    model_config = ConfigDict(extra="forbid")
    maybe: _Leaf | None = None
    many: list[_Leaf] = Field(default_factory=list)
    named: dict[str, _Leaf] = Field(default_factory=dict)
    either: _Leaf | int = 0


def test_unknown_key_names_the_keys_where_it_stands() -> None:
    stages = {"train_bpe": {"dna_inputs": ["a"], "dna_vocab_sise": 8}}
    (problem,) = _problems(PipelineConfig, {"run_dir": "r", "stages": stages})
    assert problem.startswith(
        "stages.train_bpe.dna_vocab_sise: unknown key; did you mean dna_vocab_size? (keys here: "
    )
    assert "strict_alphabet, trainer)" in problem and "validate" not in problem
    (problem,) = _problems(PipelineConfig, {"run_dir": "r", "stages": {"trian_bpe": {}}})
    assert (
        "did you mean train_bpe? (keys here: build_sft, evaluate, finetune, merge_vocab, "
        "pretrain, train_bpe)" in (problem)
    )
    # nested: X | None, list[Model], dict[str, Model], a union of a model and a scalar
    data: dict[str, Any] = {
        "maybe": {"window_char": 1},
        "many": [{}, {"windowchars": 2}],
        "named": {"a": {"x": 1}},
        "either": {"window_chars": 1, "zzz": 1},
        "mabye": 1,
    }
    assert sorted(p for p in _problems(_Tree, data) if "unknown key" in p) == [
        "either._Leaf.zzz: unknown key (keys here: window_chars)",
        "mabye: unknown key; did you mean maybe? (keys here: either, many, maybe, named)",
        "many.1.windowchars: unknown key; did you mean window_chars? (keys here: window_chars)",
        "maybe.window_char: unknown key; did you mean window_chars? (keys here: window_chars)",
        "named.a.x: unknown key (keys here: window_chars)",
    ]
    # without a model: no pointer to a command that does not list keys
    with pytest.raises(ValidationError) as info:
        _Tree.model_validate({"mabye": 1})
    assert format_validation_error(info.value) == ["mabye: unknown key (check its spelling)"]


def test_unknown_key_lists_are_cut_when_long() -> None:
    wide = type(
        "Wide",
        (BaseModel,),
        {
            "__annotations__": {f"key_{i:02d}": int for i in range(MAX_KEYS_SHOWN + 5)},
            "model_config": ConfigDict(extra="forbid"),
            **{f"key_{i:02d}": 0 for i in range(MAX_KEYS_SHOWN + 5)},
        },
    )
    (problem,) = _problems(wide, {"key_07x": 1})
    assert "did you mean key_07?" in problem and problem.endswith(", ... (5 more))")


def test_data_recipe_unknown_key_suggests(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"sources:\n  - {{name: g, kind: dna, paths: [{GENOMES / 'genes_a.fa'}], wieght: 2}}\n"
    )
    with pytest.raises(
        ConfigError, match=r"sources\.0\.wieght: unknown key; did you mean weight\?"
    ):
        load_recipe(recipe)


def test_dna_file_holding_protein_names_the_key_of_its_config(tmp_path: Path) -> None:
    protein = str(GENOMES / "proteins.faa")
    pipeline = load_pipeline(write_pipeline(tmp_path, train_bpe={"dna_inputs": [protein]}))
    (problem,) = pipeline.check()
    assert problem.startswith(f"stages.train_bpe: dna_inputs[0]: {protein}:2: record ")
    assert problem.endswith(
        "if this file holds protein, list it under protein_inputs, not dna_inputs"
    )
    assert "kind" not in problem
    # a caller that says nothing (a data recipe's source) gets both configs' keys
    with pytest.raises(SequenceFormatError, match="set kind: protein for its source"):
        list(fragments(protein, SequencePolicy("dna")))
    with pytest.raises(SequenceFormatError, match=r"set kind: protein for source 'x'$"):
        list(
            fragments(
                protein, SequencePolicy("dna", protein_hint="set kind: protein for source 'x'")
            )
        )


# 2. alphabet ----------------------------------------------------------------------------------


def _ctx(tmp_path: Path, name: str, upstream: dict[str, Path] | None = None) -> StageContext:
    (tmp_path / name).mkdir()
    return StageContext(name, tmp_path, tmp_path / name, upstream or {})


def test_dna_listed_as_protein_warns_or_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dna = GENOMES / "genes_a.fa"
    cfg = TrainBpeConfig(
        protein_inputs=[dna], protein_vocab_size=100, heldout_fraction=0.2, num_threads=1
    )
    with caplog.at_level(logging.WARNING, logger="llamagene"):
        TRAIN_BPE.run(cfg, _ctx(tmp_path, "warn"))
    (warning,) = [r.getMessage() for r in caplog.records if DNA_AS_PROTEIN in r.getMessage()]
    assert re.search(
        rf"protein_inputs\[0\]: {re.escape(str(dna))}: 100\.0% of its [\d,]+ residues read "
        r"are A/C/G/T/N/U",
        warning,
    )
    assert "list it under dna_inputs" in warning and "\n" not in warning

    strict = cfg.model_copy(update={"strict_alphabet": True})
    (problem,) = TRAIN_BPE.check(strict)  # validate finds it from the file's start
    assert problem.startswith(f"protein_inputs[0]: {dna}: 100.0% of its ")
    with pytest.raises(
        StageError, match=rf"^train_bpe\.protein_inputs\[0\]: {re.escape(str(dna))}: 100\.0%"
    ):
        TRAIN_BPE.run(strict, _ctx(tmp_path, "strict"))
    assert not (tmp_path / "strict" / "protein.model").exists()  # refused before training


def test_real_proteins_pass_the_alphabet_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = TrainBpeConfig(
        protein_inputs=[GENOMES / "proteins.faa"],
        protein_vocab_size=100,
        strict_alphabet=True,
        num_threads=1,
    )
    assert TRAIN_BPE.check(cfg) == []
    with caplog.at_level(logging.WARNING, logger="llamagene"):
        TRAIN_BPE.run(cfg, _ctx(tmp_path, "ok"))
    assert not [r for r in caplog.records if DNA_AS_PROTEIN in r.getMessage()]


# 3. vocabulary size ---------------------------------------------------------------------------


def test_vocab_size_beyond_the_input_is_found_by_validate(tmp_path: Path) -> None:
    pipeline = load_pipeline(write_pipeline(tmp_path, train_bpe={"dna_vocab_size": 120000}))
    (problem,) = pipeline.check()
    assert re.fullmatch(
        r"stages\.train_bpe: dna_vocab_size: 120000 is more than [\d,]+ bp of DNA can support; "
        r"the largest sensible size is at most [\d,]+ \(<unk> \+ 5 letters \+ one merged piece "
        r"per 5 training bases, .*\): lower it, or give more input",
        problem,
    )
    capped = load_pipeline(write_pipeline(tmp_path, train_bpe={"max_train_chars": 1000}))
    dna, protein = capped.check()
    assert dna.startswith("stages.train_bpe: dna_vocab_size: 300 is more than max_train_chars")
    assert "at most 206 " in dna  # 1 + 5 + 1000 // 5: found without reading the files
    assert "protein_vocab_size: 300 is more than max_train_chars (1,000)" in protein


def test_vocab_size_beyond_the_training_sample_fails_before_training(tmp_path: Path) -> None:
    # 2,000 passes validate's bound (file bytes) but not the exact count of training bases
    pipeline = load_pipeline(write_pipeline(tmp_path, train_bpe={"dna_vocab_size": 2000}))
    assert pipeline.check() == []
    with pytest.raises(StageError) as info:
        pipeline.run()
    message = str(info.value)
    found = re.fullmatch(
        r"train_bpe\.dna_vocab_size: 2000 is more than ([\d,]+) bp of DNA can support; the "
        r"largest sensible size is ([\d,]+) \(<unk> \+ (\d) letters \+ one merged piece per 5 of "
        r"the ([\d,]+) training bases, so that each merge joins a pair seen at least 5 times\): "
        r"lower it, or give more input",
        message,
    )
    assert found, message
    chars, largest, letters, chars_again = (int(g.replace(",", "")) for g in found.groups())
    assert chars == chars_again and largest == 1 + letters + chars // MIN_PAIR_COUNT < 2000
    assert not (tmp_path / "run" / "train_bpe").exists()
    ok = load_pipeline(write_pipeline(tmp_path, train_bpe={"dna_vocab_size": largest}))
    ok.run(only=["train_bpe"])
    stats = json.loads((tmp_path / "run" / "train_bpe" / "stats.json").read_text())
    assert stats["dna"]["train_chars"] == chars


def test_demo_sizes_are_within_the_limit() -> None:
    from llamagene.cli import DEMO_PIPELINE

    cfg = load_pipeline(DEMO_PIPELINE).config.stages.train_bpe
    assert cfg is not None and TRAIN_BPE.check(cfg) == []
    assert largest_sensible_vocab_size(407_653, 4) == 81_535  # the figure in the docs


def test_size_of_a_gzip_is_read_only_as_far_as_needed(tmp_path: Path) -> None:
    big = tmp_path / "big.fa.gz"
    big.write_bytes(gzip.compress(b">a\n" + b"ACGT" * 5_000_000))  # 20 MB inside, 20 KB on disk
    assert decompressed_size_upto(big, 1000) == 1000
    assert decompressed_size_upto(big, 10**9) == 20_000_003
    plain = GENOMES / "genes_a.fa"
    assert decompressed_size_upto(plain, 10**9) == plain.stat().st_size


# 4. bases that change whitespace --------------------------------------------------------------


def _edited_base(base_path: Path, tmp_path: Path, **spec: Any) -> Path:
    proto = parse_model(base_path.read_bytes())
    for key, value in spec.items():
        setattr(proto.normalizer_spec, key, value)
    out = tmp_path / "edited.model"
    out.write_bytes(proto.SerializeToString())
    return out


def test_base_removing_extra_whitespace_is_refused_with_the_setting(
    base_tokenizer_path: Path, merged_run_dir: Path, tmp_path: Path
) -> None:
    assert whitespace_problem(load_base_tokenizer(base_tokenizer_path)) is None  # Mistral keeps it
    edited = _edited_base(base_tokenizer_path, tmp_path, remove_extra_whitespaces=True)
    want = (
        rf"^{edited}: the base's normalizer changes whitespace \(normalizer_spec\."
        r"remove_extra_whitespaces is true: runs of spaces become one"
    )
    cfg = MergeVocabConfig(base_tokenizer=edited)
    (problem,) = MERGE_VOCAB.check(cfg)  # validate
    assert re.match(want.replace("^", "^base_tokenizer: "), problem) and "\n" not in problem
    ctx = _ctx(tmp_path, "merge_vocab", {"train_bpe": merged_run_dir / "train_bpe"})
    with pytest.raises(StageError, match=want):  # the run: before its English checks
        MERGE_VOCAB.run(cfg, ctx)
    assert not list(ctx.out_dir.iterdir())


def test_base_whose_rules_map_tabs_is_refused(base_tokenizer_path: Path, tmp_path: Path) -> None:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["hello world, tab and newline"] * 20), model_writer=model,
        model_type="bpe", vocab_size=30, normalization_rule_name="nmt_nfkc", minloglevel=2,
        remove_extra_whitespaces=False,
    )  # fmt: skip
    nfkc = parse_model(model.getvalue()).normalizer_spec
    edited = _edited_base(
        base_tokenizer_path,
        tmp_path,
        name=nfkc.name,
        precompiled_charsmap=nfkc.precompiled_charsmap,
    )
    with pytest.raises(
        StageError, match=r"normalizer_spec\.name is 'nmt_nfkc': 'a\\tb' \(a tab\) becomes 'a b'"
    ):
        load_base_tokenizer(edited)


# 5. reproducible outputs ----------------------------------------------------------------------


def test_two_runs_write_identical_files_but_timings(merged_run_dir: Path, tmp_path: Path) -> None:
    load_pipeline(write_pipeline(tmp_path)).run()
    again = tmp_path / "run"
    skip = {"manifest.json", ".lock"}

    def files(run_dir: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in skip
        }

    first, second = files(merged_run_dir), files(again)
    assert first.keys() == second.keys()
    assert {"train_bpe/timings.json", "merge_vocab/report.json"} <= first.keys()
    assert [k for k in first if first[k] != second[k] and k != "train_bpe/timings.json"] == []
    timings = json.loads(first["train_bpe/timings.json"])
    assert set(timings) == {"dna", "protein"}
    assert set(timings["dna"]) == {"read_seconds", "train_seconds"}
    stats = json.loads(first["train_bpe/stats.json"])
    assert not any("seconds" in key for kind in stats.values() for key in kind)
