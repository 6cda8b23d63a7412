"""Benchmark the ``pretrain`` stage: data preparation, packing, training speed, embedding init.

Run from the repository root (``--quick`` is a ~2 minute smoke test of every section):

    .venv/bin/python tests/bench/bench_pretrain.py [--quick] [--section NAME ...]
                                                   [--data-mb 40] [--out results.json]

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
gpu      tokens/s, peak memory and MFU for a ~1.1B-parameter LLaMA (22 layers, hidden 2048, the
         ~91.6k vocabulary of llama-gene), LoRA r=8 on every projection + embedding copies,
         bf16, one GPU. Goal: MFU >= 35% on an H100. ``--gpu-smoke`` runs the same code on the
         CPU with a tiny config, to check it, not to measure.

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

PYHMMER_SEQS = "pkg://pyhmmer/tests/data/seqs/"
DNA_FILES = ("1390.SAMEA104415756.OFHT01000022.fna", "CP040672.1.genes_100.fna")
PROTEIN_FILE = "938293.PRJEB85.HG003687.faa"
DEMO_RECIPE = REPO / "data_recipes" / "demo_pretrain.yaml"
SMALL_MODEL = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
               "num_attention_heads": 8, "num_key_value_heads": 4}  # fmt: skip
#: ~1.1B parameters (TinyLlama's shape) with llama-gene's 91,598-token merged vocabulary.
GPU_MODEL = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
             "num_attention_heads": 32, "num_key_value_heads": 4}  # fmt: skip
GPU_VOCAB = 91_598
#: Dense bf16 peak of one GPU, TFLOP/s (vendor datasheets).
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "A100": 312.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--section", action="append", choices=["prepare", "train", "init", "gpu"])
    parser.add_argument("--data-mb", type=float, default=40.0, help="MB of DNA for 'prepare'")
    parser.add_argument("--gpu-smoke", action="store_true", help="run 'gpu' on the CPU, tiny")
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's bf16 peak")
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
    tokenizer_run = _demo_tokenizer(work / "tokenizer_run")
    if "prepare" in sections:
        mb = 2.0 if args.quick else args.data_mb
        results["prepare"] = bench_prepare(work / "prepare", tokenizer_run, mb)
    if "train" in sections:
        results["train"] = bench_train(work / "train", tokenizer_run, steps=4 if args.quick else 12)
    if "init" in sections:
        results["init"] = bench_init(work / "init", tokenizer_run, quick=args.quick)
    if "gpu" in sections:
        results["gpu"] = bench_gpu(work / "gpu", args.gpu_smoke, args.peak_tflops)
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


def bench_gpu(work: Path, smoke: bool, peak_override: float | None) -> dict[str, Any]:
    import numpy as np
    import torch

    from llamagene.training.spec import ModelSpec, TrainSpec
    from llamagene.training.worker import train

    if not torch.cuda.is_available() and not smoke:
        print("gpu: skipped (no CUDA device; --gpu-smoke checks the code on the CPU)")
        return {"skipped": "no CUDA device"}
    model_cfg = GPU_MODEL if not smoke else {"hidden_size": 64, "intermediate_size": 128,
                                             "num_hidden_layers": 2, "num_attention_heads": 4,
                                             "num_key_value_heads": 2}  # fmt: skip
    block, micro, steps = (1024, 8, 30) if not smoke else (64, 2, 4)
    work.mkdir(parents=True, exist_ok=True)
    # Speed does not depend on which tokens: a synthetic corpus and tokenizer record suffice
    tok_dir = work / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    (tok_dir / "llamagene_tokenizer.json").write_text(
        json.dumps({"base_vocab_size": 32000, "vocab_size": GPU_VOCAB})
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
        model=ModelSpec(
            None,
            model_cfg,
            0,
            str(tok_dir),
            "mean",
            "modules_to_save",
            {"r": 8, "alpha": 32, "dropout": 0.05},
        ),
        train={
            "max_steps": steps,
            "micro_batch_size": micro,
            "global_batch_size": micro,
            "precision": "bf16" if not smoke else "fp32",
            "gradient_checkpointing": False,
            "log_every_steps": 5 if not smoke else 1,
            "eval_every_steps": 10_000,
            "save_every_steps": 10_000,
        },
        corpus_dir=str(corpus_dir),
        work_dir=str(work / "run"),
    )
    figures = train(spec)
    history = [
        json.loads(x) for x in (work / "run" / "logs" / "metrics.jsonl").read_text().splitlines()
    ]
    rates = [h["tokens_per_s"] for h in history if "tokens_per_s" in h][1:]  # drop warm-up
    tokens_per_s = sum(rates) / len(rates) if rates else figures["tokens_per_s"]
    h, layers, inter = (model_cfg[k] for k in ("hidden_size", "num_hidden_layers",
                                               "intermediate_size"))  # fmt: skip
    kv = model_cfg["num_key_value_heads"] * h // model_cfg["num_attention_heads"]
    rows = -(-GPU_VOCAB // 64) * 64
    total, trainable = figures["total_parameters"], figures["trainable_parameters"]
    # FLOPs per token. Matmul weights: the blocks' projections and the lm_head (an embedding
    # lookup costs none). Forward 2N, backward 2N for activation gradients, and 2 per *trainable*
    # matmul weight for weight gradients (LoRA + the lm_head copy; not the frozen base, and
    # not the input-embedding copy, whose gradient is a scatter). Attention: 12 * L * h * T.
    matmul = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + rows * h
    attention = 12 * layers * h * block
    lora_flops = 4 * matmul + 2 * (trainable - rows * h) + attention
    full_flops = 6 * matmul + attention  # the usual 6N convention, as if every weight trained
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke)"
    peak = peak_override or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    result = {
        "device": name, "model": model_cfg, "vocab": GPU_VOCAB, "block_size": block,
        "micro_batch": micro, "parameters": total, "trainable_parameters": trainable,
        "tokens_per_s": round(tokens_per_s, 1), "peak_gpu_memory_gb": figures["peak_gpu_memory_gb"],
    }  # fmt: skip
    if peak:
        result["mfu_lora_flops"] = round(tokens_per_s * lora_flops / (peak * 1e12), 4)
        result["mfu_6n_convention"] = round(tokens_per_s * full_flops / (peak * 1e12), 4)
    print(f"gpu: {name}: {tokens_per_s:,.0f} tokens/s, peak memory "
          f"{figures['peak_gpu_memory_gb']} GB, {total / 1e9:.2f}B parameters")  # fmt: skip
    if peak:
        print(f"gpu: MFU {100 * result['mfu_lora_flops']:.1f}% counting LoRA training FLOPs "
              f"(4N + 2N_trainable + attention), {100 * result['mfu_6n_convention']:.1f}% by the "
              f"6N convention; peak {peak} TFLOP/s (goal >= 35% on H100)")  # fmt: skip
    return result


if __name__ == "__main__":
    raise SystemExit(main())
