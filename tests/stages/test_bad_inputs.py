"""Bad inputs get one clear error naming file and record, and leave nothing half-written."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamagene.errors import StageError
from llamagene.pipeline import load_pipeline


def _run_with_dna(make_pipeline, fasta: Path) -> None:  # type: ignore[no-untyped-def]
    pipeline = load_pipeline(make_pipeline(train_bpe={"dna_inputs": [str(fasta)]}))
    pipeline.run()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"dna_inputs\[0\]: .*empty\.fa: no sequences: the file is empty"),
        (">r1\nACGT\n>r2\n>r3\nACGT\n", r"bad\.fa:3: record 'r2': record has no sequence"),
        (">r1\nACGTACGT\nACGTXCGT\n", r"bad\.fa:3: record 'r1': .*'X'"),
        (
            "ACGT\n>r1\nACGT\n",
            r"dna_inputs\[0\]: .*bad\.fa:1: sequence text before the first header",
        ),
    ],
    ids=["empty", "no-sequence", "bad-base", "no-header"],
)
def test_malformed_fasta(make_pipeline, tmp_path: Path, content: str, message: str) -> None:  # type: ignore[no-untyped-def]
    fasta = tmp_path / ("empty.fa" if not content else "bad.fa")
    fasta.write_text(content)
    with pytest.raises(Exception, match=message):
        _run_with_dna(make_pipeline, fasta)
    assert not (tmp_path / "run" / "train_bpe").exists()
    assert not list((tmp_path / "run").glob(".train_bpe.tmp-*"))


def test_truncated_gzip(make_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    data = gzip.compress(
        "".join(
            f">r{i}\n{''.join(rng.choice('ACGT') for _ in range(600))}\n" for i in range(20)
        ).encode()
    )
    fasta = tmp_path / "cut.fa.gz"
    fasta.write_bytes(data[: len(data) - 200])
    with pytest.raises(StageError, match=r"cut\.fa\.gz.*truncated or corrupt gzip"):
        _run_with_dna(make_pipeline, fasta)


def test_crlf_and_soft_masked_input_train(make_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(1)
    seq = "".join(rng.choice("ACGTacgt") for _ in range(3000))
    fasta = tmp_path / "crlf.fa"
    fasta.write_bytes(
        b">r1 windows file\r\n"
        + b"\r\n".join(seq[i : i + 60].encode() for i in range(0, 3000, 60))
        + b"\r\n"
    )
    _run_with_dna(make_pipeline, fasta)
    stats = json.loads((tmp_path / "run" / "train_bpe" / "stats.json").read_text())
    assert stats["dna"]["chars_read"] == 3000


def test_killed_during_train_bpe_then_rerun(make_pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(2)
    big = tmp_path / "big.fa"
    with big.open("w") as handle:
        for r in range(4):
            handle.write(f">chr{r}\n")
            for _ in range(15000):
                handle.write("".join(rng.choices("ACGT", k=80)) + "\n")
    path = make_pipeline(train_bpe={"dna_inputs": [str(big)], "dna_vocab_size": 2000})
    manifest = tmp_path / "run" / "manifest.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llamagene", "run", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (manifest.exists() and '"running"' in manifest.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.1)  # reading takes ~0.1 s, SentencePiece ~1 s more: killed mid-stage
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    pipeline = load_pipeline(path)
    status = {s.name: s for s in pipeline.status()}
    assert json.loads(manifest.read_text())["stages"]["train_bpe"]["status"] == "running"
    assert status["train_bpe"].state == "stale"
    assert status["train_bpe"].reasons[0].startswith("did not finish")
    assert not (tmp_path / "run" / "train_bpe").exists()
    json.loads(manifest.read_text())  # still whole
    ran = [r.name for r in pipeline.run() if r.state == "ran"]
    assert ran == ["train_bpe", "merge_vocab"]
    assert not list((tmp_path / "run").glob(".train_bpe.tmp-*"))
