"""Stage ``finetune`` end to end on a tiny LLaMA: loss falls, labels are the answers, the export
reloads and keeps English's rows, a killed run resumes bit-identically, and 2 ZeRO-2 processes
under the cluster wrapper match 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from finetune_setup import logged, reference_run, save_base, setup_pipeline
from pretrain_setup import run_cli
from safetensors.torch import load_file

from llamagene.training.spec import KILL_AFTER_SAVE_ENV

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "pipelines" / "cluster" / "launch.sh"
ZERO2 = REPO / "pipelines" / "deepspeed" / "zero2.json"
#: Loss of a 2-process ZeRO-2 run vs the 1-process run, per logged step.
MULTI_PROCESS_LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_run(tmp_path_factory)


def test_loss_falls_and_outputs_are_complete(reference: Path) -> None:
    out = reference / "finetune"
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter", "config.json", "logs", "merged", "report.json", "timings.json",
    ]  # fmt: skip
    losses = logged(reference)
    assert losses[8] < losses[1] - 0.3, losses
    dev = logged(reference, "eval_loss")
    assert set(dev) == {4, 8} and dev[8] < dev[4]  # dev loss at each evaluation
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 8 and report["data"]["train"]["rows"] > 10
    assert report["data"]["train"]["trained_tokens"] < report["data"]["train"]["tokens"] / 2
    assert report["export"]["chat_template_rows"] > 0
    info = json.loads((out / "adapter" / "llamagene_adapter.json").read_text())
    assert info["embedding_training"] == "trainable_tokens"


def test_export_reloads_keeps_base_rows_and_never_picks_padding(reference: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from llamagene.prompt_format import PromptFormat, messages_of, single_turn

    out = reference / "finetune"
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(reference.parent / "base"))
    meta = json.loads((out / "merged" / "llamagene_tokenizer.json").read_text())
    size, rows = meta["vocab_size"], merged.get_input_embeddings().weight.shape[0]
    base_rows = meta["base_vocab_size"]
    for name in ("get_input_embeddings", "get_output_embeddings"):
        got, want = getattr(merged, name)().weight, getattr(base, name)().weight
        assert torch.equal(got[:base_rows], want[:base_rows]), name  # English is untouched
        assert not torch.equal(got[base_rows:size].mean(0), want[:base_rows].mean(0))
    generation = GenerationConfig.from_pretrained(str(out / "merged"))
    assert generation.suppress_tokens == list(range(size, rows)) and rows % 64 == 0
    # the padding rows are never picked, even when made the likeliest
    with torch.no_grad():
        merged.get_output_embeddings().weight[size:] = 50 * merged.model.norm.weight
    fmt = PromptFormat.from_dir(out / "merged")
    prompt = torch.tensor([fmt.prompt_ids(single_turn("What is a gene?", "x")[:1])])
    scores = merged.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=3,
        do_sample=False, output_scores=True, return_dict_in_generate=True,
    ).scores  # fmt: skip
    for step in scores:
        assert torch.isinf(step[0, size:]).all() and int(step[0].argmax()) < size
    # the exported folder's chat template gives the prompt format's ids, on every build_sft row
    tokenizer = AutoTokenizer.from_pretrained(str(out / "merged"))
    for split in ("train", "dev", "test"):
        for line in (reference / "build_sft" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            messages = [{"role": m.role, "content": m.content, "markup": row["markup"]}
                        for m in messages_of(row)]  # fmt: skip
            got = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
            assert list(got) == fmt.encode(messages_of(row), row["markup"]).input_ids


def test_killed_run_resumes_to_the_same_adapter(reference: Path, tmp_path: Path) -> None:
    pipeline = setup_pipeline(tmp_path)
    killed = run_cli("run", str(pipeline), env={KILL_AFTER_SAVE_ENV: "4"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    # a new checkpoint cadence changes nothing trained: the run resumes, it does not restart
    resumed = run_cli("run", str(pipeline), "finetune.training.save_every_steps=6")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = tmp_path / "run" / "finetune"
    assert json.loads((out / "timings.json").read_text())["resumed_from_step"] == 4
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    want = load_file(str(reference / "finetune" / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert logged(tmp_path / "run") == logged(reference)
    assert logged(tmp_path / "run", "eval_loss") == logged(reference, "eval_loss")


def test_two_processes_with_zero2_under_the_wrapper_match_one_process(
    reference: Path, tmp_path: Path
) -> None:
    pipeline = setup_pipeline(tmp_path)
    upstream = run_cli("run", str(pipeline), "--only", "train_bpe", "--only", "merge_vocab",
                       "--only", "build_sft")  # fmt: skip
    assert upstream.returncode == 0, upstream.stderr[-3000:]
    done = subprocess.run(
        ["bash", str(LAUNCH), "--local", "--nproc", "2", str(pipeline), "finetune",
         f"finetune.deepspeed={ZERO2}"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "run" / "finetune" / "report.json").read_text())
    assert report["processes"] == 2 and report["deepspeed_zero_stage"] == 2
    want, got = logged(reference), logged(tmp_path / "run")
    assert got.keys() == want.keys()
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=MULTI_PROCESS_LOSS_TOLERANCE), step


def test_bad_bases_and_rows_are_clear_errors(tmp_path: Path) -> None:
    pipeline = setup_pipeline(tmp_path, base_model="wrong")
    save_base(tmp_path / "wrong", vocab_size=32100)
    result = run_cli("run", str(pipeline))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "its vocabulary (32100 rows) does not match the merged tokenizer" in result.stderr

    too_short = {"max_tokens": 40}
    result = run_cli("run", str(setup_pipeline(tmp_path, **too_short)))
    assert result.returncode == 1
    assert "rows are longer than the model's context of 40 tokens (the longest" in result.stderr
    assert not (tmp_path / "run" / "finetune").exists()

    result = run_cli("run", str(setup_pipeline(tmp_path, max_tokens=40, overflow="drop")))
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "run" / "finetune" / "report.json").read_text())["data"]
    assert data["train"]["dropped_too_long"] > 0 and data["train"]["longest"] <= 40

    result = run_cli("run", str(setup_pipeline(tmp_path, max_tokens=10, overflow="drop")))
    assert result.returncode == 1  # every row is longer: nothing is left to train on
    assert "the train split has no rows to train on (" in result.stderr
    assert "dropped as longer than 10 tokens" in result.stderr


def test_a_missing_pretrain_export_is_named(tmp_path: Path) -> None:
    from llamagene.errors import StageError
    from llamagene.stages import StageContext
    from llamagene.stages.finetune import FinetuneConfig, _base_dir

    (tmp_path / "pretrain").mkdir()
    ctx = StageContext("finetune", tmp_path, tmp_path / "out", {"pretrain": tmp_path / "pretrain"})
    with pytest.raises(StageError, match=r"pretrain's export .*merged is missing"):
        _base_dir(FinetuneConfig(), ctx)


def test_padded_batches_and_the_best_dev_checkpoint(tmp_path: Path) -> None:
    from finetune_setup import FINETUNE

    training = {**FINETUNE["training"], "keep_best_checkpoint": True, "learning_rate": 0.05}
    result = run_cli("run", str(setup_pipeline(tmp_path, batching="padded", training=training)))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "finetune" / "report.json").read_text())
    lines = (tmp_path / "run" / "finetune" / "logs" / "metrics.jsonl").read_text().splitlines()
    evaluations = [(r["step"], r["eval_loss"]) for r in map(json.loads, lines) if "eval_loss" in r]
    scheduled = evaluations[:2]  # at steps 4 and 8; then the exported model's own evaluation
    best_step, best_loss = min(scheduled, key=lambda e: e[1])
    assert [s for s, _ in scheduled] == [4, 8] and report["best_checkpoint"] == best_step
    assert report["eval_loss"] == pytest.approx(best_loss, abs=1e-6)
