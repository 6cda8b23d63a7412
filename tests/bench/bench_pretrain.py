"""Benchmark the ``pretrain`` stage: data preparation, packing, training speed, embedding init.

Run from the repository root (``--quick`` is a ~2 minute smoke test of every section):

    .venv/bin/python tests/bench/bench_pretrain.py [--quick] [--section NAME ...]
                                                   [--data-mb 40] [--out results.json]
                                                   [--gpu-part stage|options|compile ...]

Sections (all by default; ``gpu`` only where CUDA is present, or with ``--gpu-smoke``):

prepare  MB of FASTA -> packed blocks per second (``prepare_corpus``, 2 tokenizing processes) on
         ``--data-mb`` of DNA plus a quarter of that of protein, made from pyhmmer's real
         sequences with 2% random substitutions per copy (so BPE sees no exact repeats); packing
         efficiency (real tokens / all tokens; goal >= 99%) at block sizes 512 and 4096.
train    training tokens/s and peak memory per process for a small LLaMA (4 layers, hidden 256,
         40k vocabulary, LoRA r=8 + full embedding copies) on the CPU: 1 process, 2 processes
         with DDP, 2 processes with DeepSpeed ZeRO-2, same global batch.
init     new-row initialisation ``compose`` vs ``mean`` on early loss. A tiny base is first
         pretrained on English and on DNA / protein written as plain letters with the *base*
         tokenizer (so it knows what "ACGT" is), then grown to the merged vocabulary both ways
         and trained on the demo corpus; prints the loss before training and over early steps.
gpu      tokens/s, peak memory (``torch.cuda.max_memory_allocated``) and MFU for a ~1.1B-
         parameter LLaMA (22 layers, hidden 2048, the ~91.6k vocabulary of llama-gene), LoRA r=8
         on every projection, the new embedding rows trained, bf16, one GPU, micro batch 8 x
         1,024 tokens of packed documents. First the stage's own worker (HF Trainer) at its
         defaults; then, in a plain loop, each option: the loss standard or chunked
         (``llamagene.training.loss``; micro x seq x vocab fp32 logits are GBs), attention sdpa
         or FlashAttention 2 / 3 where installed, and torch.compile off / on (the baseline and
         the fastest uncompiled mix). MFU twice: by the 6N convention (6 x all parameters x
         tokens/s / the device's dense bf16 peak, which overstates LoRA's work: its backward
         skips the frozen weights' gradients) and by the FLOPs LoRA training does. The peak
         comes from a table by device name (989.4 TFLOP/s for H100 / H200 SXM) or
         ``--peak-tflops``. Goal: MFU >= 35% on an H100. Skipped, and says so, without CUDA;
         ``--gpu-smoke`` runs the same code on the CPU with a tiny config, to check it, not to
         measure (compile there traces with ``aot_eager`` and generates no code).

Every figure is printed with the machine it ran on and kept in ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llamagene.cli import DEMO_PIPELINE  # noqa: E402
from llamagene.config import resolve_package_path  # noqa: E402
from llamagene.pipeline import load_pipeline  # noqa: E402
from llamagene.training.model import LLAMA_PROJECTIONS as LLAMA_LORA_TARGETS  # noqa: E402

PYHMMER_SEQS = "pkg://pyhmmer/tests/data/seqs/"
DNA_FILES = ("1390.SAMEA104415756.OFHT01000022.fna", "CP040672.1.genes_100.fna")
PROTEIN_FILE = "938293.PRJEB85.HG003687.faa"
DEMO_RECIPE = REPO / "data_recipes" / "demo_pretrain.yaml"
SMALL_MODEL = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
               "num_attention_heads": 8, "num_key_value_heads": 4}  # fmt: skip
#: ~1.1B parameters (TinyLlama's shape) with llama-gene's 91,598-token merged vocabulary.
GPU_MODEL = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
             "num_attention_heads": 32, "num_key_value_heads": 4}  # fmt: skip
GPU_SMOKE_MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
GPU_BASE_VOCAB, GPU_VOCAB = 32_000, 91_598
GPU_EMBEDDING_TRAINING = "trainable_tokens"  # the stage's default: the new rows train
GPU_BLOCK, GPU_MICRO = 1024, 8
GPU_STEPS, GPU_WARMUP = 20, 3
GPU_LOSS_CHUNK_TOKENS = 2048
#: Dense bf16 peak of one GPU, TFLOP/s (vendor datasheets, without sparsity); the first key
#: found in the device name wins, so the PCIe and NVL parts come before the SXM ones.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.5, "H200 NVL": 835.5, "H100": 989.4,
               "H200": 989.4, "A100": 312.0}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--section", action="append", choices=["prepare", "train", "init", "gpu"])
    parser.add_argument("--data-mb", type=float, default=40.0, help="MB of DNA for 'prepare'")
    parser.add_argument("--gpu-smoke", action="store_true", help="run 'gpu' on the CPU, tiny")
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's bf16 peak")
    parser.add_argument(
        "--gpu-part",
        action="append",
        choices=["stage", "options", "compile"],
        help="parts of 'gpu' to run (default all): the stage's worker, the uncompiled options, "
        "the compiled runs (each compile takes minutes: the 59.6k new-row ids are traced)",
    )
    parser.add_argument("--work-dir", type=Path, help="keep the files here (default: temp)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sections = args.section or ["prepare", "train", "init", "gpu"]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": _machine()}
    print(f"machine: {results['machine']}\nwork dir: {work}")
    needs_tokenizer = {"prepare", "train", "init"} & set(sections)
    tokenizer_run = _demo_tokenizer(work / "tokenizer_run") if needs_tokenizer else work
    if "prepare" in sections:
        mb = 2.0 if args.quick else args.data_mb
        results["prepare"] = bench_prepare(work / "prepare", tokenizer_run, mb)
    if "train" in sections:
        results["train"] = bench_train(work / "train", tokenizer_run, steps=4 if args.quick else 12)
    if "init" in sections:
        results["init"] = bench_init(work / "init", tokenizer_run, quick=args.quick)
    if "gpu" in sections:
        parts = set(args.gpu_part or ["stage", "options", "compile"])
        results["gpu"] = bench_gpu(work / "gpu", args.gpu_smoke, args.peak_tflops, parts)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.out}")
    return 0


# ---------------------------------------------------------------------------------- helpers
def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def _demo_tokenizer(run_dir: Path) -> Path:
    """train_bpe + merge_vocab of the demo pipeline (4k + 4k pieces) in ``run_dir``."""
    load_pipeline(DEMO_PIPELINE, [f"run_dir={run_dir}"]).run(only=["train_bpe", "merge_vocab"])
    return run_dir


def _write_pipeline(folder: Path, tokenizer_run: Path, pretrain: dict[str, Any]) -> Path:
    """A pipeline whose run_dir already holds the demo's train_bpe and merge_vocab outputs."""
    folder.mkdir(parents=True, exist_ok=True)
    demo = yaml.safe_load(DEMO_PIPELINE.read_text())["stages"]
    for stage in ("train_bpe", "merge_vocab"):
        for key, value in list(demo[stage].items()):
            if isinstance(value, list):
                demo[stage][key] = [_absolute(v) for v in value]
            elif isinstance(value, str):
                demo[stage][key] = _absolute(value)
    stages = {
        "train_bpe": demo["train_bpe"],
        "merge_vocab": demo["merge_vocab"],
        "pretrain": pretrain,
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tokenizer_run), "stages": stages}))
    return path


def _absolute(value: Any) -> Any:
    if isinstance(value, str) and not value.startswith("pkg://") and not value.startswith("/"):
        candidate = (DEMO_PIPELINE.parent / value).resolve()
        return str(candidate) if candidate.exists() else value
    return value


def _run_pretrain(pipeline: Path, launcher: str | None, extra: list[str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "llamagene", "run", str(pipeline), "--only", "pretrain",
               "--force", *extra]  # fmt: skip
    if launcher:
        command += ["--launcher", launcher]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if launcher else "2", "DS_ACCELERATOR": "cpu"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"pretrain failed:\n{done.stderr[-4000:]}")
    run_dir = Path(yaml.safe_load(pipeline.read_text())["run_dir"])
    report: dict[str, Any] = json.loads((run_dir / "pretrain" / "report.json").read_text())
    report |= json.loads((run_dir / "pretrain" / "timings.json").read_text())  # wall-clock figures
    report["stage_wall_s"] = round(time.perf_counter() - start, 1)
    return report


def _mutated_fasta(path: Path, sources: list[Path], target_bytes: int, alphabet: str) -> int:
    """Copies of the real records with 2% random substitutions, until ``target_bytes``."""
    records: list[str] = []
    for src in sources:
        seq: list[str] = []
        for line in src.read_text().splitlines():
            if line.startswith(">"):
                if seq:
                    records.append("".join(seq).upper().rstrip("*"))
                seq = []
            else:
                seq.append(line.strip())
        if seq:
            records.append("".join(seq).upper().rstrip("*"))
    rng = random.Random(0)
    written = copy = 0
    with path.open("w") as out:
        while written < target_bytes:
            for i, rec in enumerate(records):
                chars = list(rec)
                for _ in range(len(chars) // 50):
                    chars[rng.randrange(len(chars))] = rng.choice(alphabet)
                body = "".join(chars)
                lines = "\n".join(body[j : j + 80] for j in range(0, len(body), 80))
                text = f">copy{copy}_rec{i}\n{lines}\n"
                out.write(text)
                written += len(text)
                if written >= target_bytes:
                    break
            copy += 1
    return written


# ---------------------------------------------------------------------------------- sections
def bench_prepare(work: Path, tokenizer_run: Path, dna_mb: float) -> dict[str, Any]:
    from llamagene.training.corpus import prepare_corpus
    from llamagene.training.data_recipe import DataRecipe

    work.mkdir(parents=True, exist_ok=True)
    seqs = resolve_package_path(PYHMMER_SEQS + DNA_FILES[0]).parent
    dna, protein = work / "dna.fa", work / "protein.faa"
    dna_bytes = _mutated_fasta(dna, [seqs / f for f in DNA_FILES], int(dna_mb * 1e6), "ACGT")
    protein_bytes = _mutated_fasta(
        protein, [seqs / PROTEIN_FILE], int(dna_mb * 0.25e6), "ACDEFGHIKLMNPQRSTVWY"
    )
    total_mb = (dna_bytes + protein_bytes) / 1e6
    recipe = DataRecipe.model_validate(
        {
            "sources": [
                {"name": "dna", "kind": "dna", "paths": [str(dna)], "weight": 0.7},
                {"name": "protein", "kind": "protein", "paths": [str(protein)], "weight": 0.3},
            ]
        }
    )
    tokenizer = tokenizer_run / "merge_vocab" / "tokenizer"
    figures: dict[str, Any] = {"fasta_mb": round(total_mb, 2)}
    for block_size in (512, 4096):
        start = time.perf_counter()
        corpus = prepare_corpus(recipe, tokenizer, block_size, work / "cache", num_proc=2)
        seconds = time.perf_counter() - start
        stats = corpus.stats
        figures[f"block_{block_size}"] = {
            "seconds": round(seconds, 2),
            "fasta_mb_per_s": round(total_mb / seconds, 2),
            "train_blocks": corpus.train_blocks,
            "valid_blocks": corpus.valid_blocks,
            "real_tokens": stats["real_tokens"],
            "packing_efficiency": stats["packing_efficiency"],
        }
        print(
            f"prepare: {total_mb:.1f} MB FASTA -> {corpus.train_blocks:,} blocks of {block_size} "
            f"in {seconds:.1f} s = {total_mb / seconds:.2f} MB/s; packing efficiency "
            f"{100 * stats['packing_efficiency']:.3f}% (goal >= 99%)"
        )
    start = time.perf_counter()
    prepare_corpus(recipe, tokenizer, 512, work / "cache", num_proc=2)
    figures["cache_hit_seconds"] = round(time.perf_counter() - start, 3)
    print(f"prepare: cache hit (same content) in {figures['cache_hit_seconds']} s")
    return figures


def bench_train(work: Path, tokenizer_run: Path, steps: int) -> dict[str, Any]:
    zero2 = REPO / "pipelines" / "deepspeed" / "zero2.json"
    pretrain = {
        "base_model_config": SMALL_MODEL,
        "data_recipe": str(DEMO_RECIPE),
        "block_size": 256,
        "training": {"max_steps": steps, "micro_batch_size": 4, "global_batch_size": 16,
                     "log_every_steps": 2, "eval_every_steps": 10_000,
                     "save_every_steps": 10_000, "gradient_checkpointing": False},
        "export_merged": False,
    }  # fmt: skip
    pipeline = _write_pipeline(work, tokenizer_run, pretrain)
    runs = {
        "1 process": (None, []),
        "2 processes, DDP": ("torchrun --standalone --nproc_per_node 2", []),
        "2 processes, ZeRO-2": (
            "torchrun --standalone --nproc_per_node 2",
            [f"pretrain.deepspeed={zero2}"],
        ),
    }
    figures: dict[str, Any] = {"model": SMALL_MODEL, "steps": steps, "tokens_per_step": 16 * 256}
    for name, (launcher, extra) in runs.items():
        report = _run_pretrain(pipeline, launcher, extra)
        keys = ("tokens_per_s", "peak_rss_mb_rank0", "train_loss", "stage_wall_s",
                "trainable_parameters", "total_parameters")  # fmt: skip
        figures[name] = {k: report[k] for k in keys}
        print(
            f"train ({name}): {report['tokens_per_s']:,.0f} tokens/s, peak RSS "
            f"{report['peak_rss_mb_rank0']:,.0f} MB per process, loss {report['train_loss']:.4f}"
        )
    return figures


def bench_init(work: Path, tokenizer_run: Path, quick: bool) -> dict[str, Any]:

    base_dir = work / "base_model"
    base_steps = 40 if quick else 400
    if not (base_dir / "config.json").is_file():
        _pretrain_tiny_base(base_dir, tokenizer_run, base_steps)
    steps = 6 if quick else 40
    figures: dict[str, Any] = {"base_pretraining_steps": base_steps, "steps": steps}
    for init in ("compose", "mean"):
        pretrain = {
            "base_model": str(base_dir),
            "data_recipe": str(DEMO_RECIPE),
            "block_size": 128,
            "embedding_init": init,
            "training": {"max_steps": steps, "micro_batch_size": 8, "global_batch_size": 8,
                         "learning_rate": 1e-3, "log_every_steps": 1, "eval_every_steps": steps,
                         "save_every_steps": 10_000, "gradient_checkpointing": False},
            "export_merged": False,
        }  # fmt: skip
        pipeline = _write_pipeline(work / init, tokenizer_run, pretrain)
        report = _run_pretrain(pipeline, None, [])
        run_dir = Path(yaml.safe_load(pipeline.read_text())["run_dir"])
        lines = (run_dir / "pretrain" / "logs" / "metrics.jsonl").read_text().splitlines()
        losses = [r["loss"] for r in map(json.loads, lines) if "loss" in r]
        start_loss = _initial_loss(base_dir, run_dir, init)
        first = sum(losses[:5]) / len(losses[:5])
        last = sum(losses[-5:]) / len(losses[-5:])
        figures[init] = {"loss_before_training": round(start_loss, 4),
                         "mean_loss_steps_1_5": round(first, 4),
                         "mean_loss_last_5_steps": round(last, 4),
                         "eval_loss_after": report["eval_loss"]}  # fmt: skip
        print(
            f"init {init:>7}: loss before training {start_loss:.3f}, steps 1-5 {first:.3f}, "
            f"last 5 of {steps} steps {last:.3f}, eval after {report['eval_loss']:.3f}"
        )
    return figures


def _pretrain_tiny_base(out_dir: Path, tokenizer_run: Path, steps: int) -> None:
    """A tiny LLaMA trained briefly with the base tokenizer on English and on sequences written
    as plain letters, so that it has meaningful rows for "A", "CG", "ATG"... to compose from."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llamagene.sequences import SequencePolicy, iter_windows

    tok = AutoTokenizer.from_pretrained(str(tokenizer_run / "merge_vocab" / "tokenizer"))
    seqs = resolve_package_path(PYHMMER_SEQS + DNA_FILES[0]).parent
    texts = [w.text for w in iter_windows([seqs / DNA_FILES[0]], SequencePolicy("dna"), 400)]
    texts += [w.text for w in iter_windows([seqs / PROTEIN_FILE], SequencePolicy("protein"), 200)]
    idle = resolve_package_path("pkg://idlelib/NEWS.txt").parent
    texts += [p for f in ("NEWS.txt", "HISTORY.txt") for p in (idle / f).read_text().split("\n\n")]
    ids = [i for t in texts for i in [*tok(t)["input_ids"], tok.eos_token_id]]
    assert max(ids) < 32000, "plain letters must tokenize with base pieces only"
    data = torch.tensor(ids)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=128, intermediate_size=344,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    block, batch = 128, 16
    start = time.perf_counter()
    for step in range(steps):
        offsets = torch.randint(0, len(data) - block - 1, (batch,))
        x = torch.stack([data[o : o + block] for o in offsets])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"init: base pretraining step {step}: loss {loss.item():.3f}")
    model.save_pretrained(str(out_dir))
    print(f"init: tiny base ready in {time.perf_counter() - start:.0f} s ({len(ids):,} tokens)")


def _initial_loss(base_dir: Path, run_dir: Path, init: str) -> float:
    """Validation loss of the grown base before any training step (LoRA starts as identity)."""
    import torch
    from transformers import AutoModelForCausalLM

    from llamagene.training.corpus import open_corpus
    from llamagene.training.model import grow_embeddings

    model = AutoModelForCausalLM.from_pretrained(str(base_dir)).eval()
    grow_embeddings(model, run_dir / "merge_vocab" / "tokenizer", init)  # type: ignore[arg-type]
    report = json.loads((run_dir / "pretrain" / "report.json").read_text())
    corpus = open_corpus(run_dir / ".cache" / "corpus" / report["corpus_key"][:16])
    valid = corpus.dataset("valid")
    losses = []
    with torch.no_grad():
        for i in range(len(valid)):
            item = valid[i]
            out = model(input_ids=item["input_ids"][None], labels=item["labels"][None],
                        position_ids=item["position_ids"][None], use_cache=False)  # fmt: skip
            losses.append(out.loss.item())
    return sum(losses) / len(losses)


def bench_gpu(
    work: Path, smoke: bool, peak_override: float | None, parts: set[str]
) -> dict[str, Any]:
    """The stage's own loop at its defaults, then each speed option in a plain loop."""
    import torch

    if not torch.cuda.is_available() and not smoke:
        print("gpu: skipped (no CUDA device; --gpu-smoke checks the code on the CPU)")
        return {"skipped": "no CUDA device"}
    model_cfg = GPU_MODEL if not smoke else GPU_SMOKE_MODEL
    name = torch.cuda.get_device_name(0) if not smoke else "CPU (smoke: not a measurement)"
    peak, peak_source = _peak_tflops(name, peak_override)
    print(f"gpu: device {name}; peak dense bf16 {peak_source}")
    result: dict[str, Any] = {"device": name, "peak_tflops": peak, "peak_source": peak_source}
    if "stage" in parts:
        result["stage"] = _gpu_stage_run(work, model_cfg, smoke, peak)
    if parts & {"options", "compile"}:
        result["options"] = _gpu_option_runs(model_cfg, smoke, peak, parts)
    return result


def _peak_tflops(device: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"{override} TFLOP/s (--peak-tflops)"
    for key, value in PEAK_TFLOPS.items():
        if key in device:
            return value, f"{value} TFLOP/s (datasheet figure for {key!r})"
    return None, "unknown for this device: no MFU (give --peak-tflops)"


def _gpu_stage_run(work: Path, model_cfg: dict[str, Any], smoke: bool, peak: float | None
                   ) -> dict[str, Any]:  # fmt: skip
    """The pretrain stage's worker (HF Trainer) at its defaults, on a synthetic corpus."""
    import numpy as np

    from llamagene.training.spec import ModelSpec, TrainSpec
    from llamagene.training.worker import train

    block, micro, steps = (GPU_BLOCK, GPU_MICRO, 30) if not smoke else (64, 2, 4)
    work.mkdir(parents=True, exist_ok=True)
    # Speed does not depend on which tokens: a synthetic corpus and tokenizer record suffice
    tok_dir = work / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    (tok_dir / "llamagene_tokenizer.json").write_text(
        json.dumps({"base_vocab_size": GPU_BASE_VOCAB, "vocab_size": GPU_VOCAB})
    )
    corpus_dir = work / "corpus"
    corpus_dir.mkdir(exist_ok=True)
    blocks = micro * (steps + 2)
    rng = np.random.default_rng(0)
    rng.integers(0, GPU_VOCAB, blocks * block, dtype=np.uint32).tofile(corpus_dir / "train.bin")
    (corpus_dir / "valid.bin").write_bytes(b"")
    (corpus_dir / "meta.json").write_text(json.dumps({"block_size": block, "key": "synthetic"}))
    (corpus_dir / "stats.json").write_text(json.dumps({
        "train_blocks": blocks, "valid_blocks": 0,
        "splits": {"train": {"real_tokens": blocks * block}, "valid": {"real_tokens": 0}},
    }))  # fmt: skip
    spec = TrainSpec(
        model=ModelSpec(None, model_cfg, 0, str(tok_dir), "mean", GPU_EMBEDDING_TRAINING,
                        {"r": 8, "alpha": 32, "dropout": 0.05}),
        train={"max_steps": steps, "micro_batch_size": micro, "global_batch_size": micro,
               "precision": "bf16" if not smoke else "fp32", "gradient_checkpointing": False,
               "log_every_steps": 5 if not smoke else 1, "eval_every_steps": 10_000,
               "save_every_steps": 10_000},
        data_dir=str(corpus_dir),
        work_dir=str(work / "run"),
    )  # fmt: skip
    figures = train(spec)
    history = [
        json.loads(x) for x in (work / "run" / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h][1:]  # drop warm-up
    tokens_per_s = sum(rates) / len(rates) if rates else figures["tokens_per_s"]
    lora = _lora_parameters(model_cfg, 8)
    flops = _flops_per_token(model_cfg, block, figures["total_parameters"], lora)
    result = {
        "loop": "the pretrain worker (HF Trainer): standard loss, sdpa, no compile",
        "block_size": block, "micro_batch": micro, "steps": steps,
        "tokens_per_s": round(tokens_per_s, 1),
        "peak_gpu_memory_gb": figures["peak_gpu_memory_gb"],
        "parameters": figures["total_parameters"],
        "trainable_parameters": figures["trainable_parameters"],
    }  # fmt: skip
    result |= _mfu(tokens_per_s, flops, peak)
    print(f"gpu: the stage's worker (Trainer; standard loss, sdpa, no compile): "
          f"{tokens_per_s:,.0f} tokens/s, peak {figures['peak_gpu_memory_gb']} GB"
          f"{_mfu_text(result)}")  # fmt: skip
    return result


def _gpu_option_runs(model_cfg: dict[str, Any], smoke: bool, peak: float | None,
                     parts: set[str]) -> dict[str, Any]:  # fmt: skip
    """Each option in a plain training loop (what the worker does, without the Trainer):
    loss standard / chunked x attention sdpa / FlashAttention where installed, without
    torch.compile; then compiled, the baseline and the fastest uncompiled mix."""
    import gc

    import torch
    import transformers

    from llamagene.errors import StageError
    from llamagene.training.loss import check_attention

    gc.collect()  # the stage run's model and optimizer, before the peaks are measured
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    block, micro = (GPU_BLOCK, GPU_MICRO) if not smoke else (64, 2)
    steps, warmup = (GPU_STEPS, GPU_WARMUP) if not smoke else (2, 1)
    chunk = GPU_LOSS_CHUNK_TOKENS if not smoke else 32
    backend = "inductor" if not smoke else "aot_eager"  # smoke: trace, do not generate code
    attentions = ["sdpa"]
    skipped: dict[str, str] = {}
    for impl in ("flash_attention_2", "flash_attention_3"):
        try:
            check_attention(impl)
            attentions.append(impl)
        except StageError as err:
            skipped[impl] = str(err)
    conditions = (
        f"{'bf16 base + fp32 trainable weights under bf16 autocast' if not smoke else 'fp32'}, "
        f"LoRA r=8 on {len(LLAMA_LORA_TARGETS)} projections, new embedding rows trained "
        f"({GPU_EMBEDDING_TRAINING}), fused AdamW, grad clipping, no activation checkpointing; "
        f"micro batch {micro} x {block} tokens of synthetic documents (1-{block} tokens, "
        f"positions restart, first label -100); FlashAttention gets the {micro} rows flattened "
        f"into one (it sees packed documents only so); chunked loss: {chunk} tokens a chunk; "
        f"{warmup} warm-up + {steps} timed steps; compile: torch.compile(model, "
        f"backend={backend!r}); torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print(f"gpu: options: {conditions}")
    for impl, why in skipped.items():
        print(f"gpu: options: {impl} not measured: {why}")
    plan = [(loss, impl, False) for impl in attentions for loss in ("standard", "chunked")]
    runs: list[dict[str, Any]] = []
    for loss, impl, compiled in plan if "options" in parts else []:
        runs.append(_gpu_option_run(model_cfg, smoke, loss, impl, compiled, backend, chunk,
                                    block, micro, steps, warmup, peak))  # fmt: skip
    # compiled: the baseline, and the fastest uncompiled mix (without those runs: chunked with
    # the newest attention installed)
    best = max(runs, key=lambda r: r["tokens_per_s"], default=None)
    mix = (best["loss"], best["attention"]) if best else ("chunked", attentions[-1])
    for loss, impl in dict.fromkeys([("standard", "sdpa"), mix]) if "compile" in parts else []:
        runs.append(_gpu_option_run(model_cfg, smoke, loss, impl, True, backend, chunk,
                                    block, micro, steps, warmup, peak))  # fmt: skip
    print(f"{'loss':<9} {'attention':<18} {'compile':<8} {'tokens/s':>10} {'peak GB':>8} "
          f"{'MFU 6N':>7} {'MFU work':>9} {'loss at end':>12}")  # fmt: skip
    for r in runs:
        print(f"{r['loss']:<9} {r['attention']:<18} {'on' if r['compile'] else 'off':<8} "
              f"{r['tokens_per_s']:>10,.0f} {r['peak_gpu_memory_gb']:>8.2f} "
              f"{_pct(r.get('mfu_6n')):>7} {_pct(r.get('mfu_work')):>9} "
              f"{r['final_loss']:>12.4f}")  # fmt: skip
    print("gpu: MFU 6N = 6 x all parameters x tokens/s / peak (the usual convention; it counts "
          "a weight gradient for every weight, but LoRA's backward skips those of the frozen "
          "weights, and the input embedding does no matmul, so it overstates the work done); "
          "MFU work = the FLOPs this LoRA training does (see _flops_per_token). Neither counts "
          "the chunked loss's recomputed lm_head forward.")  # fmt: skip
    return {"conditions": conditions, "not_measured": skipped, "runs": runs}


def _gpu_option_run(model_cfg: dict[str, Any], smoke: bool, loss: str, impl: str,
                    compiled: bool, backend: str, chunk: int, block: int, micro: int,
                    steps: int, warmup: int, peak: float | None) -> dict[str, Any]:  # fmt: skip
    import gc

    import torch

    from llamagene.training.loss import use_chunked_loss
    from llamagene.training.model import LoraSettings, attach_lora, build_base_model

    device = torch.device("cuda" if not smoke else "cpu")
    bf16 = not smoke
    rows = -(-GPU_VOCAB // 64) * 64
    with device:
        base = build_base_model(None, model_cfg, 0, rows, torch.bfloat16 if bf16 else None)
    base.set_attn_implementation(impl)
    torch.manual_seed(0)
    new_ids = list(range(GPU_BASE_VOCAB, GPU_VOCAB))
    model = attach_lora(base, LoraSettings(), new_ids, GPU_EMBEDDING_TRAINING)
    model.config.use_cache = False
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # as the worker: fp32 master values
    if loss == "chunked":
        use_chunked_loss(model, chunk)
    total = sum(p.numel() for p in model.parameters())
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
    runner = torch.compile(model, backend=backend) if compiled else model
    batches = [_synthetic_batch(block, micro, seed, flat=impl != "sdpa", device=device)
               for seed in range(4)]  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = first_step = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = runner(**batches[step % len(batches)])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == 0:
            first_step = time.perf_counter() - first_step  # with compilation, if any
    final_loss = out.loss.item()  # waits for the GPU
    seconds = time.perf_counter() - start
    tokens_per_s = steps * block * micro / seconds
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    result = {
        "loss": loss, "attention": impl, "compile": compiled,
        "tokens_per_s": round(tokens_per_s, 1), "peak_gpu_memory_gb": round(peak_gb, 2),
        "first_step_s": round(first_step, 1), "final_loss": round(final_loss, 4),
        "parameters": total, "lora_parameters": lora,
    }  # fmt: skip
    result |= _mfu(tokens_per_s, _flops_per_token(model_cfg, block, total, lora), peak)
    del runner, model, base, optimizer, out, batches, trainable
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if compiled:
        torch._dynamo.reset()
    print(f"gpu: {loss} loss, {impl}, compile {'on' if compiled else 'off'}: "
          f"{tokens_per_s:,.0f} tokens/s, peak {peak_gb:.2f} GB, first step "
          f"{first_step:.1f} s{_mfu_text(result)}")  # fmt: skip
    return result


def _synthetic_batch(block: int, micro: int, seed: int, flat: bool, device: Any
                     ) -> dict[str, Any]:  # fmt: skip
    """Packed blocks as the corpus makes them: documents of 1-``block`` tokens whose positions
    restart, the label of each document's first token -100; ``flat`` joins the rows into one
    (what FlashAttention needs to keep documents apart)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, GPU_VOCAB, (micro, block), generator=gen)
    positions = torch.empty_like(ids)
    for row in range(micro):
        at = 0
        while at < block:
            length = int(torch.randint(1, block + 1, (1,), generator=gen))
            n = min(length, block - at)
            positions[row, at : at + n] = torch.arange(n)
            at += n
    labels = ids.clone()
    labels[positions == 0] = -100
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if flat:
        batch = {key: value.reshape(1, -1) for key, value in batch.items()}
    return {key: value.to(device) for key, value in batch.items()}


def _lora_parameters(model_cfg: dict[str, Any], r: int) -> int:
    """LoRA parameters of a LLaMA with rank ``r`` on every projection."""
    h, layers, inter = (model_cfg[k] for k in ("hidden_size", "num_hidden_layers",
                                               "intermediate_size"))  # fmt: skip
    kv = model_cfg["num_key_value_heads"] * h // model_cfg["num_attention_heads"]
    per_layer = 2 * (h + h) + 2 * (h + kv) + 3 * (h + inter)
    return r * per_layer * layers


def _flops_per_token(model_cfg: dict[str, Any], block: int, total: int, lora: int
                     ) -> dict[str, float]:  # fmt: skip
    """Training FLOPs per token. ``6n``: 6 x all parameters. ``work``: what LoRA training does:
    forward 2 per matmul weight (the blocks' projections, the adapters, the lm_head; an
    embedding lookup costs none), backward 2 per matmul weight for the activation gradients
    and 2 per trained matmul weight for the weight gradients (the adapters, and the whole
    lm_head, since its new rows are trained), plus attention 12 x layers x hidden x block
    (PaLM's count, fwd + bwd, without the causal or per-document halving)."""
    h, layers, inter = (model_cfg[k] for k in ("hidden_size", "num_hidden_layers",
                                               "intermediate_size"))  # fmt: skip
    kv = model_cfg["num_key_value_heads"] * h // model_cfg["num_attention_heads"]
    rows = -(-GPU_VOCAB // 64) * 64
    frozen = layers * (2 * h * h + 2 * h * kv + 3 * h * inter)
    matmul = frozen + lora + rows * h
    work = 4 * matmul + 2 * (lora + rows * h) + 12 * layers * h * block
    return {"6n": 6.0 * total, "work": float(work)}


def _mfu(tokens_per_s: float, flops: dict[str, float], peak: float | None) -> dict[str, Any]:
    if not peak:
        return {}
    return {f"mfu_{k}": round(tokens_per_s * v / (peak * 1e12), 4) for k, v in flops.items()}


def _mfu_text(result: dict[str, Any]) -> str:
    if "mfu_6n" not in result:
        return ""
    return f", MFU {_pct(result['mfu_6n'])} (6N) / {_pct(result['mfu_work'])} (LoRA's work)"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    raise SystemExit(main())
