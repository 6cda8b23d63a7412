"""Pipeline files: strict typed configs, every problem at once, overrides, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamagene.config import apply_overrides
from llamagene.errors import ConfigError, NotImplementedStageError
from llamagene.pipeline import load_pipeline


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_problem_reported_with_its_yaml_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
run_dir: out
stages:
  train_bpe:
    dna_inputs: [a.fa]
    dna_vocab_size: lots
    dna_vocab_sise: 10
    heldout_fraction: 2
  merge_vocab: {}
""",
    )
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    problems = info.value.problems
    assert len(problems) == 4
    text = "\n".join(problems)
    assert "stages.train_bpe.dna_vocab_size: Input should be a valid integer" in text
    assert "(got 'lots')" in text
    assert "stages.train_bpe.dna_vocab_sise: unknown key" in text
    assert "stages.train_bpe.heldout_fraction: Input should be less than 0.5" in text
    assert "stages.merge_vocab.base_tokenizer: required key is missing" in text
    assert str(path) in str(info.value)


def test_relative_and_package_paths_resolve(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
run_dir: runs/x
stages:
  train_bpe: {dna_inputs: [data/a.fa, /abs/b.fa]}
  merge_vocab: {base_tokenizer: "pkg://mistral_common/data/tokenizer.model.v1"}
""",
    )
    cfg = load_pipeline(path).config
    assert cfg.run_dir == tmp_path / "runs" / "x"
    assert cfg.stages.train_bpe is not None and cfg.stages.merge_vocab is not None
    assert cfg.stages.train_bpe.dna_inputs == [tmp_path / "data" / "a.fa", Path("/abs/b.fa")]
    assert cfg.stages.merge_vocab.base_tokenizer.is_file()
    assert cfg.stages.merge_vocab.base_tokenizer.name == "tokenizer.model.v1"


def test_unknown_package_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "run_dir: r\nstages:\n  train_bpe: {dna_inputs: ['pkg://no_such_pkg_x/a.fa']}\n"
    )
    with pytest.raises(ConfigError, match="no_such_pkg_x', which is not installed"):
        load_pipeline(path)


def test_config_is_frozen(tmp_path: Path) -> None:
    path = _write(tmp_path, "run_dir: r\nstages:\n  train_bpe: {dna_inputs: [a.fa]}\n")
    cfg = load_pipeline(path).config
    with pytest.raises(Exception, match="frozen"):
        cfg.stages.train_bpe.seed = 3  # type: ignore[union-attr]


def test_duplicate_keys_and_yaml_syntax(tmp_path: Path) -> None:
    dup = _write(tmp_path, "run_dir: r\nstages:\n  train_bpe: {}\n  train_bpe: {}\n")
    with pytest.raises(ConfigError, match="line 4, column 3: duplicate key 'train_bpe'"):
        load_pipeline(dup)
    bad = _write(tmp_path, "run_dir: [r\n")
    with pytest.raises(ConfigError, match="line 2"):
        load_pipeline(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_pipeline(tmp_path / "nope.yaml")


def test_needs_some_input_and_planned_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = _write(tmp_path, "run_dir: r\nstages:\n  train_bpe: {}\n")
    with pytest.raises(ConfigError, match="give dna_inputs, protein_inputs or both"):
        load_pipeline(empty)
    monkeypatch.setattr("llamagene.pipeline.PLANNED_STAGES", ("serve",))
    planned = _write(tmp_path, "run_dir: r\nstages:\n  serve: {}\n")
    with pytest.raises(NotImplementedStageError, match="serve is not implemented yet"):
        load_pipeline(planned)


def test_overrides() -> None:
    data = {"run_dir": "r", "stages": {"train_bpe": {"seed": 1}}}
    out = apply_overrides(
        data,
        ["train_bpe.seed=5", "stages.train_bpe.dna_inputs=[a.fa, b.fa]", "run_dir=x", "a.b.c=on"],
        ["train_bpe"],
    )
    assert out == {
        "run_dir": "x",
        "stages": {"train_bpe": {"seed": 5, "dna_inputs": ["a.fa", "b.fa"]}},
        "a": {"b": {"c": True}},
    }
    assert data["stages"] == {"train_bpe": {"seed": 1}}  # the input is not changed
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(data, ["=3"], [])
    with pytest.raises(ConfigError, match="'run_dir' is not a mapping"):
        apply_overrides(data, ["run_dir.x=3"], [])


def test_override_type_errors_are_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "run_dir: r\nstages:\n  train_bpe: {dna_inputs: [a.fa]}\n")
    with pytest.raises(
        ConfigError, match=r"stages\.train_bpe\.seed: Input should be a valid integer"
    ):
        load_pipeline(path, ["train_bpe.seed=abc"])
