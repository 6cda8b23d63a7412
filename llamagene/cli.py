"""The ``llamagene`` command.

    llamagene run [PIPELINE.yaml] [--only STAGE ...] [--force] [--launcher CMD] [key=value ...]
    llamagene status [PIPELINE.yaml] [key=value ...]
    llamagene validate [PIPELINE.yaml] [key=value ...]
    llamagene templates {ls,show,new,lint,preview} ...   (prompt templates: llamagene.template_cli)

Without a pipeline file, the built-in demo (``pipelines/demo/pipeline.yaml``) is used.
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
    from llamagene.pipeline import Pipeline

DEMO_PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "demo" / "pipeline.yaml"


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
    add("status", "list each stage as up to date, stale or failed, with the reasons")
    add("validate", "check every config value and input path without running anything")
    templates = sub.add_parser(
        "templates",
        help="list, show, scaffold, lint and preview prompt templates (templates --help)",
        add_help=False,
        prefix_chars="\0",  # every argument after `templates` goes to llamagene.template_cli
    )
    templates.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # positionals after options (`run --only pretrain key=value`) are still overrides
    unknown = [a for a in extra if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.args = [*args.args, *extra]
    if args.command == "templates":
        from llamagene.template_cli import main as templates_main

        return templates_main(args.args, debug=args.debug)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from llamagene.errors import LlamageneError

    try:
        pipeline = _load(args.args)
        if args.command == "run":
            launcher = shlex.split(args.launcher) if args.launcher else None
            return _run(pipeline, args.only, args.force, launcher)
        if args.command == "status":
            return _status(pipeline)
        return _validate(pipeline)
    except LlamageneError as err:
        if args.debug or os.environ.get("LLAMAGENE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: the stage that was running is marked stale", file=sys.stderr)
        return 130


def _load(raw: Sequence[str]) -> Pipeline:
    from llamagene.errors import ConfigError
    from llamagene.pipeline import load_pipeline

    files = [a for a in raw if "=" not in a]
    overrides = [a for a in raw if "=" in a]
    if len(files) > 1:
        raise ConfigError("command line", [f"give one pipeline file, not {len(files)}: {files}"])
    path = Path(files[0]) if files else DEMO_PIPELINE
    if not files:
        print(f"using the demo pipeline {path}", file=sys.stderr)
    return load_pipeline(path, overrides)


def _run(pipeline: Pipeline, only: Sequence[str], force: bool, launcher: list[str] | None) -> int:
    results = pipeline.run(only=only, force=force, launcher=launcher)
    ran = [r.name for r in results if r.state == "ran"]
    if not ran:
        print(f"everything is up to date in {pipeline.run_dir}: nothing to do")
    else:
        print(f"ran {', '.join(ran)}; outputs in {pipeline.run_dir}")
    return 0


def _status(pipeline: Pipeline) -> int:
    print(f"{pipeline.path}\nrun_dir: {pipeline.run_dir}")
    for st in pipeline.status():
        print(f"  {st.name:<12} {st.state}")
        for reason in st.reasons:
            print(f"      - {reason}")
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
