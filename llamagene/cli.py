"""The ``llamagene`` command.

    llamagene run [PIPELINE.yaml] [--only STAGE ...] [--force] [--launcher CMD] [--processes N]
                  [key=value ...]
    llamagene prepare [PIPELINE.yaml] --stage STAGE [key=value ...]
    llamagene plan [PIPELINE.yaml] [--stage STAGE] [--gpus N] [key=value ...]
    llamagene status [PIPELINE.yaml] [key=value ...]
    llamagene validate [PIPELINE.yaml] [key=value ...]
    llamagene templates {ls,show,new,lint,preview} ...   (prompt templates: llamagene.templates.cli)
    llamagene generate MODEL_DIR [--prompt TEXT] [--adapter DIR] [--max-new-tokens N] [--sample ...]
    llamagene chat MODEL_DIR [--system TEXT] [--adapter DIR] [--max-new-tokens N] [--sample ...]

Without a pipeline file, the built-in demo (``pipelines/demo/pipeline.yaml``) is used: the
checkout's, or the copy installed inside the package (``llamagene.shipped``), whose outputs then
go to ``runs/demo`` under the current folder instead of inside site-packages.
``key=value`` overrides a config value by its dotted path (``train_bpe.dna_vocab_size=8000``).
Heavy libraries are imported only when a command needs them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llamagene.generation import Generator, Settings
    from llamagene.pipeline import Pipeline

    #: The built-in demo pipeline file; computed on first use by :func:`__getattr__`.
    DEMO_PIPELINE: Path


def demo_pipeline() -> Path:
    """The built-in demo pipeline file: the checkout's, else the copy installed with llamagene."""
    from llamagene.shipped import shipped_dir

    return shipped_dir("pipelines") / "demo" / "pipeline.yaml"


def __getattr__(name: str) -> Path:
    # `from llamagene.cli import DEMO_PIPELINE` keeps working, but the path is looked up only
    # when asked for, so importing the CLI (and `--help`) never fails on a broken install.
    if name == "DEMO_PIPELINE":
        return demo_pipeline()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llamagene",
        description="A staged, reproducible pipeline that teaches LLaMA-family models DNA and "
        "protein: train_bpe -> merge_vocab -> pretrain -> build_sft -> finetune -> evaluate.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument(
            "args",
            nargs="*",
            metavar="PIPELINE.yaml | key=value",
            help="the pipeline file (default: the built-in demo) and config overrides, "
            "e.g. train_bpe.dna_vocab_size=8000",
        )
        return cmd

    run = add("run", "run the stages that are stale, in order")
    run.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="STAGE",
        help="run only this stage (repeatable); its upstream stages must have run",
    )
    run.add_argument(
        "--force", action="store_true", help="re-run the selected stages even if up to date"
    )
    run.add_argument(
        "--launcher",
        default=os.environ.get("LLAMAGENE_LAUNCHER") or None,
        metavar="CMD",
        help="command prefix that starts the training workers of training stages, e.g. "
        "'torchrun --standalone --nproc_per_node 2' (default: $LLAMAGENE_LAUNCHER, else train "
        "in this process); pipelines/cluster/launch.sh sets it for SLURM and DeepSpeed",
    )
    run.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="how many training processes the launcher starts, in all (default: read from "
        "the launcher's --nnodes x --nproc_per_node, or DeepSpeed's --num_nodes x --num_gpus); "
        "the batch plan is settled for them before any work",
    )
    prepare = add(
        "prepare",
        "run what a training stage needs before its GPUs: its stale upstream stages (none of "
        "which may train) and its data (pretrain: the tokenized corpus); a CPU job on a cluster",
    )
    prepare.add_argument("--stage", required=True, metavar="STAGE", help="pretrain or finetune")
    plan = add(
        "plan",
        "print a training stage's batch plan and per-GPU memory estimate for N GPUs, without "
        "running anything",
    )
    plan.add_argument("--stage", metavar="STAGE", help="default: the first training stage")
    plan.add_argument("--gpus", type=int, metavar="N", help="processes (GPUs) in all; default 1")
    evaluate = add(
        "evaluate", "run the evaluate stage (its upstream stages must have run), or export its rows"
    )
    evaluate.add_argument(
        "--export-lm-eval",
        type=Path,
        metavar="DIR",
        help="instead, write the split evaluate scores as lm-evaluation-harness tasks into DIR "
        "(build_sft and merge_vocab must have run), to cross-check the scores with lm-eval",
    )
    evaluate.add_argument(
        "--force", action="store_true", help="re-run evaluate even if it is up to date"
    )
    add("status", "list each stage as up to date, stale or failed, with the reasons")
    add("validate", "check every config value and input path without running anything")
    templates = sub.add_parser(
        "templates",
        help="list, show, scaffold, lint and preview prompt templates (templates --help)",
        add_help=False,
        prefix_chars="\0",  # every argument after `templates` goes to llamagene.templates.cli
    )
    templates.add_argument("args", nargs=argparse.REMAINDER)
    generate = sub.add_parser(
        "generate",
        help="answer one prompt (--prompt), or each line of stdin, with a trained model",
        description="Answer one prompt (--prompt), or each line of stdin with one line "
        "(newlines in an answer become spaces), with a trained model. Prompts mix English "
        "with <dna>...</dna> and <protein>...</protein> spans.",
    )
    generate.add_argument("--prompt", metavar="TEXT", help="the prompt (default: read stdin)")
    chat = sub.add_parser(
        "chat",
        help="talk with a trained model (/reset clears the conversation, /exit quits)",
        description="Talk with a trained model, turn by turn; each answer sees the whole "
        "conversation. /reset clears it, /exit (or end of input) quits.",
    )
    for cmd in (generate, chat):
        _generation_options(cmd)
    return parser


def _generation_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "model_dir",
        type=Path,
        metavar="MODEL_DIR",
        help="an exported model folder (pretrain/merged), or the base model with --adapter",
    )
    cmd.add_argument("--system", metavar="TEXT", help="a system message before the first turn")
    cmd.add_argument(
        "--adapter",
        type=Path,
        metavar="DIR",
        help="an exported adapter folder (pretrain/adapter) to attach to MODEL_DIR, the base "
        "model; the tokenizer is then the adapter folder's",
    )
    cmd.add_argument(
        "--max-new-tokens",
        type=int,
        default=128,
        metavar="N",
        help="at most N new tokens per answer (default: 128)",
    )
    cmd.add_argument(
        "--sample", action="store_true", help="sample the answer (default: greedy decoding)"
    )
    cmd.add_argument(
        "--temperature", type=float, metavar="T", help="sampling temperature (default: 0.7)"
    )
    cmd.add_argument(
        "--top-p", type=float, metavar="P", help="nucleus sampling threshold (default: 0.9)"
    )
    cmd.add_argument("--seed", type=int, metavar="N", help="seed for sampling each answer")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("generate", "chat"):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return _talk(args)
    # positionals after options (`run --only pretrain key=value`) are still overrides
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.args = [*args.args, *extra]
    if args.command == "templates":
        from llamagene.templates.cli import main as templates_main

        return templates_main(args.args, debug=args.debug)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from llamagene.errors import LlamageneError

    try:
        pipeline = _load(args.args)
        if args.command == "run":
            launcher = shlex.split(args.launcher) if args.launcher else None
            if args.processes is not None:
                from llamagene.training.batch_plan import PROCESSES_ENV

                os.environ[PROCESSES_ENV] = str(
                    _at_least_one(parser, "--processes", args.processes)
                )
            return _run(pipeline, args.only, args.force, launcher)
        if args.command == "prepare":
            pipeline.prepare(args.stage)
            print(f"prepared {args.stage} in {pipeline.run_dir}: its training can start")
            return 0
        if args.command == "plan":
            from llamagene.training.planner import plan_report

            gpus = None if args.gpus is None else _at_least_one(parser, "--gpus", args.gpus)
            print(plan_report(pipeline, args.stage, gpus), end="")
            return 0
        if args.command == "evaluate":
            if args.export_lm_eval is not None:
                return _export_lm_eval(pipeline, args.export_lm_eval)
            return _run(pipeline, ["evaluate"], args.force, None)
        if args.command == "status":
            return _status(pipeline)
        return _validate(pipeline)
    except LlamageneError as err:
        return _failed(err, args)
    except KeyboardInterrupt:
        print("interrupted: the stage that was running is marked stale", file=sys.stderr)
        return 130


def _at_least_one(parser: argparse.ArgumentParser, option: str, value: int) -> int:
    if value < 1:
        parser.error(f"{option} must be at least 1, not {value}")
    return value


def _failed(err: Exception, args: argparse.Namespace) -> int:
    """One line on stderr, and the error's exit code (a traceback only with --debug)."""
    if args.debug or os.environ.get("LLAMAGENE_DEBUG"):
        raise err
    print(f"error: {err}", file=sys.stderr)
    return int(getattr(err, "exit_code", 1))


def _talk(args: argparse.Namespace) -> int:
    """``generate`` and ``chat`` (the logic is in llamagene.generation)."""
    from llamagene.errors import LlamageneError

    try:
        from llamagene.generation import Settings, load_for_generation

        sampling = {"--temperature": args.temperature, "--top-p": args.top_p, "--seed": args.seed}
        given = [flag for flag, value in sampling.items() if value is not None]
        if given and not args.sample:
            raise LlamageneError(f"{', '.join(given)}: only with --sample (greedy otherwise)")
        defaults = Settings()
        settings = Settings(
            max_new_tokens=args.max_new_tokens,
            sample=args.sample,
            temperature=defaults.temperature if args.temperature is None else args.temperature,
            top_p=defaults.top_p if args.top_p is None else args.top_p,
            seed=args.seed,
        )
        settings.check()
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no loading bar
        generator = load_for_generation(args.model_dir, args.adapter)
        if args.command == "chat":
            return _chat(generator, settings, args.system)
        return _generate(generator, settings, args.prompt, args.system)
    except LlamageneError as err:
        return _failed(err, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _generate(
    generator: Generator, settings: Settings, prompt: str | None, system: str | None
) -> int:
    from llamagene.errors import LlamageneError
    from llamagene.prompt_format import Message

    start = [Message("system", system)] if system else []
    if prompt is not None:
        for piece in generator.stream([*start, Message("user", prompt)], settings):
            print(piece, end="", flush=True)
        print(flush=True)
        return 0
    # one answer line per prompt line; a prompt that fails gets an empty line and an error
    exit_code = 0
    for number, line in enumerate(sys.stdin, start=1):
        text = line.rstrip("\r\n")
        try:
            pieces = generator.stream([*start, Message("user", text)], settings) if text else []
            for piece in pieces:
                print(piece.replace("\r", " ").replace("\n", " "), end="", flush=True)
        except LlamageneError as err:
            print(f"error: line {number}: {err}", file=sys.stderr, flush=True)
            exit_code = exit_code or err.exit_code
        print(flush=True)
    return exit_code


def _chat(generator: Generator, settings: Settings, system: str | None) -> int:
    from llamagene.errors import LlamageneError
    from llamagene.generation import ContextError, Conversation

    chat = Conversation(generator, system)
    print("chat: /reset clears the conversation, /exit quits", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if text == "/exit":
            return 0
        if text == "/reset":
            chat.reset()
            print("(conversation cleared)", flush=True)
            continue
        if not text:
            continue
        try:
            for piece in chat.reply(text, settings):
                print(piece, end="", flush=True)
        except LlamageneError as err:
            hint = " (or /reset the conversation)" if isinstance(err, ContextError) else ""
            print(f"error: {err}{hint}", file=sys.stderr, flush=True)
            continue
        except KeyboardInterrupt:  # stops this answer only; the turn is not kept
            print("\n(interrupted)", flush=True)
            continue
        print(flush=True)


def _load(raw: Sequence[str]) -> Pipeline:
    from llamagene.errors import ConfigError
    from llamagene.pipeline import load_pipeline

    files = [a for a in raw if "=" not in a]
    overrides = [a for a in raw if "=" in a]
    if len(files) > 1:
        raise ConfigError("command line", [f"give one pipeline file, not {len(files)}: {files}"])
    if files:
        return load_pipeline(Path(files[0]), overrides)
    path, overrides = _demo(overrides)
    return load_pipeline(path, overrides)


def _demo(overrides: list[str]) -> tuple[Path, list[str]]:
    """The demo pipeline and the overrides to load it with; says in one line which is used.

    The installed copy's ``run_dir`` (``../../runs/demo``, relative to the pipeline file) would
    point inside site-packages, so it becomes ``runs/demo`` under the current folder, and a
    relative ``run_dir=...`` override is taken relative to the current folder too.
    """
    import json

    import yaml

    from llamagene.shipped import is_checkout

    path = demo_pipeline()
    if is_checkout():
        print(f"using the demo pipeline {path}", file=sys.stderr)
        return path, overrides
    run_dir = Path.cwd() / "runs" / "demo"
    kept: list[str] = []
    for item in overrides:
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if key.strip() == "run_dir" else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and value.strip():
            run_dir = Path.cwd() / Path(value.strip()).expanduser()  # an absolute one stays
        else:
            kept.append(item)  # not run_dir, or a bad one that load_pipeline reports
    print(
        f"using the demo pipeline installed with llamagene ({path}); its outputs go to "
        f"{run_dir} (set run_dir=... to change)",
        file=sys.stderr,
    )
    # a JSON string is a YAML string too, whatever characters the folder's name holds; a bad
    # run_dir=... left in `kept` comes after it, so load_pipeline reports it
    return path, [f"run_dir={json.dumps(str(run_dir))}", *kept]


def _run(pipeline: Pipeline, only: Sequence[str], force: bool, launcher: list[str] | None) -> int:
    results = pipeline.run(only=only, force=force, launcher=launcher)
    ran = [r.name for r in results if r.state == "ran"]
    if not ran:
        print(f"everything is up to date in {pipeline.run_dir}: nothing to do")
    else:
        print(f"ran {', '.join(ran)}; outputs in {pipeline.run_dir}")
    return 0


def _export_lm_eval(pipeline: Pipeline, out_dir: Path) -> int:
    """The split ``evaluate`` scores, as lm-evaluation-harness tasks (for a cross-check)."""
    from llamagene.errors import StageError
    from llamagene.evaluation.lm_eval_export import export_lm_eval
    from llamagene.evaluation.rows import load_tasks_json

    configs = {stage.name: cfg for stage, cfg in pipeline.stages()}
    split = getattr(configs.get("evaluate"), "split", "test")
    sft_dir = pipeline.run_dir / "build_sft"
    tokenizer_dir = pipeline.run_dir / "merge_vocab" / "tokenizer"
    for needed in (sft_dir / f"{split}.jsonl", tokenizer_dir / "tokenizer.json"):
        if not needed.is_file():
            raise StageError(f"{needed}: missing: run build_sft and merge_vocab first")
    cards = load_tasks_json(sft_dir / "tasks.json")
    types = {task_id: task.info.task_type for task_id, task in cards.items()}
    names = export_lm_eval(sft_dir / f"{split}.jsonl", types, tokenizer_dir, out_dir)
    print(f"wrote {len(names)} lm-evaluation-harness tasks to {out_dir} (see its README.md)")
    return 0


def _status(pipeline: Pipeline) -> int:
    print(f"{pipeline.path}\nrun_dir: {pipeline.run_dir}")
    for st in pipeline.status():
        print(f"  {st.name:<12} {st.state}")
        for reason in st.reasons:
            print(f"      - {reason}")
        for note in st.notes:
            print(f"      note: {note}")
    return 0


def _validate(pipeline: Pipeline) -> int:
    from llamagene.errors import ConfigError

    problems = pipeline.check()
    if problems:
        raise ConfigError(str(pipeline.path), problems)
    names = ", ".join(stage.name for stage, _ in pipeline.stages())
    print(f"{pipeline.path}: valid ({names})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
