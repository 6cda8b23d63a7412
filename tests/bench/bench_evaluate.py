"""Benchmark choice scoring against generate-then-parse and lm-eval's full forwards.

Run from the repository root:

    .venv/bin/python tests/bench/bench_evaluate.py [--rows 64] [--repeats 3] [--batch-tokens 8192]
                                                   [--model DIR | --build] [--hidden 128]
                                                   [--layers 2] [--threads N] [--seed 0]
                                                   [--out results.json]

What it measures (the three methods of :mod:`llamagene.evaluation.scoring`, one model, the same
rows):

rows     seeded, synthetic, ``--rows`` of each kind, encoded by ``PromptFormat`` over the model's
         tokenizer (``prompt_ids([Message("user", prompt)])``; choices by ``text_ids``).
         "binary", GUE-style: random ACGT DNA of the binary GUE groups' lengths in turn (EMP 500
         bp, prom_300 300, prom_core 70, tf 100, mouse 100), ``Is <dna>SEQ</dna> a promoter?
         Answer yes or no.\\nAnswer:``, choices ``no`` / ``yes``. "3-choice": splice-like 400 bp,
         choices ``an acceptor site`` / ``a donor site`` / ``neither of these`` (several tokens
         each; their token counts are printed).
model    ``--model DIR``, by default the demo run's tuned model (``runs/demo/finetune/merged``,
         its own tokenizer) when it is there; else, or with ``--build``, a tiny LLaMA with random
         weights from a ``LlamaConfig`` (``--hidden`` 128, ``--layers`` 2, 4 heads, the
         tokenizer's vocabulary rounded up to 64) over the merged tokenizer
         (``runs/demo/merge_vocab/tokenizer``, else the demo's train_bpe + merge_vocab built in
         a temporary folder). fp32 on the CPU, bf16 on a GPU.
methods  choice scoring: ``score_choices``, each prompt once through its KV cache, rows batched
         by length (``--batch-tokens``). Its answer is the best-scored choice, so its
         unparseable share is 0% by construction.
         generate-then-parse: ``generate_greedy`` (rows batched by length, padding rows
         suppressed, at most the longest choice in tokens + ``ANSWER_MARGIN_TOKENS`` (16) new
         tokens, as the evaluate stage allows), decoded, read by ``parse_choice``; prints the
         unparseable share (``None``) and the mean new tokens per row. An untrained or tiny
         model rarely emits EOS early, so its generation runs to the cap: what happens in
         practice with a weak model.
         full forward, lm-evaluation-harness's way: ``score_choices_full``, one forward of prompt
         + choice per choice, one at a time (what lm-eval's HF model computes per request, minus
         its own batching of requests).
check    choice scoring and full forwards agree: max |score difference| (goal < 1e-4 in fp32;
         in bf16 shown, not judged) and the same choice picked on every row.
cpu      rows/s of each method per kind: a warm-up call on two rows, then ``--repeats`` passes
         over all rows that rotate which method goes first; median with min-max. Goals (PASS /
         FAIL): choice / generate >= 3x on binary rows; choice / full >= 1.5x on 3-choice rows,
         as the prompt is computed once, not once per choice.
gpu      where CUDA is present, the same in bf16; else "gpu: skipped (no CUDA device)".

Every figure is printed with the conditions it ran under and kept in ``--out`` (JSON).

Measured on this 2-core CPU machine (torch 2.13, 2 threads, quiet; 64 rows of each kind, 3
repeats; 10.6M-parameter LLaMA, 40k vocabulary), rows/s, median:

    model                    kind      choice  generate  full   choice/generate  choice/full
    built (random weights)   binary      500      122      37     4.11x PASS        13.4x
                             3-choice    228      111      20     2.05x             11.4x PASS
    the demo's tuned model   binary      544      302      42     1.80x FAIL        12.9x
                             3-choice    250      211      20     1.19x             12.3x PASS

The demo's tuned model ends most answers after about 3 tokens (the random one runs to its
17-token cap), so its generation costs little more than the prompt pass both methods share:
against a model that answers in one token and EOS, choice scoring can save decode steps, not
the prefill, and the ratio stays below 3x. Choice scoring and full forwards agreed to 6e-5 and
picked the same choice on every row. (``--build`` and ``--model runs/demo/finetune/merged``.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from llamagene.evaluation import scoring  # noqa: E402
from llamagene.evaluation.answers import parse_choice  # noqa: E402
from llamagene.evaluation.scoring import ChoiceRequest  # noqa: E402
from llamagene.prompt_format import Message, PromptFormat  # noqa: E402
from llamagene.stages.evaluate import ANSWER_MARGIN_TOKENS  # noqa: E402

DEMO_MODEL = REPO / "runs" / "demo" / "finetune" / "merged"
DEMO_TOKENIZER = REPO / "runs" / "demo" / "merge_vocab" / "tokenizer"
#: The binary GUE groups and their sequence lengths in bp.
BINARY_LENGTHS = {"EMP": 500, "prom_300": 300, "prom_core": 70, "tf": 100, "mouse": 100}
SPLICE_BP = 400
#: Each kind's prompt (``{}`` is the DNA) and choices.
KINDS = {
    "binary": ("Is <dna>{}</dna> a promoter? Answer yes or no.\nAnswer:", ["no", "yes"]),
    "3-choice": ("Is <dna>{}</dna> an acceptor site, a donor site or neither of these?\nAnswer:",
                 ["an acceptor site", "a donor site", "neither of these"]),
}  # fmt: skip
CHOICE, GENERATE, FULL = METHODS = ("choice scoring", "generate-then-parse", "full forward")
#: Per kind: choice scoring's rows/s over this method's must be at least this much.
GOALS = {"binary": (GENERATE, 3.0), "3-choice": (FULL, 1.5)}
#: Largest |choice scoring - full forward| of a score allowed in fp32.
AGREEMENT = 1e-4


@dataclass(frozen=True)
class Task:
    kind: str
    choices: list[str]
    requests: list[ChoiceRequest]
    cap: int
    """New tokens a greedy answer may take: the longest choice + ANSWER_MARGIN_TOKENS."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="rows of each kind")
    parser.add_argument("--batch-tokens", type=int, default=scoring.BATCH_TOKENS, help="per pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per method")
    parser.add_argument("--model", type=Path, help="an exported model folder (default: the demo)")
    parser.add_argument("--build", action="store_true", help="build a tiny LLaMA, load none")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the built model")
    parser.add_argument("--layers", type=int, default=2, help="layers of the built model")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = None if args.build else args.model or (DEMO_MODEL if DEMO_MODEL.is_dir() else None)
    tokenizer_dir = model_dir or _tokenizer()
    fmt = PromptFormat.from_dir(tokenizer_dir)
    cores, threads = len(os.sched_getaffinity(0)), torch.get_num_threads()
    results: dict[str, Any] = {"conditions": {
        "machine": platform.node(), "cpu_cores": cores, "threads": threads,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "rows_per_kind": args.rows, "repeats": args.repeats, "batch_tokens": args.batch_tokens,
        "model": str(model_dir or "built"), "tokenizer": str(tokenizer_dir),
    }}  # fmt: skip
    print(f"machine: {platform.node()}: {cores} CPU cores, {threads} torch threads, torch "
          f"{torch.__version__}, transformers {transformers.__version__}")  # fmt: skip
    print(f"model: {model_dir or 'built tiny LLaMA'}; tokenizer: {tokenizer_dir} "
          f"({fmt.tokenizer.get_vocab_size():,} pieces)")  # fmt: skip
    tasks = make_tasks(fmt, args.rows, args.seed)
    results["rows"] = describe_tasks(tasks)
    results["cpu"] = bench("cpu", load_model(model_dir, fmt, args, "cpu"), fmt, tasks, args)
    if torch.cuda.is_available():
        results["gpu"] = bench("gpu", load_model(model_dir, fmt, args, "cuda"), fmt, tasks, args)
    else:
        print("gpu: skipped (no CUDA device)")
        results["gpu"] = {"skipped": "no CUDA device"}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {args.out}")
    return 0


# ---------------------------------------------------------------------------------- helpers
def _tokenizer() -> Path:
    """The demo run's merged tokenizer, or the demo's train_bpe + merge_vocab built in a
    temporary folder."""
    if (DEMO_TOKENIZER / "tokenizer.json").is_file():
        return DEMO_TOKENIZER
    from llamagene.cli import DEMO_PIPELINE
    from llamagene.pipeline import load_pipeline

    run_dir = Path(tempfile.mkdtemp(prefix="bench_evaluate_")) / "run"
    print(f"building the demo tokenizer in {run_dir} ...")
    load_pipeline(DEMO_PIPELINE, [f"run_dir={run_dir}"]).run(only=["train_bpe", "merge_vocab"])
    return run_dir / "merge_vocab" / "tokenizer"


def make_tasks(fmt: PromptFormat, rows: int, seed: int) -> list[Task]:
    """``rows`` seeded rows of each kind (binary rows take the GUE groups' lengths in turn)."""
    rng = random.Random(seed)
    groups = list(BINARY_LENGTHS.values())
    lengths = {"binary": [groups[i % len(groups)] for i in range(rows)],
               "3-choice": [SPLICE_BP] * rows}  # fmt: skip
    tasks = []
    for kind, (template, choices) in KINDS.items():
        choice_ids = fmt.text_ids(choices)
        prompts = [template.format("".join(rng.choices("ACGT", k=n))) for n in lengths[kind]]
        requests = [
            ChoiceRequest(fmt.prompt_ids([Message("user", p)]), choice_ids, f"{kind} row {i}")
            for i, p in enumerate(prompts)
        ]
        cap = max(len(ids) for ids in choice_ids) + ANSWER_MARGIN_TOKENS
        tasks.append(Task(kind, choices, requests, cap))
    return tasks


def describe_tasks(tasks: list[Task]) -> dict[str, Any]:
    figures = {}
    for task in tasks:
        n = sorted(len(r.prompt) for r in task.requests)
        counts = dict(zip(task.choices, map(len, task.requests[0].choices), strict=True))
        spread = [n[0], statistics.median(n), n[-1]]
        figures[task.kind] = {"rows": len(n), "prompt_tokens_min_median_max": spread,
                              "choice_tokens": counts, "max_new_tokens": task.cap}  # fmt: skip
        print(f"rows: {task.kind}: {len(n)} rows, prompt tokens min {n[0]} / median "
              f"{statistics.median(n):g} / max {n[-1]}; choice tokens {counts}; generation "
              f"cap {task.cap} new tokens")  # fmt: skip
    return figures


def load_model(model_dir: Path | None, fmt: PromptFormat, args: Any, device: str) -> Any:
    """The exported model (fp32 on the CPU, bf16 on a GPU), or a tiny LLaMA built (seeded)."""
    import torch

    if model_dir is not None:
        from llamagene.generation import load_for_generation

        return load_for_generation(model_dir, device=device).model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=-(-fmt.tokenizer.get_vocab_size() // 64) * 64, hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 8 * 8, num_hidden_layers=args.layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
        bos_token_id=fmt.bos_id, eos_token_id=fmt.eos_id, pad_token_id=fmt.eos_id,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )  # fmt: skip
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def run_method(method: str, model: Any, fmt: PromptFormat, task: Task,
               requests: list[ChoiceRequest], batch_tokens: int) -> Any:  # fmt: skip
    """Choice scoring and full forward: the scores; generate: (answer ids, texts, parsed)."""
    if method == CHOICE:
        return scoring.score_choices(model, requests, pad_id=fmt.eos_id, batch_tokens=batch_tokens)
    if method == FULL:
        return scoring.score_choices_full(model, requests)
    # the embedding rows past the tokenizer, suppressed as evaluate does (no token is theirs)
    suppress = tuple(range(fmt.tokenizer.get_vocab_size(), model.config.vocab_size))
    answers = scoring.generate_greedy(
        model, [r.prompt for r in requests], [task.cap] * len(requests), eos_id=fmt.eos_id,
        pad_id=fmt.eos_id, suppress=suppress, batch_tokens=batch_tokens,
    )  # fmt: skip
    texts = [fmt.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in answers]
    return answers, texts, [parse_choice(text, task.choices) for text in texts]


# ---------------------------------------------------------------------------------- sections
def bench(tag: str, model: Any, fmt: PromptFormat, tasks: list[Task], args: Any) -> dict[str, Any]:
    """Every method on every kind of rows, timed; the goals; the check."""
    import torch

    weight = next(model.parameters())
    sync = torch.cuda.synchronize if weight.is_cuda else (lambda: None)
    c = model.config
    shape = {"hidden": c.hidden_size, "intermediate": c.intermediate_size,
             "layers": c.num_hidden_layers, "heads": c.num_attention_heads,
             "kv_heads": c.num_key_value_heads, "vocab": c.vocab_size}  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    dtype = str(weight.dtype).removeprefix("torch.")
    name = torch.cuda.get_device_name(weight.device) if weight.is_cuda else "cpu"
    print(f"{tag}: {name}, torch threads {torch.get_num_threads()}; LLaMA {shape}, "
          f"{n_params / 1e6:.1f}M parameters, {dtype}; {args.repeats} alternating repeats, "
          f"{args.batch_tokens:,} tokens per batched pass")  # fmt: skip
    figures: dict[str, Any] = {"device": name, "dtype": dtype, "model": shape, "params": n_params}
    # bf16 rounds a batched pass differently from a lone one: there the difference is shown only
    tolerance = AGREEMENT if weight.dtype == torch.float32 else None
    start = time.perf_counter()
    for task in tasks:
        scoring.check_context(task.requests, getattr(c, "max_position_embeddings", None))
        for method in METHODS:  # warm-up
            run_method(method, model, fmt, task, task.requests[:2], args.batch_tokens)
        seconds: dict[str, list[float]] = {m: [] for m in METHODS}
        last: dict[str, Any] = {}
        for repeat in range(args.repeats):
            for method in METHODS[repeat % 3 :] + METHODS[: repeat % 3]:
                sync()
                began = time.perf_counter()
                last[method] = run_method(method, model, fmt, task, task.requests,
                                          args.batch_tokens)  # fmt: skip
                sync()
                seconds[method].append(time.perf_counter() - began)
        figures[task.kind] = summarise(tag, task, seconds, last, tolerance)
    print(f"{tag}: section took {time.perf_counter() - start:.0f} s")
    return figures


def summarise(tag: str, task: Task, seconds: dict[str, list[float]], last: dict[str, Any],
              tolerance: float | None) -> dict[str, Any]:  # fmt: skip
    rows, label = len(task.requests), f"{tag}: {task.kind:<8}"
    out: dict[str, Any] = {}
    for method in METHODS:
        rates = [rows / s for s in seconds[method]]
        low, mid, high = min(rates), statistics.median(rates), max(rates)
        out[method] = {"seconds": [round(s, 3) for s in seconds[method]], "rows_per_s": mid,
                       "rows_per_s_min_max": [low, high]}  # fmt: skip
        print(f"{label} {method:<20} {mid:>9,.1f} rows/s (min {low:,.1f}, max {high:,.1f})")
    goal_method, goal = GOALS[task.kind]
    parts = []
    for other in (GENERATE, FULL):
        ratio = out[CHOICE]["rows_per_s"] / out[other]["rows_per_s"]
        # the same ratio within each repeat (neighbours in time share the machine's load)
        each = [b / a for a, b in zip(seconds[CHOICE], seconds[other], strict=True)]
        out[f"choice_over_{other}"] = {"median": ratio, "per_repeat": each}
        verdict = ""
        if other == goal_method:
            out["goal"] = {"over": other, "at_least": goal, "pass": ratio >= goal}
            verdict = f"; goal >= {goal:g}x: {'PASS' if ratio >= goal else 'FAIL'}"
        each_text = ", ".join(f"{r:.2f}" for r in each)
        parts.append(f"choice / {other} {ratio:.2f}x (each repeat: {each_text}{verdict})")
    print(f"{label} " + "; ".join(parts))
    answers, texts, parsed = last[GENERATE]
    unparseable = sum(p is None for p in parsed) / rows
    # a row's new tokens: its answer, and the EOS that ended it when it came before the cap
    new = sum(len(a) + (len(a) < task.cap) for a in answers) / rows
    at_cap = sum(len(a) >= task.cap for a in answers) / rows
    out["unparseable"] = {CHOICE: 0.0, GENERATE: unparseable}
    out["generated"] = {"mean_new_tokens": new, "share_at_cap": at_cap, "first": texts[0]}
    print(f"{label} unparseable: {CHOICE} 0% (by construction: the answer is the best-scored "
          f"choice), {GENERATE} {100 * unparseable:.1f}%; mean {new:.1f} new tokens per row "
          f"(cap {task.cap}, {100 * at_cap:.0f}% of rows at the cap); first answer "
          f"{texts[0][:40]!r}")  # fmt: skip
    pairs = list(zip(last[CHOICE], last[FULL], strict=True))
    diff = max(abs(a - b) for x, y in pairs for a, b in zip(x, y, strict=True))
    same = sum(x.index(max(x)) == y.index(max(y)) for x, y in pairs)
    ok = None if tolerance is None else diff < tolerance and same == rows
    out["check"] = {"max_abs_diff": diff, "same_choice_rows": same, "rows": rows, "ok": ok}
    verdict = (
        "bf16: shown only" if ok is None else f"{'ok' if ok else 'MISMATCH'}: goal < {AGREEMENT:g}"
    )
    print(f"{label} check: max |{CHOICE} - {FULL}| {diff:.1e} ({verdict}); the same choice on "
          f"{same}/{rows} rows")  # fmt: skip
    return out


if __name__ == "__main__":
    raise SystemExit(main())
