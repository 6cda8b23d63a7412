"""Stage ``pretrain`` end to end on a tiny LLaMA built from a config, on the CPU.

One reference run (one process, no DeepSpeed; :mod:`pretrain_setup`) is shared by the tests of
this module and of ``test_reliability_checkpoints.py``. Other runs check that (a) the same
training under the cluster wrapper with 2 processes and DeepSpeed ZeRO-2 (gloo) logs the same
losses and resumes on 1 process, (b) a run SIGKILLed right after a checkpoint, or stopped on
request, and rerun ends with the very same adapter as the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from pretrain_setup import (
    PRETRAIN,
    logged_losses,
    logged_losses_of,
    reference_run,
    run_cli,
    setup_pipeline,
)
from safetensors.torch import load_file

from llamagene.alphabets import to_model_text
from llamagene.pipeline import load_pipeline
from llamagene.training.corpus import open_corpus
from llamagene.training.spec import KILL_AFTER_SAVE_ENV, STOP_FILE_ENV
from llamagene.training.trainer import StopRequest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "pipelines" / "cluster" / "launch.sh"
ZERO2 = REPO / "pipelines" / "deepspeed" / "zero2.json"
ZERO3 = REPO / "pipelines" / "deepspeed" / "zero3.json"
#: Loss of a 2-process ZeRO-2 run vs the 1-process run, per logged step (measured: < 1e-6).
MULTI_PROCESS_LOSS_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run dir of an uninterrupted one-process run (shared with other modules)."""
    return reference_run(tmp_path_factory)


def test_loss_falls_and_outputs_are_complete(reference: Path) -> None:
    out = reference / "pretrain"
    losses = logged_losses(reference)
    assert sorted(losses) == [1, 2, 4, 6, 8, 10, 12]
    assert losses[12] < losses[1] - 0.2, losses
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 12 and report["processes"] == 1
    assert report["eval_loss"] < losses[1]
    timings = json.loads((out / "timings.json").read_text())
    assert timings["tokens_per_s"] > 0 and timings["resumed_from_step"] == 0
    assert (
        "tokens_per_s" not in report and "throughput" not in (out / "corpus_stats.json").read_text()
    )
    for name in (
        "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
        "adapter/llamagene_adapter.json", "adapter/tokenizer.json",
        "merged/model.safetensors", "merged/config.json", "merged/tokenizer.json",
        "merged/tokenizer_config.json", "base_model/model.safetensors", "corpus_stats.json",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    assert not (out / "adapter" / "training_args.bin").exists()  # a pickle: never shipped
    records = [json.loads(x) for x in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any("tokens_per_s" in r for r in records)
    assert any("eval_loss" in r for r in records)
    # validation loss per source: each source has blocks of its own
    per_source = report["eval_loss_per_source"]
    assert sorted(per_source) == ["dna", "english", "protein"]
    for source in per_source:
        assert any(f"eval_{source}_loss" in r for r in records)
    blocks = json.loads((out / "corpus_stats.json").read_text())["splits"]["valid"]["sources"]
    mean = sum(per_source[s] * blocks[s]["blocks"] for s in blocks) / sum(
        b["blocks"] for b in blocks.values()
    )
    assert report["eval_loss"] == pytest.approx(mean, abs=1e-5)
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert not (reference / ".work" / "pretrain").exists()  # checkpoints go once it succeeds
    statuses = load_pipeline(reference.parent / "pipeline.yaml").status()
    assert [s.state for s in statuses] == ["up to date"] * 3


def test_new_rows_train_and_frozen_weights_do_not(reference: Path) -> None:
    base = load_file(str(reference / "pretrain" / "base_model" / "model.safetensors"))
    merged = load_file(str(reference / "pretrain" / "merged" / "model.safetensors"))
    meta = json.loads((reference / "pretrain" / "adapter" / "llamagene_adapter.json").read_text())
    base_size, tok_size = meta["base_vocab_size"], meta["tokenizer_size"]
    report = json.loads((reference / "pretrain" / "report.json").read_text())
    corpus = open_corpus(reference / ".cache" / "corpus" / report["corpus_key"][:16])
    in_corpus = torch.zeros(tok_size, dtype=torch.bool)
    for block in corpus.dataset("train"):
        in_corpus[block["input_ids"]] = True
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(merged[name][:base_size], base[name][:base_size]), name
        assert torch.equal(merged[name][tok_size:], base[name][tok_size:]), name  # padding rows
        changed = (merged[name][:tok_size] != base[name][:tok_size]).any(dim=1)
        if name == "lm_head.weight":  # the softmax reaches every output row
            assert changed[base_size:].all(), name
        else:  # an input row learns only where its token occurs in the training blocks
            assert changed[base_size:].sum() > 0.2 * (tok_size - base_size)
            assert not (changed & ~in_corpus).any(), "a row of a token never seen changed"
    for name in ("model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(merged[name], base[name]), name
    # LoRA targets: the merged weight moved away from the frozen base weight
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])


def test_the_adapter_of_a_config_built_base_names_its_exported_base(reference: Path) -> None:
    from transformers import AutoModelForCausalLM

    adapter = reference / "pretrain" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "../base_model"  # beside the adapter
    merged = AutoModelForCausalLM.from_pretrained(str(reference / "pretrain" / "merged"))
    _adapter_loads_with_plain_peft(adapter, merged)


def test_export_loads_with_auto_classes_and_matches_the_adapter(reference: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = reference / "pretrain"
    model = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out / "merged"))
    prompt = tokenizer(to_model_text("ATGAAACGCATTAGCACCACC", "dna"), return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=5, do_sample=False,
                                   pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        merged_logits = model(**prompt).logits
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 5
    base = AutoModelForCausalLM.from_pretrained(str(out / "base_model"))
    adapter = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    with torch.no_grad():
        adapter_logits = adapter(**prompt).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)


def test_killed_run_resumes_to_the_same_adapter(reference: Path, tmp_path: Path) -> None:
    pipeline = setup_pipeline(tmp_path)
    killed = run_cli("run", str(pipeline), env={KILL_AFTER_SAVE_ENV: "8"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoints = list((tmp_path / "run" / ".work" / "pretrain").glob("*/checkpoints/checkpoint-8"))
    assert checkpoints, "the run was not killed after its step-8 checkpoint"
    assert not (tmp_path / "run" / "pretrain").exists()
    status = run_cli("status", str(pipeline))
    assert "did not finish" in status.stdout

    resumed = run_cli("run", str(pipeline))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    timings = json.loads((tmp_path / "run" / "pretrain" / "timings.json").read_text())
    assert timings["resumed_from_step"] == 8
    report = (tmp_path / "run" / "pretrain" / "report.json").read_text()
    assert report == (reference / "pretrain" / "report.json").read_text()  # train_loss too
    got = load_file(str(tmp_path / "run" / "pretrain" / "adapter" / "adapter_model.safetensors"))
    want = load_file(str(reference / "pretrain" / "adapter" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert logged_losses(tmp_path / "run") == logged_losses(reference)


def _two_process_run(
    tmp_path: Path, zero_config: Path, env: dict[str, str] | None = None, **pretrain: Any
) -> Path:
    pipeline = setup_pipeline(tmp_path, **pretrain)
    upstream = run_cli("run", str(pipeline), "--only", "train_bpe", "--only", "merge_vocab")
    assert upstream.returncode == 0, upstream.stderr[-3000:]
    done = subprocess.run(
        ["bash", str(LAUNCH), "--local", "--nproc", "2", str(pipeline), "pretrain",
         f"pretrain.deepspeed={zero_config}"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
             **(env or {})},
    )  # fmt: skip
    assert (done.returncode == 0) == (env is None), done.stderr[-4000:]
    return tmp_path / "run"


# PEFT builds trainable_tokens rows under ZeRO-3 on CUDA only: the CPU ZeRO-3 run trains copies
@pytest.mark.parametrize(
    ("zero", "embeddings"),
    [(ZERO2, "trainable_tokens"), pytest.param(ZERO3, "modules_to_save", marks=pytest.mark.slow)],
)
def test_two_processes_under_the_wrapper_then_a_resume_on_one(
    reference: Path, tmp_path: Path, zero: Path, embeddings: str
) -> None:
    """2 processes with DeepSpeed under launch.sh (the loss in chunks), killed after the step-8
    checkpoint, then resumed on 1 process. ZeRO-2 logs the one-process run's losses; ZeRO-3
    partitions the base as it loads (each process holds half of it); the resume keeps weights,
    schedule and data position and says that the optimizer state restarts."""
    # the loss in chunks (its forward patched under DeepSpeed's engine): the same losses
    training = {**PRETRAIN["training"], "loss_chunk_tokens": 24}
    run_dir = _two_process_run(
        tmp_path, zero, env={KILL_AFTER_SAVE_ENV: "8"}, embedding_training=embeddings,
        training=training,
    )  # fmt: skip
    work = run_dir / ".work" / "pretrain"
    assert list(work.glob("*/checkpoints/checkpoint-8/global_step8"))
    before = logged_losses_of(work)
    (loaded,) = work.glob("*/logs/model.json")
    held = json.loads(loaded.read_text())
    if zero == ZERO2:
        want = logged_losses(reference)
        for step, loss in before.items():
            assert loss == pytest.approx(want[step], rel=MULTI_PROCESS_LOSS_TOLERANCE), step
        assert held["base_parameters_held_per_process"] == [held["base_parameters"]] * 2
    else:  # partitioned as it loaded
        whole = held["base_parameters"]
        assert len(held["base_parameters_held_per_process"]) == 2
        for part in held["base_parameters_held_per_process"]:
            assert 0.45 * whole <= part <= 0.55 * whole, (part, whole)

    resumed = run_cli("run", str(tmp_path / "pipeline.yaml"), f"pretrain.deepspeed={zero}")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert (
        "checkpoint-8 was written by 2 processes and this run has 1: resuming from its weights, "
        "learning-rate schedule and data position; the optimizer state" in resumed.stderr
    )
    report = json.loads((run_dir / "pretrain" / "report.json").read_text())
    assert report["processes"] == 1 and report["steps"] == 12
    assert report["deepspeed_zero_stage"] == (2 if zero == ZERO2 else 3)
    assert report["export"]["max_logit_diff"] < 1e-3
    timings = json.loads((run_dir / "pretrain" / "timings.json").read_text())
    assert timings["resumed_from_step"] == 8
    after = logged_losses(run_dir)
    assert {s: after[s] for s in before if s <= 8} == {s: v for s, v in before.items() if s <= 8}
    assert after[12] < after[1] - 0.2


def test_pretrain_config_errors_are_reported_together(tmp_path: Path) -> None:
    bad_ds = tmp_path / "ds.json"
    bad_ds.write_text("{not json")
    pipeline = setup_pipeline(tmp_path, base_model=str(tmp_path / "nowhere"), deepspeed=str(bad_ds))
    result = run_cli("validate", str(pipeline))
    assert result.returncode == 2
    assert "exactly one of base_model and base_model_config" in result.stderr

    pipeline = setup_pipeline(tmp_path, base_model_config=None, base_model=str(tmp_path))
    (tmp_path / "recipe.yaml").write_text("sources: [{name: x, kind: dna, paths: [gone.fa]}]\n")
    result = run_cli("validate", str(pipeline), f"pretrain.deepspeed={bad_ds}")
    assert result.returncode == 2
    assert f"base_model: {tmp_path} is not a HF model folder" in result.stderr
    assert "recipe.yaml" in result.stderr and "gone.fa does not exist" in result.stderr
    assert "ds.json: not valid JSON" in result.stderr


def test_chunked_loss_and_eager_attention_train_as_the_defaults(
    reference: Path, tmp_path: Path
) -> None:
    training = {**PRETRAIN["training"], "loss_chunk_tokens": 24, "attn_implementation": "eager"}
    pipeline = setup_pipeline(tmp_path, training=training)
    done = run_cli("run", str(pipeline))
    assert done.returncode == 0, done.stderr[-3000:]
    want, got = logged_losses(reference), logged_losses(tmp_path / "run")
    assert got.keys() == want.keys()
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=1e-4), step
    bad = run_cli("run", str(pipeline), "pretrain.training.attn_implementation=flash_attention_2")
    assert bad.returncode == 1 and "flash_attention_2" in bad.stderr.splitlines()[-1]


def test_batch_plan_is_settled_before_any_work(tmp_path: Path) -> None:
    pipeline = setup_pipeline(tmp_path, training={**PRETRAIN["training"], "global_batch_size": 4})
    result = run_cli("run", str(pipeline), "--processes", "3")
    assert result.returncode == 1
    assert (
        "pretrain.training.global_batch_size 4 cannot be shared out over 3 processes: set it "
        "to a multiple of 3 (e.g. 6)" in result.stderr
    )
    assert not (tmp_path / "run" / "train_bpe").exists()  # stopped before the first stage

    launcher = "torchrun --nnodes 2 --nproc_per_node 3"
    result = run_cli("run", str(pipeline), "--launcher", launcher)
    assert "cannot be shared out over 6 processes" in result.stderr

    plan = run_cli("plan", str(pipeline), "--gpus", "4")  # micro 2 lowered to 1 for 4 processes
    assert plan.returncode == 0, plan.stderr
    assert "micro batch      1 sequences per process" in plan.stdout
    assert "lowered from micro_batch_size 2" in plan.stdout
    assert "steps            12 (training.max_steps)" in plan.stdout
    assert "tokens per step  256 (4 x 64)" in plan.stdout
    # the memory estimate (llamagene.training.memory; checked against a measured CPU peak in
    # tests/unit/test_memory_plan.py) for the base it builds, on 4 processes
    assert "memory per GPU: 4 processes, no DeepSpeed" in plan.stdout
    for part in ("weights", "trainable", "optimizer", "activations", "logits", "total"):
        assert f"\n  {part} " in plan.stdout, part
    zero3 = run_cli("plan", str(pipeline), "--gpus", "4", f"pretrain.deepspeed={ZERO3}")
    assert "ZeRO-3" in zero3.stdout, zero3.stdout


def test_prepare_runs_the_cpu_work_before_training(tmp_path: Path) -> None:
    """What a CPU job runs ahead of the GPU job: upstream stages and the corpus, no training;
    the plan then knows the steps."""
    pipeline = setup_pipeline(tmp_path, training={**PRETRAIN["training"], "max_steps": None})
    done = run_cli("prepare", str(pipeline), "--stage", "pretrain")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "prepared pretrain" in done.stdout
    run_dir = tmp_path / "run"
    assert (run_dir / "merge_vocab").is_dir() and not (run_dir / "pretrain").exists()
    (corpus,) = (run_dir / ".cache" / "corpus").glob("*/meta.json")
    blocks = json.loads((corpus.parent / "stats.json").read_text())["train_blocks"]
    plan = run_cli("plan", str(pipeline), "--gpus", "2")
    steps = -(-blocks // 4)  # one epoch of blocks, 4 a step
    assert f"steps            {steps} (1 epoch(s) over {blocks} training sequences)" in plan.stdout
    again = run_cli("prepare", str(pipeline), "--stage", "pretrain")
    assert again.returncode == 0 and "corpus cache hit" in again.stderr


def test_a_stop_request_saves_a_checkpoint_and_a_rerun_resumes(
    reference: Path, tmp_path: Path
) -> None:
    """The stop file a SLURM job's signal trap touches: training saves and stops at the end of
    the step, the stage exits 75 (requeue), and the rerun ends as the uninterrupted run did."""
    pipeline = setup_pipeline(tmp_path)
    stop = tmp_path / "stop"
    stop.touch()
    stopped = run_cli("run", str(pipeline), env={STOP_FILE_ENV: str(stop)})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert "training stopped on request after step 1 and saved a checkpoint" in stopped.stderr
    assert list((tmp_path / "run" / ".work" / "pretrain").glob("*/checkpoints/checkpoint-1"))
    stop.unlink()
    resumed = run_cli("run", str(pipeline), env={STOP_FILE_ENV: str(stop)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    timings = json.loads((tmp_path / "run" / "pretrain" / "timings.json").read_text())
    assert timings["resumed_from_step"] == 1
    got = load_file(str(tmp_path / "run" / "pretrain" / "adapter" / "adapter_model.safetensors"))
    want = load_file(str(reference / "pretrain" / "adapter" / "adapter_model.safetensors"))
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_a_signal_asks_training_to_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STOP_FILE_ENV, raising=False)
    request = StopRequest()
    before = signal.getsignal(signal.SIGUSR1)
    request.arm()
    assert not request.asked()
    os.kill(os.getpid(), signal.SIGUSR1)
    assert request.asked()
    request.disarm()
    assert signal.getsignal(signal.SIGUSR1) is before
    monkeypatch.setenv(STOP_FILE_ENV, str(tmp_path / "stop"))
    request = StopRequest()
    assert not request.asked()
    (tmp_path / "stop").touch()
    assert request.asked()


def test_demo_pipeline_pretrains_finetunes_and_evaluates(tmp_path: Path) -> None:
    """README's main job, each training stage cut to 2 optimizer steps: the demo recipes and
    model config work end to end."""
    from llamagene.cli import DEMO_PIPELINE

    result = run_cli(
        "run", str(DEMO_PIPELINE), f"run_dir={tmp_path / 'demo'}",
        "pretrain.training.max_steps=2", "pretrain.training.eval_every_steps=2",
        "finetune.training.max_steps=2", "finetune.training.eval_every_steps=2",
        "evaluate.resamples=100",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "demo" / "pretrain" / "report.json").read_text())
    assert report["steps"] == 2 and report["export"]["generated_tokens"] == 8
    stats = json.loads((tmp_path / "demo" / "pretrain" / "corpus_stats.json").read_text())
    assert stats["packing_efficiency"] >= 0.99
    tuned = json.loads((tmp_path / "demo" / "finetune" / "report.json").read_text())
    assert tuned["steps"] == 2 and tuned["export"]["chat_template_rows"] == 32
    metrics = json.loads((tmp_path / "demo" / "evaluate" / "metrics.json").read_text())
    assert metrics["models"] == ["tuned", "pretrained", "base"]
    assert set(metrics["tasks"]) == {
        "demo/coding_frame", "demo/translate", "demo/protein_name", "demo/amp"
    }  # fmt: skip
    assert metrics["tasks"]["demo/amp"]["rows"] == 400
    assert set(metrics["english"]["perplexity"]) == {"tuned", "pretrained", "base"}
    assert (tmp_path / "demo" / "evaluate" / "charts" / "loss.png").is_file()


def _adapter_loads_with_plain_peft(adapter: Path, merged: torch.nn.Module) -> None:
    """The adapter names its base and carries the grown rows it does not hold: transformers
    and PEFT alone (no llamagene code) rebuild the model, and it gives the merged logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    info = json.loads((adapter / "llamagene_adapter.json").read_text())
    config = json.loads((adapter / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter / config["base_model_name_or_path"])
    base.resize_token_embeddings(info["rows"])
    grown = load_file(str(adapter / info["grown_rows"]["file"]))
    first = info["grown_rows"]["first_row"]
    with torch.no_grad():
        base.get_input_embeddings().weight[first:] = grown["embed_tokens"]
        base.get_output_embeddings().weight[first:] = grown["lm_head"]
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.tensor([[1, *range(32000, 32040)]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)


def test_a_bf16_export_checks_the_merge_in_fp32_then_the_saved_weights(tmp_path: Path) -> None:
    """bf16 rounding grows with depth, so the merge is checked before the cast (fp32, a
    depth-scaled tolerance) and the saved bf16 tensors must equal the cast ones exactly."""
    training = {**PRETRAIN["training"], "precision": "bf16", "max_steps": 4}
    config = {**PRETRAIN["base_model_config"], "num_hidden_layers": 8}
    pipeline = setup_pipeline(tmp_path, training=training, base_model_config=config)
    done = run_cli("run", str(pipeline))
    assert done.returncode == 0, done.stderr[-3000:]
    export = json.loads((tmp_path / "run" / "pretrain" / "report.json").read_text())["export"]
    assert export["saved_dtype"] == "bf16"
    assert export["max_logit_diff"] <= export["merge_tolerance"] < 1e-3
    assert export["saved_max_logit_diff"] > export["max_logit_diff"]  # bf16 rounding, reported
    merged = json.loads((tmp_path / "run" / "pretrain" / "merged" / "config.json").read_text())
    assert merged["dtype"] == "bfloat16"


def test_local_hf_base_model_folder(tmp_path: Path) -> None:
    """A pretrained base given as a HF folder: loaded, grown, trained, merged into merged/."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000, tie_word_embeddings=False, **PRETRAIN["base_model_config"]
    )
    LlamaForCausalLM(config).save_pretrained(str(tmp_path / "base"))
    training = {**PRETRAIN["training"], "max_steps": 2, "eval_every_steps": 2}
    pipeline = setup_pipeline(
        tmp_path, base_model_config=None, base_model=str(tmp_path / "base"), training=training
    )
    result = run_cli("run", str(pipeline))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run" / "pretrain"
    assert not (out / "base_model").exists()  # the user's base is not copied
    info = json.loads((out / "adapter" / "llamagene_adapter.json").read_text())
    assert info["base_model"] == str(tmp_path / "base") and info["rows"] % 64 == 0
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged"))
    assert merged.get_input_embeddings().weight.shape[0] == info["rows"]
    export = json.loads((out / "report.json").read_text())["export"]
    assert export["max_logit_diff"] <= export["merge_tolerance"] < 1e-3
    assert export["saved_dtype"] == "fp32" and export["saved_top1_agreement"] == 1.0
    _adapter_loads_with_plain_peft(out / "adapter", merged)
    status = run_cli("status", str(pipeline))
    assert "pretrain     up to date" in status.stdout
    (tmp_path / "base" / "config.json").write_text(
        (tmp_path / "base" / "config.json").read_text().replace("1e-06", "1e-05")
    )
    status = run_cli("status", str(pipeline))
    assert "input base_model changed" in status.stdout or "base_model" in status.stdout
