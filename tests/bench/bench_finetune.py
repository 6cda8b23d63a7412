"""Benchmark fine-tuning batchings on GUE-length instruction rows: packed against padded.

Run from the repository root (the default run takes about 2.5 minutes on 2 CPU cores):

    .venv/bin/python tests/bench/bench_finetune.py [--rows 224] [--micro-batch 8] [--repeats 3]
                                                   [--hidden 128] [--tokenizer DIR] [--seed 0]
                                                   [--gpu-smoke] [--gpu-steps 20]
                                                   [--peak-tflops T] [--out results.json]

What it measures:

rows     GUE-length single-turn rows: random ACGT DNA (seeded) of each GUE group's length (EMP
         500 bp, prom_300 300, prom_core 70, tf 100, mouse 100, splice 400, covid 1,000), an
         equal number of rows per group, wrapped as ``Is <dna>SEQ</dna> a promoter? Answer yes
         or no.`` -> ``yes`` / ``no`` and encoded by :class:`llamagene.prompt_format.PromptFormat`
         over the merged tokenizer (``runs/demo/merge_vocab/tokenizer`` when it is there, else
         the demo's train_bpe + merge_vocab built in a temporary folder). Prints the row length
         distribution in tokens.
sanity   once: the mean loss of one micro batch, packed and padded, agrees to ~1e-5 (packed rows
         must not see each other: transformers' block-diagonal mask from restarting positions);
         a control shows how far it moves when the packed rows do see each other.
cpu      training steps (forward + backward + AdamW step) of a tiny LLaMA (``--hidden``, 2
         layers, 4 heads, vocabulary = the tokenizer's size rounded up to 64, sdpa attention,
         ``use_cache=False``, fp32) over the same rows, ``--micro-batch`` rows per step, in
         three batchings: packed (``PackedCollator``, rows in random order), padded in the same
         random order (``PaddedCollator``), and padded grouped by length (transformers'
         ``get_length_grouped_indices``, what ``group_by_length`` in the worker does, with
         mega-batches of 50 micro batches as on a real dataset; here all rows are one). One repeat
         is one pass over all rows in each batching; repeats alternate the batchings (rotating
         which goes first) to spread the machine's noise. Prints real (non-padding) tokens/s
         (median over repeats, with min-max), the padding share, and packed / padded ratios.
gpu      where CUDA is present: the same steps for a ~1.1B LLaMA (TinyLlama's shape: 22 layers,
         hidden 2048, 32 heads, 4 KV heads) with the tokenizer's vocabulary, full fine-tuning,
         fp32 master weights under bf16 autocast, fused AdamW, 32 rows per step; tokens/s, peak
         memory and MFU = (6 N + attention) x real tokens/s / peak bf16 FLOP/s, where N counts
         the matmul weights (the blocks and the lm_head, not the input embedding lookup) and
         attention is 12 L h x (mean own-row length); the peak comes from a table of device
         names or ``--peak-tflops``. Otherwise prints "gpu: skipped (no CUDA device)";
         ``--gpu-smoke`` runs the same code on the CPU with a tiny model, to check it, not to
         measure.

Figures printed here (a shared VM with 2 CPU cores, no GPU, torch 2.13.0+cpu, transformers
5.24.0, 2 torch threads, the ``runs/demo`` tokenizer of 39,998 pieces; the defaults: 224 rows,
8 rows per step, 3 repeats, hidden 128; 2 min 27 s in all; long lines wrapped here):

    rows: 224 (32+ per group), 23,038 tokens; length min 40 / median 91 / max 249 tokens
    rows: median tokens per group: EMP 135, prom_300 91, prom_core 42, tf 48, mouse 48,
          splice 113, covid 241
    sanity: mean loss of one batch of 8 rows: packed 10.6602974, padded 10.6602974,
            |diff| 0.0e+00 (ok: goal < 1e-5)
    sanity: control: the packed row with its rows seeing each other gives 10.6494293
            (|diff| 1.1e-02)
    cpu: ... tiny LLaMA {hidden 128, intermediate 336, 2 layers, 4 heads, 4 KV heads},
         vocab 40,000, 10.6M parameters, sdpa, fp32, AdamW; 8 rows/step, 3 alternating
         repeats of one pass over 224 rows
    cpu: packed                      1,948 real tokens/s (min 1,846, max 2,081),
         padding  0.0%, 823 real tokens/step
    cpu: padded, random order        1,034 real tokens/s (min 949, max 1,080),
         padding 52.1%, 823 real tokens/step
    cpu: padded, grouped by length   1,820 real tokens/s (min 1,690, max 2,120),
         padding  0.9%, 823 real tokens/step
    cpu: packed / padded random: 1.88x (medians; within each repeat: 1.80, 1.95, 2.01)
    cpu: packed / padded grouped: 1.07x (medians; within each repeat: 1.07, 1.09, 0.98)
    cpu: section took 142 s
    gpu: skipped (no CUDA device)

At this size the 40,000 x 128 lm_head is most of the work, so the time follows the tokens
computed, padding included: packing gains what padding in random order wastes (52% of the
tokens, ~1.9x), and little over grouping by length (<1% padding on one sorted mega-batch).

Every figure is printed with the conditions it ran under and kept in ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llamagene.prompt_format import PromptFormat, single_turn  # noqa: E402
from llamagene.training.collate import PackedCollator, PaddedCollator, padding_share  # noqa: E402

DEMO_TOKENIZER = REPO / "runs" / "demo" / "merge_vocab" / "tokenizer"
#: GUE's groups and their sequence lengths in bp (covid's genome pieces counted as 1,000).
GUE_LENGTHS = {"EMP": 500, "prom_300": 300, "prom_core": 70, "tf": 100, "mouse": 100,
               "splice": 400, "covid": 1000}  # fmt: skip
PROMPT = "Is <dna>{}</dna> a promoter? Answer yes or no."
BATCHINGS = ("packed", "padded, random order", "padded, grouped by length")
#: ~1.1B parameters (TinyLlama's shape); the vocabulary is the tokenizer's.
GPU_MODEL = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
             "num_attention_heads": 32, "num_key_value_heads": 4}  # fmt: skip
SMOKE_MODEL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
#: Dense bf16 peak of one GPU, TFLOP/s (vendor datasheets); the first name found in the
#: device's name wins, so "H100 PCIe" comes before "H100" (SXM).
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "B200": 2250.0,
               "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}  # fmt: skip

Row = dict[str, list[int]]
Batch = dict[str, Any]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=224, help="rows in all (equal per group)")
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per training step")
    parser.add_argument("--repeats", type=int, default=3, help="passes per batching")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the CPU model")
    parser.add_argument("--tokenizer", type=Path, help="a merged tokenizer folder")
    parser.add_argument("--gpu-smoke", action="store_true", help="run 'gpu' on the CPU, tiny")
    parser.add_argument("--gpu-steps", type=int, default=20, help="timed steps per batching")
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's bf16 peak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    results: dict[str, Any] = {
        "machine": _machine(),
        "conditions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "rows": args.rows,
            "micro_batch": args.micro_batch,
            "repeats": args.repeats,
        },
    }
    print(f"machine: {results['machine']}")
    tokenizer = _tokenizer(args.tokenizer)
    fmt = PromptFormat.from_dir(tokenizer)
    vocab = -(-fmt.tokenizer.get_vocab_size() // 64) * 64
    results["conditions"] |= {"tokenizer": str(tokenizer), "model_vocab": vocab}
    print(f"tokenizer: {tokenizer} ({fmt.tokenizer.get_vocab_size():,} pieces, model rows "
          f"{vocab:,})")  # fmt: skip
    rows, groups = make_rows(fmt, args.rows, args.seed)
    results["rows"] = describe_rows(rows, groups)
    results["sanity"] = check_loss(rows, fmt.eos_id, vocab, args.micro_batch)
    results["cpu"] = bench_cpu(rows, fmt.eos_id, vocab, args)
    results["gpu"] = bench_gpu(rows, fmt.eos_id, vocab, args)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.out}")
    return 0


# ---------------------------------------------------------------------------------- helpers
def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cores = len(os.sched_getaffinity(0))
    return f"{platform.node()}: {cores} CPU cores, {gpu}, torch {torch.__version__}"


def _tokenizer(given: Path | None) -> Path:
    """The merged tokenizer: ``given``, the demo run's, or the demo's train_bpe + merge_vocab
    built in a temporary folder."""
    if given is not None:
        return given
    if (DEMO_TOKENIZER / "tokenizer.json").is_file():
        return DEMO_TOKENIZER
    from llamagene.cli import DEMO_PIPELINE
    from llamagene.pipeline import load_pipeline

    run_dir = Path(tempfile.mkdtemp(prefix="bench_finetune_")) / "run"
    print(f"building the demo tokenizer in {run_dir} ...")
    load_pipeline(DEMO_PIPELINE, [f"run_dir={run_dir}"]).run(only=["train_bpe", "merge_vocab"])
    return run_dir / "merge_vocab" / "tokenizer"


def make_rows(fmt: PromptFormat, total: int, seed: int) -> tuple[list[Row], list[str]]:
    """``total`` rows, an equal share per GUE group (in turn), and each row's group."""
    rng = random.Random(seed)
    names = list(GUE_LENGTHS)
    groups = [names[i % len(names)] for i in range(total)]
    conversations = [
        single_turn(PROMPT.format("".join(rng.choices("ACGT", k=GUE_LENGTHS[g]))),
                    rng.choice(("yes", "no")))
        for g in groups
    ]  # fmt: skip
    encoded = fmt.encode_many(conversations, markup=[True] * total)
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded], groups


def describe_rows(rows: Sequence[Row], groups: Sequence[str]) -> dict[str, Any]:
    lengths = [len(r["input_ids"]) for r in rows]
    per_group = {
        g: int(statistics.median(n for n, h in zip(lengths, groups, strict=True) if h == g))
        for g in GUE_LENGTHS
    }
    figures = {"rows": len(rows), "tokens": sum(lengths), "min": min(lengths),
               "median": statistics.median(lengths), "max": max(lengths),
               "median_per_group": per_group}  # fmt: skip
    print(f"rows: {len(rows)} ({len(rows) // len(GUE_LENGTHS)}+ per group), {sum(lengths):,} "
          f"tokens; length min {figures['min']} / median {figures['median']:g} / max "
          f"{figures['max']} tokens")  # fmt: skip
    print("rows: median tokens per group: "
          + ", ".join(f"{g} {n}" for g, n in per_group.items()))  # fmt: skip
    return figures


def batch_orders(rows: Sequence[Row], micro: int, seed: int) -> dict[str, list[list[int]]]:
    """Row indices of every micro batch, per batching (packed and padded share one order)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(rows), generator=generator).tolist()
    lengths = [len(r["input_ids"]) for r in rows]
    # mega-batches of 50 micro batches: transformers' choice on any dataset of 200+ micro
    # batches (on fewer it makes 4 mega-batches, too small to group anything here)
    grouped = get_length_grouped_indices(lengths, micro, mega_batch_mult=50, generator=generator)

    def chunks(order: list[int]) -> list[list[int]]:
        return [order[i : i + micro] for i in range(0, len(order), micro)]

    return {BATCHINGS[0]: chunks(shuffled), BATCHINGS[1]: chunks(shuffled),
            BATCHINGS[2]: chunks(grouped)}  # fmt: skip


def collate(rows: Sequence[Row], order: list[list[int]], batching: str, pad_id: int) -> list[Batch]:
    collator: Callable[[Sequence[Row]], Batch]
    collator = PackedCollator() if batching == "packed" else PaddedCollator(pad_id)
    return [collator([rows[i] for i in batch]) for batch in order]


def tiny_llama(vocab: int, shape: dict[str, int], seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, use_cache=False, tie_word_embeddings=False,
                         max_position_embeddings=4096, attn_implementation="sdpa",
                         **shape)  # fmt: skip
    return LlamaForCausalLM(config)


def cpu_shape(hidden: int) -> dict[str, int]:
    return {"hidden_size": hidden, "intermediate_size": hidden * 8 // 3 // 8 * 8,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}  # fmt: skip


def train_steps(model: Any, optimizer: Any, batches: Sequence[Batch], device: Any,
                autocast: Any | None) -> tuple[float, float]:  # fmt: skip
    """Forward + backward + optimizer step on each batch; (seconds, mean loss)."""
    import contextlib

    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    losses = []
    sync()
    start = time.perf_counter()
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        context = (
            torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
        )
        with context:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    sync()
    seconds = time.perf_counter() - start
    return seconds, float(torch.stack(losses).float().mean())


def real_tokens(batch: Batch) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def all_tokens(batch: Batch) -> int:
    return int(batch["input_ids"].numel())


# ---------------------------------------------------------------------------------- sections
def check_loss(rows: Sequence[Row], pad_id: int, vocab: int, micro: int) -> dict[str, Any]:
    """The mean loss of one micro batch (of mixed lengths), packed and padded, in fp32."""
    import torch

    model = tiny_llama(vocab, cpu_shape(64)).eval()
    batch = [rows[i] for i in range(min(micro, len(rows)))]  # groups in turn: mixed lengths
    with torch.no_grad():
        packed = float(model(**PackedCollator()(batch)).loss)
        padded = float(model(**PaddedCollator(pad_id)(batch)).loss)
        # control: an attention mask turns transformers' packed detection off, so the packed
        # row gets one plain causal mask and its rows see each other
        joined = PackedCollator()(batch)
        leaky = float(model(**joined, attention_mask=torch.ones_like(joined["input_ids"])).loss)
    diff = abs(packed - padded)
    ok = diff < 1e-5
    verdict = "ok" if ok else "MISMATCH"
    print(f"sanity: mean loss of one batch of {len(batch)} rows: packed {packed:.7f}, padded "
          f"{padded:.7f}, |diff| {diff:.1e} ({verdict}: goal < 1e-5)")  # fmt: skip
    print(f"sanity: control: the packed row with its rows seeing each other gives {leaky:.7f} "
          f"(|diff| {abs(leaky - padded):.1e})")  # fmt: skip
    return {"packed_loss": packed, "padded_loss": padded, "abs_diff": diff, "ok": ok,
            "cross_row_attention_loss": leaky}  # fmt: skip


def compare(
    rows: Sequence[Row], pad_id: int, vocab: int, shape: dict[str, int], micro: int,
    repeats: int, steps: int | None, device: Any, autocast: Any | None, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Each batching's real tokens/s over ``repeats`` alternating passes (each pass: every
    micro batch, or the first ``steps``), after one warm-up step each."""
    import torch

    orders = batch_orders(rows, micro, seed)
    # one model and optimizer for all (speed does not depend on the weights; one copy of a
    # 1B model and its AdamW state is ~18 GB)
    model = tiny_llama(vocab, shape).to(device).train()
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **fused)
    figures: dict[str, Any] = {}
    runs: dict[str, list[Batch]] = {}
    for name in BATCHINGS:
        order = orders[name]
        if steps:  # the first ``steps`` micro batches, going round the rows again if need be
            order = (order * -(-steps // len(order)))[:steps]
        batches = collate(rows, order, "packed" if name == "packed" else "padded", pad_id)
        train_steps(model, optimizer, batches[:1], device, autocast)  # warm-up
        runs[name] = batches
        lengths = [[len(rows[i]["input_ids"]) for i in batch] for batch in order]
        real = sum(real_tokens(b) for b in batches)
        figures[name] = {
            "steps": len(batches),
            "real_tokens": real,
            "all_tokens": sum(all_tokens(b) for b in batches),
            # packed rows carry no padding; padded: the collate module's own measure
            "padding_share": 0.0 if name == "packed" else round(padding_share(lengths), 4),
            "tokens_per_step": round(real / len(batches), 1),
            "seconds": [],
        }
    for repeat in range(repeats):
        turn = BATCHINGS[repeat % 3 :] + BATCHINGS[: repeat % 3]
        for name in turn:
            seconds, loss = train_steps(model, optimizer, runs[name], device, autocast)
            figures[name]["seconds"].append(round(seconds, 3))
            figures[name]["last_loss"] = round(loss, 4)
    for name in BATCHINGS:
        rates = [figures[name]["real_tokens"] / s for s in figures[name]["seconds"]]
        figures[name]["real_tokens_per_s"] = round(statistics.median(rates), 1)
        figures[name]["real_tokens_per_s_min_max"] = [round(min(rates), 1), round(max(rates), 1)]
    packed = figures[BATCHINGS[0]]
    for key, name in (("random", BATCHINGS[1]), ("grouped", BATCHINGS[2])):
        other = figures[name]
        figures[f"packed_over_padded_{key}"] = round(
            packed["real_tokens_per_s"] / other["real_tokens_per_s"], 3
        )
        # the same ratio within each repeat (neighbours in time share the machine's load)
        figures[f"packed_over_padded_{key}_per_repeat"] = [
            round(packed["real_tokens"] * b / (a * other["real_tokens"]), 3)
            for a, b in zip(packed["seconds"], other["seconds"], strict=True)
        ]
    return figures


def print_compare(tag: str, figures: dict[str, Any]) -> None:
    for name in BATCHINGS:
        f = figures[name]
        low, high = f["real_tokens_per_s_min_max"]
        print(f"{tag}: {name:<26} {f['real_tokens_per_s']:>10,.0f} real tokens/s "
              f"(min {low:,.0f}, max {high:,.0f}), padding {100 * f['padding_share']:5.1f}%, "
              f"{f['tokens_per_step']:,.0f} real tokens/step")  # fmt: skip
    for key in ("random", "grouped"):
        each = ", ".join(f"{r:.2f}" for r in figures[f"packed_over_padded_{key}_per_repeat"])
        print(f"{tag}: packed / padded {key}: {figures[f'packed_over_padded_{key}']:.2f}x "
              f"(medians; within each repeat: {each})")  # fmt: skip


def bench_cpu(rows: Sequence[Row], pad_id: int, vocab: int, args: Any) -> dict[str, Any]:
    import torch
    import transformers

    shape = cpu_shape(args.hidden)
    n_params = sum(p.numel() for p in tiny_llama(vocab, shape).parameters())
    print(f"cpu: {torch.get_num_threads()} threads, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; tiny LLaMA {shape}, vocab {vocab:,}, "
          f"{n_params / 1e6:.1f}M parameters, sdpa, fp32, AdamW; {args.micro_batch} rows/step, "
          f"{args.repeats} alternating repeats of one pass over {len(rows)} rows")  # fmt: skip
    start = time.perf_counter()
    figures = compare(rows, pad_id, vocab, shape, args.micro_batch, args.repeats, None,
                      torch.device("cpu"), None, args.seed)  # fmt: skip
    print_compare("cpu", figures)
    print(f"cpu: section took {time.perf_counter() - start:.0f} s")
    figures |= {"model": shape, "parameters": n_params, "device": "cpu",
                "threads": torch.get_num_threads()}  # fmt: skip
    return figures


def bench_gpu(rows: Sequence[Row], pad_id: int, vocab: int, args: Any) -> dict[str, Any]:
    import torch

    smoke = args.gpu_smoke
    if not torch.cuda.is_available() and not smoke:
        print("gpu: skipped (no CUDA device)")
        return {"skipped": "no CUDA device"}
    on_gpu = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if on_gpu else "cpu")
    shape = GPU_MODEL if on_gpu else SMOKE_MODEL
    micro, steps, repeats = (32, args.gpu_steps, 3) if on_gpu else (4, 3, 1)
    name = torch.cuda.get_device_name(0) if on_gpu else "CPU (smoke)"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    figures = compare(rows, pad_id, vocab, shape, micro, repeats, steps, device,
                      torch.bfloat16, args.seed)  # fmt: skip
    h, layers, inter = (shape[k] for k in ("hidden_size", "num_hidden_layers",
                                           "intermediate_size"))  # fmt: skip
    kv = shape["num_key_value_heads"] * h // shape["num_attention_heads"]
    # matmul weights: q, o (h x h), k, v (h x kv), gate, up, down (h x inter), the lm_head
    matmul = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + vocab * h
    lengths = [len(r["input_ids"]) for r in rows]
    own_context = sum(n * n for n in lengths) / sum(lengths)  # token-weighted row length
    flops_per_token = 6 * matmul + 12 * layers * h * own_context
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if smoke and not peak:
        peak = 1.0  # nominal, so that the MFU line is exercised
    print_compare("gpu", figures)
    memory = round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None
    total = matmul + vocab * h
    print(f"gpu: {name}: LLaMA {shape}, vocab {vocab:,}, {total / 1e6:,.1f}M parameters "
          f"({matmul / 1e6:,.1f}M in matmuls), bf16 autocast, {micro} rows/step, "
          f"{steps} steps x {repeats} repeats, peak memory "
          f"{'n/a' if memory is None else f'{memory} GB'}")  # fmt: skip
    for batching in BATCHINGS:
        rate = figures[batching]["real_tokens_per_s"]
        if peak:
            mfu = rate * flops_per_token / (peak * 1e12)
            figures[batching]["mfu"] = round(mfu, 4)
            print(f"gpu: {batching:<26} MFU {100 * mfu:5.1f}% of {peak:g} TFLOP/s "
                  f"(6N + attention, real tokens only)")  # fmt: skip
        else:
            print(f"gpu: {batching}: MFU unknown (no peak for {name!r}; pass --peak-tflops)")
    figures |= {"device": name, "smoke": smoke, "model": shape, "vocab": vocab,
                "parameters": total, "matmul_parameters": matmul, "micro_batch": micro,
                "flops_per_token": flops_per_token, "peak_tflops": peak,
                "peak_gpu_memory_gb": memory}  # fmt: skip
    return figures


if __name__ == "__main__":
    raise SystemExit(main())
