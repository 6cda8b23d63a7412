"""Benchmark llamagene's tokenizer stages (train_bpe, merge_vocab) on real genomes and proteins.

Run (from the repository root; ``--quick`` is a < 1 minute smoke test):

    .venv/bin/python tests/bench/bench_tokenizer.py [--quick] [--train-mb 100] [--work-dir DIR]
                                                    [--heldout FASTA] [--out results.json]

Real DNA comes from the Debian package ``ragout-examples`` (``apt-get install -y
ragout-examples``: bacterial reference genomes under /usr/share/doc/ragout/examples); without it
the script falls back to pyhmmer's test contig. Proteins are pyhmmer's 2,100 test proteins. The
pipelines run through llamagene itself (a temporary pipeline YAML per measurement). Figures:

1. bases/token on 300 bp windows of a held-out genome (its species is left out of training) for
   the base tokenizer, the DNA-only model and the merged fast tokenizer.
   Goal: merged (without the leading dummy-prefix token) within 1% of DNA-only.
2. residues/token on 10% held-out proteins: base, protein-only, merged.
3. encode throughput (Mbp of sequence per second) of the merged fast tokenizer and of
   SentencePiece (DNA-only model; merged tokenizer.model) on the same DNA windows.
4. train_bpe wall time and peak RSS on ``--train-mb`` Mbp of DNA with 30,000 pieces, real genomes
   topped up with a seeded order-5 Markov chain fitted on them.
   Goal: under 3 minutes and 8 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import yaml

from llamagene.alphabets import SequenceKind, to_model_text
from llamagene.config import resolve_package_path
from llamagene.pipeline import load_pipeline
from llamagene.sequences import SequencePolicy, iter_windows

RAGOUT = Path("/usr/share/doc/ragout/examples")
BASE = "pkg://mistral_common/data/tokenizer.model.v1"
CONTIG = "pkg://pyhmmer/tests/data/seqs/1390.SAMEA104415756.OFHT01000022.fna"
PROTEINS = "pkg://pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa"
VENV_BIN = Path(sys.executable).parent
CORES = 2  # the train_bpe goal is stated for 2 cores
log = logging.getLogger("bench")


def windows(paths: list[Path], kind: SequenceKind, length: int, min_len: int) -> list[str]:
    """Normalised windows of ``length`` residues (llamagene's own FASTA reader)."""
    return [w.text for w in iter_windows(paths, SequencePolicy(kind), length, min_len)]


def write_fasta(path: Path, records: list[str], prefix: str) -> Path:
    with path.open("w") as out:
        for i, seq in enumerate(records):
            lines = "\n".join(seq[j : j + 80] for j in range(0, len(seq), 80))
            out.write(f">{prefix}_{i}\n{lines}\n")
    return path


def run_pipeline(work: Path, name: str, stages: dict[str, Any]) -> Path:
    """Write ``<work>/<name>.yaml`` and run it with llamagene; return its run_dir."""
    run_dir = work / f"run_{name}"
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(run_dir), "stages": stages}))
    load_pipeline(path).run()
    return run_dir


def dna_data(work: Path, heldout: Path | None) -> tuple[list[Path], list[Path], str]:
    """(training files, held-out files, description). Falls back to pyhmmer's contig."""
    refs = sorted(RAGOUT.glob("*/references/*.fasta.gz"))
    if refs:
        held = heldout or RAGOUT / "E.Coli/references/MG1655-K12.fasta.gz"
        train = [p for p in refs if p.parent != held.parent]  # leave out the whole species
        return train, [held], f"ragout-examples, held out {held.name} (and its species)"
    print("ragout-examples is not installed: `apt-get install -y ragout-examples` for real "
          "bacterial genomes; falling back to pyhmmer's 0.4 Mbp contig (80/20 split)")  # fmt: skip
    wins = windows([resolve_package_path(CONTIG)], "dna", 300, 300)
    cut = len(wins) * 4 // 5
    fit = write_fasta(work / "contig_train.fa", ["".join(wins[:cut])], "train")
    out = write_fasta(work / "contig_heldout.fa", ["".join(wins[cut:])], "heldout")
    return [fit], [out], "pyhmmer contig: first 80% trains, last 20% held out"


def per_token(
    seqs: list[str], kind: SequenceKind, base: Any, only: Any, fast: Any
) -> dict[str, Any]:
    """Characters per token for base / sequence-only / merged (with and without lone '▁')."""
    chars = sum(map(len, seqs))
    ids = fast([to_model_text(s, kind) for s in seqs], add_special_tokens=False)["input_ids"]
    lone = fast.convert_tokens_to_ids("▁")
    merged = sum(map(len, ids))
    prefix = sum(1 for row in ids if row[:1] == [lone])
    return {
        "items": len(seqs),
        "chars": chars,
        "base": chars / sum(map(len, base.encode(seqs))),
        "only": chars / sum(map(len, only.encode(seqs))),
        "merged_with_prefix": chars / merged,
        "merged_without_prefix": chars / (merged - prefix),
        "lone_prefix_tokens": prefix,
    }


def timed(fn: Any, *args: Any, repeats: int = 3, **kwargs: Any) -> float:
    """Best wall time of ``repeats`` calls."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


def fit_markov(paths: list[Path], k: int) -> tuple[np.ndarray, dict[Path, int]]:
    """Counts of (k+1)-mers over ACGT (shape 4**k x 4), and real bases per file."""
    lut = np.full(256, 4, dtype=np.int64)
    for code, letter in enumerate(b"ACGT"):
        lut[letter] = lut[letter + 32] = code
    counts = np.zeros(4 ** (k + 1), dtype=np.int64)
    sizes: dict[Path, int] = {}
    for path in paths:
        opener: Any = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            lines = handle.read().split(b"\n")
        seq = b"".join(b"N" if ln.startswith(b">") else ln.strip() for ln in lines)
        codes = lut[np.frombuffer(seq, dtype=np.uint8)]
        sizes[path] = int((codes < 4).sum())
        n = len(codes) - k
        idx, bad = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        for j in range(k + 1):
            idx = idx * 4 + codes[j : j + n] % 4
            bad |= codes[j : j + n] == 4
        counts += np.bincount(idx[~bad], minlength=4 ** (k + 1))
    return counts.reshape(4**k, 4), sizes


def generate_markov(counts: np.ndarray, total: int, seed: int, rec_len: int = 20_000) -> list[str]:
    """``total`` bases from the order-k chain, as records of ``rec_len``; chains run in parallel."""
    states = counts.shape[0]
    probs = (counts + 1) / (counts + 1).sum(axis=1, keepdims=True)
    cdf = np.cumsum(probs, axis=1)[:, :3].astype(np.float32)
    chains = max(1, math.ceil(total / rec_len))
    rng = np.random.default_rng(seed)
    weight = counts.sum(axis=1) + 1
    state = rng.choice(states, size=chains, p=weight / weight.sum())
    out = np.empty((rec_len, chains), dtype=np.uint8)
    for start in range(0, rec_len, 1000):
        for i, u in enumerate(rng.random((min(1000, rec_len - start), chains), dtype=np.float32)):
            nxt = (u[:, None] > cdf[state]).sum(axis=1)
            out[start + i] = nxt
            state = (state * 4 + nxt) % states
    text = np.frombuffer(b"ACGT", dtype=np.uint8)[out.T].tobytes().decode("ascii")
    return [text[i : min(i + rec_len, total)] for i in range(0, total, rec_len)]


def bench_train(args: argparse.Namespace, work: Path, real: list[Path]) -> dict[str, Any]:
    """Item 4: train_bpe alone, in a child process, on ``--train-mb`` Mbp of DNA."""
    target = int(args.train_mb * 1e6)
    start = time.perf_counter()
    counts, sizes = fit_markov(real, k=5)
    chosen: list[Path] = []
    for path in sorted(real, key=sizes.__getitem__):  # smallest first while they fit
        if sum(sizes[p] for p in chosen) + sizes[path] <= target:
            chosen.append(path)
    real_bp = sum(sizes[p] for p in chosen)
    gen_bp = max(0, target - real_bp)
    gen_dir = Path(tempfile.mkdtemp(prefix="markov_", dir=work))
    inputs = [str(p) for p in chosen]
    if gen_bp:
        records = generate_markov(counts, gen_bp, seed=args.seed)
        inputs.append(str(write_fasta(gen_dir / "markov.fa", records, "markov")))
    gen_seconds = time.perf_counter() - start
    stage = {"dna_inputs": inputs, "dna_vocab_size": args.dna_vocab, "num_threads": CORES,
             "seed": args.seed}  # fmt: skip
    run_dir = work / "run_train"
    yaml_path = work / "train.yaml"
    yaml_path.write_text(yaml.safe_dump({"run_dir": str(run_dir), "stages": {"train_bpe": stage}}))
    cmd = [str(VENV_BIN / "llamagene"), "run", str(yaml_path), "--only", "train_bpe"]
    if (os.cpu_count() or 1) > CORES and shutil.which("taskset"):
        cmd = ["taskset", "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))[:CORES])), *cmd]
    log.info("item 4: %s", " ".join(cmd))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=sys.stderr)  # keep stdout for the figures
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child and its waited-for children
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    shutil.rmtree(gen_dir)
    if proc.returncode:
        raise SystemExit(f"train_bpe failed (exit {proc.returncode}): {' '.join(cmd)}")
    stats = json.loads((run_dir / "train_bpe/stats.json").read_text())["dna"]
    timings = json.loads((run_dir / "train_bpe/timings.json").read_text())["dna"]
    return {
        "command": " ".join(cmd),
        "real_mbp": real_bp / 1e6,
        "real_files": [str(p) for p in chosen],
        "generated_mbp": gen_bp / 1e6,
        "markov_order": 5,
        "fit_and_generate_seconds": round(gen_seconds, 2),
        "train_chars": stats["train_chars"],
        "pieces": stats["pieces"],
        "wall_seconds": round(wall, 1),
        "sentencepiece_seconds": timings["train_seconds"],
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,  # ru_maxrss is in KiB on Linux
        "cores": CORES,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke testing")
    parser.add_argument("--train-mb", type=float, help="Mbp of DNA for item 4 (default 100)")
    parser.add_argument("--work-dir", type=Path, help="keep runs here (default: a temp dir)")
    parser.add_argument("--heldout", type=Path, help="held-out genome (default MG1655-K12)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    args.train_mb = args.train_mb or (5 if args.quick else 100)
    args.dna_vocab = 4000 if args.quick else 30000
    args.protein_vocab = 4000 if args.quick else 8000
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_tokenizer_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = bench(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    train, held, source = dna_data(work, args.heldout)
    prots = windows([resolve_package_path(PROTEINS)], "protein", 100_000, 1)
    random.Random(args.seed).shuffle(prots)
    n_held = len(prots) // 10
    prot_train = write_fasta(work / "proteins_train.faa", prots[n_held:], "p")
    limits = {"max_train_chars": 5_000_000, "max_heldout_chars": 200_000} if args.quick else {}
    run_dir = run_pipeline(work, "merge", {
        "train_bpe": {"dna_inputs": [str(p) for p in train], "protein_inputs": [str(prot_train)],
                      "dna_vocab_size": args.dna_vocab, "protein_vocab_size": args.protein_vocab,
                      "seed": args.seed, **limits},
        "merge_vocab": {"base_tokenizer": BASE},
    })  # fmt: skip
    stats = json.loads((run_dir / "train_bpe/stats.json").read_text())
    base = spm.SentencePieceProcessor(model_file=str(resolve_package_path(BASE)))
    dna_only = spm.SentencePieceProcessor(model_file=str(run_dir / "train_bpe/dna.model"))
    prot_only = spm.SentencePieceProcessor(model_file=str(run_dir / "train_bpe/protein.model"))
    tok_dir = run_dir / "merge_vocab/tokenizer"
    fast = AutoTokenizer.from_pretrained(str(tok_dir))
    merged_sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))

    held_windows = windows(held, "dna", 300, 300)[: 2000 if args.quick else None]
    dna = per_token(held_windows, "dna", base, dna_only, fast)
    dna |= {"source": source, "train_files": len(train), "pieces": stats["dna"]["pieces"]}
    dna |= {"train_mbp": stats["dna"]["train_chars"] / 1e6, "heldout": [str(p) for p in held]}
    dna["goal_met"] = abs(dna["merged_without_prefix"] / dna["only"] - 1) <= 0.01
    prot = per_token(prots[:n_held], "protein", base, prot_only, fast)
    prot |= {"train_proteins": len(prots) - n_held, "pieces": stats["protein"]["pieces"]}

    mbp = 1.0 if args.quick else 10.0
    texts = windows([*held, *train], "dna", 300, 300)[: int(mbp * 1e6) // 300]
    start = time.perf_counter()
    mapped = [to_model_text(t, "dna") for t in texts]
    map_s = time.perf_counter() - start
    seq_mbp, threads = sum(map(len, texts)) / 1e6, os.cpu_count() or 1
    encoders: dict[str, tuple[Any, list[str], dict[str, Any]]] = {
        "fast_backend_encode_batch": (fast.backend_tokenizer.encode_batch, mapped, {}),
        "fast_tokenizer_call": (fast, mapped, {"add_special_tokens": False}),
        "sentencepiece_dna_only": (dna_only.encode, texts, {"num_threads": threads}),
        "sentencepiece_merged_model": (merged_sp.encode, mapped, {"num_threads": threads}),
    }
    speed: dict[str, Any] = {"mbp": seq_mbp, "threads": threads, "to_model_text": seq_mbp / map_s}
    for name, (fn, batch, kwargs) in encoders.items():
        fn(batch[:200], **kwargs)  # warm up
        speed[name] = seq_mbp / timed(fn, batch, **kwargs)
    results = {"dna_bases_per_token": dna, "protein_residues_per_token": prot}
    results |= {"throughput_mbp_per_s": speed, "train_bpe": bench_train(args, work, train + held)}
    report(results, args)
    return results


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    d, p, s, t = r.values()
    ok = {True: "MET", False: "NOT MET"}
    delta = (d["merged_without_prefix"] / d["only"] - 1) * 100
    fits = t["wall_seconds"] < 180 and t["peak_rss_gb"] < 8

    def row(label: str, value: float) -> str:
        return f"   {label:<54}{value:8.3f}"

    scale = "" if args.train_mb == 100 and args.dna_vocab == 30000 else " (goal is for 100 Mbp)"
    lines = [
        f"\n=== llamagene tokenizer benchmark{' (--quick)' if args.quick else ''} ===",
        f"\n1. DNA bases/token on {d['items']} x 300 bp windows ({d['chars'] / 1e6:.2f} Mbp) "
        f"of held-out {', '.join(Path(h).name for h in d['heldout'])}",
        f"   data: {d['source']}; DNA model trained on {d['train_files']} files, "
        f"{d['train_mbp']:.1f} Mbp, {d['pieces']} pieces (asked {args.dna_vocab})",
        row("base tokenizer (SentencePiece, incl. its dummy prefix)", d["base"]),
        row("DNA-only model (train_bpe dna.model)", d["only"]),
        row("merged fast tokenizer, without the leading lone '▁'", d["merged_without_prefix"])
        + f"   goal: within 1% of DNA-only -> {ok[d['goal_met']]} ({delta:+.3f}%)",
        row("merged fast tokenizer, counting the lone '▁'", d["merged_with_prefix"])
        + f"   ({d['lone_prefix_tokens']} of {d['items']} windows start with it)",
        f"\n2. protein residues/token on {p['items']} held-out proteins (10%, {p['chars']:,} aa); "
        f"protein model given {p['train_proteins']} proteins, {p['pieces']} pieces "
        f"(asked {args.protein_vocab})",
        f"   base {p['base']:.3f} | protein-only {p['only']:.3f} | merged without '▁' "
        f"{p['merged_without_prefix']:.3f} | merged counting '▁' {p['merged_with_prefix']:.3f}",
        f"\n3. batch-encode throughput, Mbp of sequence per second, same {s['mbp']:.1f} Mbp of "
        f"300 bp windows ({s['threads']} CPU threads, best of 3)",
        row("merged fast, tokenizers.Tokenizer.encode_batch", s["fast_backend_encode_batch"]),
        row("merged fast, tokenizer(list) (transformers)", s["fast_tokenizer_call"]),
        row("SentencePiece, DNA-only dna.model on ACGT text", s["sentencepiece_dna_only"]),
        row("SentencePiece, merged tokenizer.model", s["sentencepiece_merged_model"]),
        row("(to_model_text mapping, not included above)", s["to_model_text"]),
        f"\n4. train_bpe on {t['real_mbp'] + t['generated_mbp']:.2f} Mbp of DNA: "
        f"{t['real_mbp']:.2f} Mbp real ({len(t['real_files'])} files) + "
        f"{t['generated_mbp']:.2f} Mbp generated (order-{t['markov_order']} Markov chain; "
        f"fit+generate+write {t['fit_and_generate_seconds']} s)",
        f"   {t['command']}",
        f"   trained on {t['train_chars'] / 1e6:.1f} Mbp -> {t['pieces']} pieces "
        f"(asked {args.dna_vocab}), {t['cores']} cores",
        f"   wall {t['wall_seconds']} s (SentencePiece itself {t['sentencepiece_seconds']} s), "
        f"peak RSS {t['peak_rss_gb']:.2f} GB   goal: < 3 min and < 8 GB on 2 cores -> "
        f"{ok[fits]}{scale}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
