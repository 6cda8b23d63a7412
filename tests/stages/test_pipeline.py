"""End to end: train_bpe + merge_vocab on tiny committed fixtures, and every staleness reason."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from llamagene.alphabets import to_model_text
from llamagene.errors import ManifestError, StageError
from llamagene.manifest import Manifest
from llamagene.pipeline import Pipeline, load_pipeline


def _states(pipeline: Pipeline) -> dict[str, str]:
    return {st.name: st.state for st in pipeline.status()}


def _reasons(pipeline: Pipeline) -> dict[str, list[str]]:
    return {st.name: st.reasons for st in pipeline.status()}


def _ran(pipeline: Pipeline, **kwargs: object) -> list[str]:
    return [r.name for r in pipeline.run(**kwargs) if r.state == "ran"]  # type: ignore[arg-type]


@pytest.fixture
def done(make_pipeline) -> Pipeline:  # type: ignore[no-untyped-def]
    pipeline = load_pipeline(make_pipeline())
    assert _ran(pipeline) == ["train_bpe", "merge_vocab"]
    return pipeline


def test_outputs_and_manifest(done: Pipeline) -> None:
    run_dir = done.run_dir
    bpe = run_dir / "train_bpe"
    assert {p.name for p in bpe.iterdir()} == {
        "dna.model", "dna.vocab", "dna_heldout.txt", "protein.model", "protein.vocab",
        "protein_heldout.txt", "stats.json", "timings.json", "config.json",
    }  # fmt: skip
    tok_dir = run_dir / "merge_vocab" / "tokenizer"
    assert {p.name for p in tok_dir.iterdir()} == {
        "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
        "llamagene_tokenizer.json", "chat_template.jinja",
    }  # fmt: skip
    dna = spm.SentencePieceProcessor(model_file=str(bpe / "dna.model"))
    assert dna.vocab_size() == 300
    stats = json.loads((bpe / "stats.json").read_text())
    assert stats["dna"]["records"] == 8 and stats["protein"]["records"] == 14
    assert stats["dna"]["n_runs_skipped"] == 1
    assert stats["dna"]["chars_per_token_heldout"] > 1.5

    manifest = json.loads((run_dir / "manifest.json").read_text())
    merge = manifest["stages"]["merge_vocab"]
    assert merge["status"] == "done"
    assert merge["report"]["ranges"] == {"dna": [32000, 32299], "protein": [32299, 32598]}
    assert merge["report"]["vocab_size"] == 32598
    assert merge["upstream"] == {"train_bpe": manifest["stages"]["train_bpe"]["run_id"]}
    assert set(manifest["stages"]["train_bpe"]["inputs"]) == {
        "dna_inputs[0]", "dna_inputs[1]", "protein_inputs[0]",
    }  # fmt: skip
    assert all(len(r["sha256"]) == 64 for r in merge["outputs"].values())
    assert merge["versions"]["sentencepiece"] and merge["versions"]["python"]
    assert "git_commit" in merge and merge["started_at"] <= merge["ended_at"]

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tok.is_fast and len(tok) == 32598
    seq = "ATGACACTATGGGAGATGTTCACAGCAGCC"
    ids = tok.encode(to_model_text(seq, "dna"), add_special_tokens=False)
    assert all(i >= 32000 for i in ids[1:])
    assert tok.decode(ids) == seq


def test_rerun_does_nothing_and_keeps_manifest(done: Pipeline) -> None:
    before = (done.run_dir / "manifest.json").read_bytes()
    assert _states(done) == {"train_bpe": "up to date", "merge_vocab": "up to date"}
    assert _ran(done) == []
    assert (done.run_dir / "manifest.json").read_bytes() == before


def test_config_change_reruns_stage_and_downstream(done: Pipeline) -> None:
    changed = load_pipeline(done.path, ["train_bpe.dna_vocab_size=250"])
    reasons = _reasons(changed)
    assert reasons["train_bpe"] == ["config changed: dna_vocab_size: 300 -> 250"]
    assert reasons["merge_vocab"] == [
        "upstream stage train_bpe is stale and will re-run "
        "(this one follows only if train_bpe's outputs change)"
    ]
    assert _ran(changed) == ["train_bpe", "merge_vocab"]


def test_upstream_rerun_with_identical_outputs_is_an_early_cutoff(done: Pipeline) -> None:
    assert _ran(done, only=["train_bpe"], force=True) == ["train_bpe"]
    assert _reasons(done) == {"train_bpe": [], "merge_vocab": []}
    notes = {st.name: st.notes for st in done.status()}
    assert notes["merge_vocab"] == ["train_bpe re-ran with identical outputs"]
    assert _ran(done) == []


def test_upstream_rerun_with_new_outputs_makes_downstream_stale(done: Pipeline) -> None:
    changed = load_pipeline(done.path, ["train_bpe.dna_vocab_size=250"])
    assert _ran(changed, only=["train_bpe"]) == ["train_bpe"]
    assert _reasons(changed) == {
        "train_bpe": [],
        "merge_vocab": ["upstream stage train_bpe re-ran since, with different outputs"],
    }
    assert _ran(changed) == ["merge_vocab"]


def test_downstream_change_leaves_upstream(done: Pipeline) -> None:
    changed = load_pipeline(done.path, ["merge_vocab.model_max_length=2048"])
    assert _states(changed) == {"train_bpe": "up to date", "merge_vocab": "stale"}
    assert _ran(changed) == ["merge_vocab"]


def test_input_change_is_detected(done: Pipeline, tmp_path: Path) -> None:
    fasta = tmp_path / "extra.fa"
    fasta.write_text(">x\nACGTACGTTGCA\n")
    overrides = [f"train_bpe.dna_inputs=[{fasta}]", "train_bpe.min_sentence_length=4"]
    overrides.append("train_bpe.dna_vocab_size=7")  # 12 bases support at most 7 pieces
    pipeline = load_pipeline(done.path, overrides)
    _ran(pipeline)
    fasta.write_text(">x\nACGTACGTTGCC\n")
    reasons = _reasons(pipeline)
    assert reasons["train_bpe"] == ["input dna_inputs[0] changed"]
    os.utime(fasta, ns=(1, 1))  # a touch alone (same content) is not a change
    fasta.write_text(">x\nACGTACGTTGCA\n")
    assert _states(pipeline)["train_bpe"] == "up to date"


def test_edited_or_missing_output_is_detected(done: Pipeline) -> None:
    model = done.run_dir / "train_bpe" / "dna.vocab"
    model.write_text("edited\n")
    assert _reasons(done)["train_bpe"] == ["output train_bpe/dna.vocab changed"]
    shutil.rmtree(done.run_dir / "merge_vocab")
    assert "is missing" in _reasons(done)["merge_vocab"][0]
    assert _ran(done) == ["train_bpe", "merge_vocab"]


def test_failed_stage_is_rerun_and_keeps_previous_output(done: Pipeline) -> None:
    broken = load_pipeline(done.path, ["train_bpe.dna_vocab_size=3"])
    with pytest.raises(StageError, match="dna_vocab_size 3 is smaller than the dna alphabet"):
        broken.run()
    assert _states(broken)["train_bpe"] == "failed"
    assert "failed last time: StageError" in _reasons(broken)["train_bpe"][0]
    assert (done.run_dir / "train_bpe" / "dna.model").is_file()  # the old output is untouched
    assert not list(done.run_dir.glob(".train_bpe.tmp-*"))
    assert _ran(done) == ["train_bpe"]  # its outputs come out as before: merge_vocab stays


def test_killed_run_is_rerun(done: Pipeline) -> None:
    # what a SIGKILL during train_bpe leaves: status "running" and a half-written temp folder
    manifest = Manifest.load(done.run_dir)
    manifest.stages["train_bpe"].status = "running"
    manifest.save()
    leftover = done.run_dir / ".train_bpe.tmp-dead"
    leftover.mkdir()
    (leftover / "dna.model").write_bytes(b"half")
    reasons = _reasons(done)
    assert reasons["train_bpe"][0].startswith("did not finish")
    assert _ran(done) == ["train_bpe"]  # same outputs as before the kill: merge_vocab stays
    assert not leftover.exists()


def test_only_runs_the_named_stage(done: Pipeline) -> None:
    changed = load_pipeline(done.path, ["train_bpe.seed=7", "merge_vocab.model_max_length=1024"])
    assert _ran(changed, only=["merge_vocab"]) == ["merge_vocab"]
    assert _states(changed)["train_bpe"] == "stale"
    with pytest.raises(Exception, match="not a stage of this pipeline"):
        changed.run(only=["pretrain"])


def test_only_needs_upstream_output(make_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline = load_pipeline(make_pipeline())
    with pytest.raises(StageError, match="needs the output of train_bpe"):
        pipeline.run(only=["merge_vocab"])


def test_corrupt_manifest_is_a_clear_error(done: Pipeline) -> None:
    (done.run_dir / "manifest.json").write_text('{"format": "llamagene-manifest", "vers')
    with pytest.raises(ManifestError, match="corrupt manifest"):
        done.status()


def test_deterministic_vocabulary(done: Pipeline, tmp_path: Path) -> None:
    again = load_pipeline(done.path, [f"run_dir={tmp_path / 'again'}"])
    again.run(only=["train_bpe"])
    for name in ("dna.model", "protein.model", "dna_heldout.txt"):
        assert (tmp_path / "again" / "train_bpe" / name).read_bytes() == (
            done.run_dir / "train_bpe" / name
        ).read_bytes()


def test_hf_trainer_end_to_end(make_pipeline) -> None:  # type: ignore[no-untyped-def]
    pipeline = load_pipeline(make_pipeline(train_bpe={"trainer": "hf"}))
    assert _ran(pipeline) == ["train_bpe", "merge_vocab"]
    report = json.loads((pipeline.run_dir / "merge_vocab" / "report.json").read_text())
    assert report["ranges"] == {"dna": [32000, 32299], "protein": [32299, 32598]}
    assert all(check["rate"] == 1.0 for check in report["checks"].values())
