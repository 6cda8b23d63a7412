"""The ``llamagene`` command: help without heavy imports, validate, status, run, clear errors."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamagene.cli import DEMO_PIPELINE, main


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from llamagene.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'transformers', 'sentencepiece', 'tokenizers', 'pydantic', 'yaml'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: llamagene" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_python_dash_m(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llamagene", "validate", str(DEMO_PIPELINE)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "valid (train_bpe, merge_vocab, pretrain, build_sft, finetune, evaluate)" in out.stdout


def test_validate_reports_every_input_problem(
    make_pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    not_fasta = tmp_path / "table.csv"
    not_fasta.write_text("sequence,label\nACGT,1\n")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\xffnot a model" * 5)
    path = make_pipeline(
        train_bpe={"dna_inputs": [str(not_fasta), str(tmp_path / "missing.fa")]},
        merge_vocab={"base_tokenizer": str(junk)},
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert f"dna_inputs[0]: {not_fasta}:1: not FASTA/FASTQ" in err
    assert "dna_inputs[1]: " in err and "missing.fa does not exist" in err
    assert "base_tokenizer: " in err and "not a SentencePiece model" in err
    assert "Traceback" not in err


def test_run_status_and_overrides(make_pipeline, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    path = str(make_pipeline())
    assert main(["run", path, "--only", "train_bpe"]) == 0
    assert main(["status", path]) == 0
    out = capsys.readouterr().out
    assert "train_bpe    up to date" in out and "merge_vocab  stale" in out
    assert "- never run" in out
    assert main(["run", path]) == 0
    assert main(["run", path]) == 0
    assert "everything is up to date" in capsys.readouterr().out
    assert main(["run", path, "--only", "merge_vocab", "--force"]) == 0
    assert "ran merge_vocab;" in capsys.readouterr().out
    assert main(["status", path, "train_bpe.protein_vocab_size=250"]) == 0
    assert "config changed: protein_vocab_size: 300 -> 250" in capsys.readouterr().out


def test_stage_error_exit_code(
    make_pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    path = str(make_pipeline(train_bpe={"protein_vocab_size": 5}))
    assert main(["run", path]) == 1
    err = capsys.readouterr().err
    assert "protein_vocab_size 5 is smaller than the protein alphabet" in err
    assert "use at least" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["train_bpe"]["status"] == "failed"


def test_input_inside_a_stage_output_is_refused(make_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = make_pipeline(train_bpe={"dna_inputs": [str(tmp_path / "run/merge_vocab/x.fa")]})
    assert main(["validate", str(path)]) == 2


def test_two_runs_on_one_run_dir(
    make_pipeline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    path = str(make_pipeline())
    (tmp_path / "run").mkdir()
    with (tmp_path / "run" / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["run", path]) == 2
    assert "another `llamagene run` is using this run folder" in capsys.readouterr().err


def test_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["validate", "a.yaml", "b.yaml"]) == 2
    assert "give one pipeline file" in capsys.readouterr().err
    assert main(["status", str(tmp_path / "none.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
