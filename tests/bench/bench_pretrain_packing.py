"""Benchmark packed pretraining blocks: attention across documents (old) vs per document (new).

Run from the repository root (``--quick`` is a ~1 minute smoke test):

    .venv/bin/python tests/bench/bench_pretrain_packing.py [--quick] [--repeats 5] [--steps 3]
        [--model tiny --model small] [--attn sdpa --attn eager] [--threads N] [--device cpu]
        [--mean-doc-tokens 120] [--out results.json]

Training tokens/s of forward + backward (every weight trained, float32 on the CPU, bf16 on a
GPU) of a LLaMA on the same packed blocks fed two ways, side by side in one process:

old  ``input_ids``, ``labels``, an ``attention_mask`` of ones and no position ids (0..n-1):
     one causal mask over the block, so documents attend to the documents before them.
new  what ``PackedBlocks`` gives now: ``input_ids``, ``labels`` and ``position_ids`` that
     restart at each document, no attention mask, ``use_cache=False``: transformers builds a
     block-diagonal causal mask (sdpa then gets an explicit mask instead of ``is_causal``).

The blocks come from a synthetic ``.bin`` written like the corpus (``[bos] tokens [eos]``
documents of random length, mean ``--mean-doc-tokens``, packed back to back, the last block
padded) and are read through ``PackedBlocks``; speed does not depend on which token ids. After
a warm-up step each way, every batch is run both ways in turn (old then new, then new then old,
...), ``--steps`` batches ``--repeats`` times; tokens/s per mode is from the median step time,
and new/old is the median of the paired ratios (the same batch, seconds apart), which holds up
when other work on the machine comes and goes. Models:

tiny   hidden 64, 2 layers, 4 heads (2 kv), vocabulary 32,768, block 256, micro batch 4
small  hidden 256, 4 layers, 8 heads (4 kv), intermediate 688, vocabulary 32,768, block 512,
       micro batch 4 (the shape bench_pretrain.py trains on the CPU)

Every figure is printed with the conditions it ran under (device, threads, versions) and kept
in ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llamagene.training.corpus import PackedBlocks  # noqa: E402

BOS, EOS = 1, 2
MODELS: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 32768,
             "block": 256, "micro_batch": 4},
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
              "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 32768,
              "block": 512, "micro_batch": 4},
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 1 step: a smoke test")
    parser.add_argument("--model", action="append", choices=sorted(MODELS))
    parser.add_argument("--attn", action="append", choices=["sdpa", "eager"])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per mode")
    parser.add_argument("--steps", type=int, default=3, help="forward+backward steps per repeat")
    parser.add_argument("--mean-doc-tokens", type=int, default=120, help="mean document length")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    repeats, steps = (1, 1) if args.quick else (args.repeats, args.steps)
    results: dict[str, Any] = {"conditions": _conditions(args.device), "runs": []}
    print("conditions: " + ", ".join(f"{k} {v}" for k, v in results["conditions"].items()))
    print(f"{repeats} repeats x {steps} batches, each batch both ways in turn; medians\n")
    with tempfile.TemporaryDirectory(prefix="bench_packing_") as tmp:
        for name in args.model or ["tiny", "small"]:
            for attn in args.attn or ["sdpa", "eager"]:
                run = bench(name, attn, Path(tmp), repeats, steps, args)
                results["runs"].append(run)
    print(f"\n{'model':6} {'attn':6} {'old tok/s':>10} {'new tok/s':>10} {'new/old':>8}")
    for run in results["runs"]:
        print(f"{run['model']:6} {run['attn']:6} {run['old']['median']:>10,.0f} "
              f"{run['new']['median']:>10,.0f} {run['ratio']:>8.3f}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.out}")
    return 0


def _conditions(device: str) -> dict[str, Any]:
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    return {
        "machine": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": gpu or "cpu",
        "dtype": "bfloat16" if gpu else "float32",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def packed_blocks(folder: Path, block: int, blocks: int, mean: int, vocab: int) -> PackedBlocks:
    """``blocks`` blocks of ``[bos] tokens [eos]`` documents (lengths 4..2*mean), last padded."""
    import numpy as np

    rng = np.random.default_rng(0)
    docs, total = [], 0
    while total < block * blocks - block // 3:  # the last block ends about 2/3 full
        n = int(rng.integers(4, 2 * mean + 1))
        docs.append(np.concatenate([[BOS], rng.integers(3, vocab, n - 2), [EOS]]))
        total += n
    tokens = np.concatenate(docs)[: block * blocks - block // 3].astype(np.uint32)
    real = len(tokens)
    tokens = np.concatenate([tokens, np.full(-real % block, EOS, np.uint32)])
    path = folder / f"train-{block}-{mean}.bin"
    tokens.tofile(path)
    return PackedBlocks(path, block, len(tokens) // block, real, bos_id=BOS)


def bench(
    name: str, attn: str, folder: Path, repeats: int, steps: int, args: argparse.Namespace
) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(MODELS[name])
    block, micro = shape.pop("block"), shape.pop("micro_batch")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=block, use_cache=False,
                         attn_implementation=attn)  # fmt: skip
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).train()
    data = packed_blocks(folder, block, micro * steps, args.mean_doc_tokens, shape["vocab_size"])
    start = time.perf_counter()
    items = [data[i] for i in range(len(data))]
    item_us = (time.perf_counter() - start) / len(items) * 1e6
    batches = []
    for s in range(steps):
        rows = items[s * micro : (s + 1) * micro]
        batch = {k: torch.stack([r[k] for r in rows]).to(device) for k in rows[0]}
        batches.append(batch)
    segments = sum(int((b["position_ids"] == 0).sum()) for b in batches) / (steps * micro)
    feeds = {
        "old": [{"input_ids": b["input_ids"], "labels": b["labels"],
                 "attention_mask": torch.ones_like(b["input_ids"])} for b in batches],
        "new": batches,
    }  # fmt: skip

    def step(mode: str, feed: dict[str, torch.Tensor]) -> float:
        """Seconds of one forward + backward."""
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        model(**feed).loss.backward()
        sync()
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return seconds

    for mode in ("old", "new"):  # warm-up: one step each
        step(mode, feeds[mode][0])
    seconds: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(repeats):  # each batch both ways in turn, the order alternating
        for s in range(steps):
            for mode in ("old", "new") if (r + s) % 2 == 0 else ("new", "old"):
                seconds[mode].append(step(mode, feeds[mode][s]))
    with torch.no_grad():
        model.eval()
        losses = {mode: float(model(**feeds[mode][0]).loss) for mode in feeds}
    result: dict[str, Any] = {"model": name, "attn": attn, "block": block, "micro_batch": micro,
                              "segments_per_block": round(segments, 2),
                              "getitem_us_per_block": round(item_us, 1)}  # fmt: skip
    tokens = micro * block
    for mode, values in seconds.items():
        result[mode] = {"median": tokens / statistics.median(values), "min": tokens / max(values),
                        "max": tokens / min(values), "loss": losses[mode]}  # fmt: skip
    # the same batch both ways, one after the other: robust to the machine's load drifting
    paired = [o / n for o, n in zip(seconds["old"], seconds["new"], strict=True)]
    result["ratio"] = statistics.median(paired)
    result["ratio_of_medians"] = result["new"]["median"] / result["old"]["median"]
    print(
        f"{name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), {attn}, "
        f"block {block} x micro batch {micro}, {segments:.1f} segments per block, "
        f"PackedBlocks[i] {item_us:.0f} us"
    )
    for mode in ("old", "new"):
        f = result[mode]
        print(f"  {mode}: {f['median']:>9,.0f} tokens/s (min {f['min']:,.0f}, max {f['max']:,.0f})"
              f"  loss of the first batch {f['loss']:.4f}")  # fmt: skip
    print(
        f"  new/old: {result['ratio']:.3f} (median of {len(paired)} paired steps; "
        f"ratio of the medians {result['ratio_of_medians']:.3f})"
    )
    return result


if __name__ == "__main__":
    raise SystemExit(main())
