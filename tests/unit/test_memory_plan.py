"""The memory estimate of ``llamagene plan`` against the things it estimates: parameters of built
models, the tensors autograd saves, and the peak memory of a real CPU training run.

The CPU run is the project's own training path (``worker.train`` on a packed corpus, HF Trainer,
PEFT, AdamW), in a fresh process per setting, fp32, one process, no DeepSpeed: what it adds to
the resident memory between "everything imported" and the end of training is compared with the
estimate made for the same spec (``device="cpu"``: the only CPU-specific figure is the dropout
mask, a float tensor there). Linux, glibc, MALLOC_MMAP_THRESHOLD_ fixed: freed tensors then go
back to the system and the resident peak is the live tensors' peak (with glibc's sliding
threshold, identical runs peaked anywhere from 850 to 1,090 MiB without checkpointing). The
two runs take ~20 s together on 2 cores and give, run after run:

    gradient checkpointing   measured   estimated
    on                        698 MiB    644 MiB  (0.92)
    off                       942 MiB    892 MiB  (0.95)

The ~50 MiB between them in both is the process's own growth (Trainer, data loader, kernels'
first use), not tensors.

Run as a script, this file is that training process (``python test_memory_plan.py SPEC OUT``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest

from llamagene.training.memory import (
    GIB,
    deepspeed_bucket_elements,
    estimate_memory,
    model_parameter_count,
    parameter_count,
)
from llamagene.training.model import (
    LLAMA_PROJECTIONS,
    TINY_LLAMA,
    EmbeddingTraining,
    LoraSettings,
    attach_lora,
    padded_vocab_size,
    tokenizer_meta,
)

MODES: tuple[EmbeddingTraining, ...] = ("trainable_tokens", "modules_to_save", "frozen")
SMALL = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2,
         "tie_word_embeddings": False}  # fmt: skip
VOCAB, NEW = 1024, 40
#: The measured run: ~45M parameters, 32,640 rows (the fixtures' merged tokenizer), 4 x 256.
RUN_MODEL = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 4}  # fmt: skip
RUN_LORA = {"r": 8, "dropout": 0.05}
MICRO, BLOCK = 4, 256


def _peft_model(config: dict[str, Any], mode: EmbeddingTraining, lora: LoraSettings) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**config, vocab_size=VOCAB, use_cache=False))
    return attach_lora(base, lora, list(range(VOCAB - NEW, VOCAB)), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("overrides", "targets"),
    [
        ({}, list(LLAMA_PROJECTIONS)),
        ({"tie_word_embeddings": True}, list(LLAMA_PROJECTIONS)),
        ({"head_dim": 8, "attention_bias": True, "mlp_bias": True}, ["q_proj", "v_proj"]),
    ],
)
def test_parameter_count_is_exact(
    mode: EmbeddingTraining, overrides: dict[str, Any], targets: list[str]
) -> None:
    config = {**SMALL, **overrides}
    model = _peft_model(config, mode, LoraSettings(r=4, target_modules=targets))
    expected = parameter_count(
        config, vocab_rows=VOCAB, new_rows=NEW, lora_r=4, lora_targets=targets,
        embedding_training=mode,
    )  # fmt: skip
    assert model_parameter_count(model) == expected
    assert expected.total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("mode", ["trainable_tokens", "modules_to_save"])
@pytest.mark.parametrize(
    ("targets", "attention", "packed"),
    [
        (list(LLAMA_PROJECTIONS), "sdpa", True),
        (list(LLAMA_PROJECTIONS), "sdpa", False),
        (list(LLAMA_PROJECTIONS), "eager", True),
        (["q_proj", "v_proj"], "sdpa", True),
    ],
)
def test_activations_are_what_autograd_saves(
    mode: EmbeddingTraining,
    dropout: float,
    precision: Literal["bf16", "fp32"],
    targets: list[str],
    attention: Literal["sdpa", "eager"],
    packed: bool,
) -> None:
    """Every tensor the forward pass saves for backward (parameters aside), fp32 or bf16 under
    autocast as the worker runs it; the estimate's activations plus what the loss head saves
    (the fp32 log-softmax output, the merged lm_head) must match."""
    import torch

    lora = LoraSettings(r=8, dropout=dropout, target_modules=targets)
    model = _peft_model({**SMALL, "attn_implementation": attention}, mode, lora)
    if precision == "bf16":
        model.to(torch.bfloat16)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # as the worker does
    model.train()
    micro, seq = 2, 48
    ids = torch.randint(0, VOCAB, (micro, seq), generator=torch.Generator().manual_seed(0))
    two_documents = torch.arange(seq).remainder(seq // 2).expand(micro, seq)
    positions = two_documents if packed else None  # packed: transformers builds a mask
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with (
        torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t),
        torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"),
    ):
        model(input_ids=ids, labels=ids, position_ids=positions)
    estimate = estimate_memory(
        SMALL, vocab_rows=VOCAB, new_rows=NEW, lora_r=8, lora_targets=targets,
        lora_dropout=dropout, embedding_training=mode, micro_batch=micro, seq_len=seq, world=1,
        zero_stage=None, precision=precision, gradient_checkpointing=False,
        attention_mask=packed, attn_implementation=attention, device="cpu",
    )  # fmt: skip
    log_softmax = micro * seq * VOCAB * 4  # a third of the loss's 12 bytes a logit
    head_copy = estimate.logits - 3 * log_softmax
    expected = estimate.activations + log_softmax + head_copy
    # what is not modelled: position embeddings, token ids, labels (~1%)
    assert expected == pytest.approx(sum(saved.values()), rel=0.02)


def test_zero_stages_split_what_they_should() -> None:
    common: dict[str, Any] = dict(
        vocab_rows=VOCAB, new_rows=NEW, lora_r=8, lora_targets=LLAMA_PROJECTIONS,
        lora_dropout=0.0, embedding_training="modules_to_save", micro_batch=1, seq_len=64,
        precision="bf16", gradient_checkpointing=True,
    )  # fmt: skip
    count = parameter_count(
        SMALL, vocab_rows=VOCAB, new_rows=NEW, lora_r=8, lora_targets=LLAMA_PROJECTIONS,
        embedding_training="modules_to_save",
    )  # fmt: skip
    n = count.trainable
    one = estimate_memory(SMALL, world=1, zero_stage=None, **common)
    ddp = estimate_memory(SMALL, world=8, zero_stage=None, **common)
    assert (one.trainable, one.optimizer) == (8 * n, 8 * n)  # fp32 values + fp32 gradients
    assert ddp.trainable == 12 * n and ddp.optimizer == 8 * n  # + DDP's bucket copy
    zero = {s: estimate_memory(SMALL, world=8, zero_stage=s, **common) for s in (1, 2, 3)}
    assert zero[1].trainable == 2 * n + 2 * n + 4 * n // 8  # bf16 values, grads; split master
    assert zero[2].trainable == 2 * n + 2 * n // 8 + 4 * n // 8
    assert zero[3].trainable == 2 * n // 8 + 2 * n // 8 + 4 * n // 8
    assert {z.optimizer for z in zero.values()} == {8 * n // 8}
    assert zero[3].weights == count.base * 2 // 8 < zero[2].weights == count.base * 2
    # gradient checkpointing: one layer's recompute and the logits never coexist
    static = one.weights + one.trainable + one.optimizer
    assert static + max(one.activations, one.logits) <= one.total
    assert one.total < static + one.activations + one.logits


def test_deepspeed_buckets_of_the_shipped_configs() -> None:
    pipelines = Path(__file__).parents[2] / "pipelines" / "deepspeed"
    zero2 = json.loads((pipelines / "zero2.json").read_text())
    zero3 = json.loads((pipelines / "zero3.json").read_text())
    assert deepspeed_bucket_elements(zero2, 4096) == 100_000_000  # 5e7, overlap_comm: twice
    assert deepspeed_bucket_elements(zero3, 4096) == 4096**2 + int(0.9 * 4096**2)
    assert deepspeed_bucket_elements({"zero_optimization": {"stage": 0}}, 4096) == 0


def test_table_lists_every_part_in_gib() -> None:
    estimate = estimate_memory(
        {**TINY_LLAMA, "hidden_size": 4096, "intermediate_size": 11008,
         "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32},
        vocab_rows=40_000, new_rows=8_000, lora_r=8, lora_targets=LLAMA_PROJECTIONS,
        lora_dropout=0.05, embedding_training="trainable_tokens", micro_batch=4, seq_len=4096,
        world=8, zero_stage=2, precision="bf16", gradient_checkpointing=True,
        bucket_elements=1_000_000_000,
    )  # fmt: skip
    table = estimate.table()
    lines = table.splitlines()
    assert lines[0].startswith("memory per GPU: 8 processes, DeepSpeed ZeRO-2, bf16")
    for name in ("weights", "trainable", "optimizer", "activations", "logits", "buffers",
                 "total"):  # fmt: skip
        size = getattr(estimate, name)
        assert f"  {name:<12}{size / GIB:>8.2f} GiB" in table
    assert "assumptions:" in lines
    assert all(f"  - {note}" in lines for note in estimate.notes)
    assert 12 < estimate.weights / GIB < 13  # ~6.7B frozen bf16 parameters


# --- the measured CPU run ------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured_runs(
    merged_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[bool, tuple[int, dict[str, Any]]]:
    """{gradient checkpointing: (bytes training added, spec settings)}: both runs at once, each
    in a fresh process on one thread."""
    from conftest import GENOMES

    from llamagene.training.corpus import prepare_corpus
    from llamagene.training.data_recipe import DataRecipe
    from llamagene.training.spec import ModelSpec, TrainSpec

    root = tmp_path_factory.mktemp("memory")
    recipe = DataRecipe.model_validate({
        "seed": 7, "validation_fraction": 0.0, "min_validation_documents": 0,
        "total_tokens": 2 * MICRO * BLOCK,  # two steps' blocks, no evaluation
        "sources": [
            {"name": "dna", "kind": "dna", "window_chars": 512,
             "paths": [str(GENOMES / "genes_a.fa"), str(GENOMES / "genes_b.fa.gz")]},
            {"name": "protein", "kind": "protein", "paths": [str(GENOMES / "proteins.faa")]},
        ],
    })  # fmt: skip
    corpus = prepare_corpus(recipe, merged_tokenizer_dir, BLOCK, root / "cache")
    assert corpus.train_blocks >= MICRO
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(
        OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2", MALLOC_MMAP_THRESHOLD_="131072",
        CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false",
    )  # fmt: skip
    runs = {}
    for checkpointing in (True, False):
        settings = {
            "max_steps": 2, "micro_batch_size": MICRO, "global_batch_size": MICRO,
            "precision": "fp32", "gradient_checkpointing": checkpointing,
            "save_every_steps": 100, "log_every_steps": 1,
        }  # fmt: skip
        work = root / f"checkpointing-{checkpointing}"
        spec = TrainSpec(
            model=ModelSpec(
                base_model_dir=None, base_model_config=RUN_MODEL, seed=0,
                tokenizer_dir=str(merged_tokenizer_dir), embedding_init="mean",
                embedding_training="trainable_tokens", lora=RUN_LORA,
            ),
            train=settings, data_dir=str(corpus.dir), work_dir=str(work / "work"),
        )  # fmt: skip
        spec.save(work / "spec.json")
        command = [sys.executable, __file__, str(work / "spec.json"), str(work / "peak.json")]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        runs[checkpointing] = (process, work, settings)
    outputs = {c: process.communicate(timeout=600)[0] for c, (process, _, _) in runs.items()}
    results = {}
    for checkpointing, (process, work, settings) in runs.items():
        assert process.returncode == 0, outputs[checkpointing][-3000:]
        added = json.loads((work / "peak.json").read_text())["added_bytes"]
        results[checkpointing] = (int(added), settings)
    return results


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("checkpointing", [True, False])
def test_estimate_is_within_a_quarter_of_a_cpu_run(
    measured_runs: dict[bool, tuple[int, dict[str, Any]]],
    merged_tokenizer_dir: Path,
    checkpointing: bool,
) -> None:
    measured, settings = measured_runs[checkpointing]
    meta = tokenizer_meta(merged_tokenizer_dir)
    lora = LoraSettings.model_validate(RUN_LORA)
    estimate = estimate_memory(
        {**TINY_LLAMA, **RUN_MODEL},  # what build_base_model builds
        vocab_rows=padded_vocab_size(int(meta["vocab_size"])),
        new_rows=int(meta["vocab_size"]) - int(meta["base_vocab_size"]),
        lora_r=lora.r, lora_targets=lora.target_modules, lora_dropout=lora.dropout,
        embedding_training="trainable_tokens", micro_batch=settings["micro_batch_size"],
        seq_len=BLOCK, world=1, zero_stage=None, precision="fp32",
        gradient_checkpointing=checkpointing, device="cpu",
    )  # fmt: skip
    ratio = estimate.total / measured
    summary = f"measured {measured / 2**20:.0f} MiB, estimated {estimate.total / 2**20:.0f} MiB"
    print(f"{summary} ({ratio:.2f})\n{estimate.table()}")
    assert 0.75 <= ratio <= 1.25, f"{summary}\n{estimate.table()}"


def _train_and_measure(spec_path: Path, out_path: Path) -> None:
    """Train as the spec says and write the resident memory training added at its peak: from
    just before ``train`` (everything it uses imported) to the peak (VmHWM, reset first)."""
    import logging

    import torch

    torch.set_num_threads(1)
    # what train imports, so that its memory counts before the baseline
    import torch.utils.tensorboard
    from transformers import Trainer, TrainingArguments  # noqa: F401

    from llamagene.training.spec import TrainSpec
    from llamagene.training.worker import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = TrainSpec.load(spec_path)
    before = _status_bytes("VmRSS")
    # VmHWM := VmRSS (Linux >= 4.0); else the peak counts from the start, where the imports
    # stay far below training's peak
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    train(spec)
    out_path.write_text(json.dumps({"added_bytes": _status_bytes("VmHWM") - before}))


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {key}")


if __name__ == "__main__":
    _train_and_measure(Path(sys.argv[1]), Path(sys.argv[2]))
