"""Shared test fixtures: tiny committed sequence files and a real LLaMA-family base tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llamagene.config import resolve_package_path

FIXTURES = Path(__file__).parent / "fixtures"
GENOMES = FIXTURES / "genomes"
#: Mistral's 32,000-piece SentencePiece BPE tokenizer, shipped in the mistral-common wheel.
BASE_TOKENIZER = "pkg://mistral_common/data/tokenizer.model.v1"


@pytest.fixture(scope="session")
def base_tokenizer_path() -> Path:
    return resolve_package_path(BASE_TOKENIZER)


PipelineFactory = Callable[..., Path]


@pytest.fixture
def make_pipeline(tmp_path: Path) -> PipelineFactory:
    """``make_pipeline(train_bpe={...})``: a pipeline over the tiny fixtures in ``tmp_path``."""
    return lambda **overrides: write_pipeline(tmp_path, **overrides)


def write_pipeline(tmp_path: Path, **stage_overrides: dict[str, object]) -> Path:
    """A pipeline over the tiny fixtures, written to ``tmp_path/pipeline.yaml``."""
    stages: dict[str, dict[str, object]] = {
        "train_bpe": {
            "dna_inputs": [str(GENOMES / "genes_a.fa"), str(GENOMES / "genes_b.fa.gz")],
            "protein_inputs": [str(GENOMES / "proteins.faa")],
            "dna_vocab_size": 300,
            "protein_vocab_size": 300,
            "dna_sentence_length": 200,
            "heldout_fraction": 0.2,
            "num_threads": 1,
        },
        "merge_vocab": {"base_tokenizer": BASE_TOKENIZER},
    }
    for name, values in stage_overrides.items():
        stages[name] = {**stages.get(name, {}), **values}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"run_dir": "run", "stages": stages}), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def merged_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder where train_bpe and merge_vocab ran on the tiny fixtures (shared, read-only)."""
    from llamagene.pipeline import load_pipeline

    root = tmp_path_factory.mktemp("merged")
    load_pipeline(write_pipeline(root)).run()
    return root / "run"


@pytest.fixture(scope="session")
def merged_tokenizer_dir(merged_run_dir: Path) -> Path:
    return merged_run_dir / "merge_vocab" / "tokenizer"
