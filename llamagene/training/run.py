"""What the training stages (``pretrain``, ``finetune``) share around the worker: the work key,
the DeepSpeed config, starting the workers (here, or under a launcher), and the export.

    key = work_key(plain_config, corpus_key, tokenizer_dir)
    run_workers(spec, spec_path, ctx.launcher, "finetune")     # resumes from a checkpoint
    figures, timings = export_run(spec, ctx.out_dir, sample_ids, merged=True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from llamagene import locks
from llamagene.errors import StageError, TrainingStopped
from llamagene.manifest import write_text_atomic
from llamagene.training.batch_plan import (
    PROCESSES_ENV,
    BatchPlan,
    launcher_processes,
    settle_batch,
    with_steps,
)
from llamagene.training.spec import (
    FINAL_DIR,
    LOGS_DIR,
    STOPPED_FILE,
    TIMING_FIGURES,
    TrainSettings,
    TrainSpec,
)

log = logging.getLogger("llamagene")
#: Config keys that do not change what is trained (kept out of the work key).
NOT_IN_KEY = ("data_workers", "cache_dir", "export_merged")
#: Training settings that change when checkpoints are written and figures logged, not the weights
#: trained (resume is bit-exact): a killed run resumes after they change. ``eval_every_steps``
#: stays in the key when ``keep_best_checkpoint`` picks the export by dev loss.
NOT_IN_KEY_TRAINING = (
    "save_every_steps", "keep_checkpoints", "log_every_steps",
    # how the same sums are computed (equal to float rounding): a run may resume with another
    # attention kernel, with the loss in chunks, or compiled
    "attn_implementation", "loss_chunk_tokens", "torch_compile",
)  # fmt: skip
#: Figures that differ between identical runs; ``logs/`` is volatile too.
TIMINGS = "timings.json"


def work_key(plain_config: dict[str, Any], data_key: str, tokenizer_dir: Path) -> str:
    """The checkpoint folder's key: the config (but for keys that change nothing trained, such as
    how often checkpoints are saved), the training data's key and the tokenizer."""
    plain = {k: v for k, v in plain_config.items() if k not in NOT_IN_KEY}
    training = dict(plain.get("training") or {})
    if training:
        dropped = NOT_IN_KEY_TRAINING + (
            () if training.get("keep_best_checkpoint") else ("eval_every_steps",)
        )
        plain["training"] = {k: v for k, v in training.items() if k not in dropped}
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True).encode())
    digest.update(data_key.encode())
    digest.update((tokenizer_dir / "tokenizer.json").read_bytes())
    return digest.hexdigest()[:16]


def deepspeed_config(path: Path) -> dict[str, Any]:
    """A DeepSpeed JSON config, checked for what llamagene relies on."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageError(f"{path} does not exist") from None
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise StageError(f"{path}: should be a JSON object")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise StageError(f"{path}: zero_optimization.stage must be 0-3, not {stage!r}")
    return config


def input_problems(base_model: Path | None, deepspeed: Path | None) -> list[str]:
    """What is wrong with a training stage's base model folder and DeepSpeed config (found
    without loading either)."""
    problems = []
    if base_model is not None and not (base_model / "config.json").is_file():
        problems.append(f"base_model: {base_model} is not a HF model folder (no config.json)")
    if deepspeed is not None:
        try:
            deepspeed_config(deepspeed)
        except StageError as err:
            problems.append(f"deepspeed: {err}")
    return problems


def stage_batch_plan(
    settings: TrainSettings, launcher: list[str] | None, where: str, sequence_tokens: int | None
) -> BatchPlan | None:
    """The batch plan for the processes ``launcher`` starts, settled before any work (an
    impossible one stops the stage here, with the fix); None when the launcher does not say
    how many processes it starts (the workers then check the batch themselves)."""
    processes = launcher_processes(launcher)
    if processes is None:
        log.warning(
            "%s: cannot tell from the launcher how many processes it starts; set %s (or "
            "`llamagene run --processes N`) to check the batch plan before any work",
            where.split(".")[0], PROCESSES_ENV,
        )  # fmt: skip
        return None
    return settle_batch(settings, processes, where, sequence_tokens)


def log_plan(
    stage: str, plan: BatchPlan | None, settings: TrainSettings, sequences: int | None
) -> None:
    if plan is not None:
        for line in with_steps(plan, settings, sequences).lines():
            log.info("%s: batch plan: %s", stage, line)


def micro_batch(plan: BatchPlan | None) -> dict[str, Any]:
    """The training settings the plan changes (the micro batch), for the workers' spec."""
    return {} if plan is None else {"micro_batch_size": plan.micro_batch}


def run_workers(spec: TrainSpec, spec_path: Path, launcher: list[str] | None, stage: str) -> None:
    """Train in this process, or start workers under the launcher and wait for them."""
    if (Path(spec.work_dir) / FINAL_DIR / "train_figures.json").is_file():
        log.info("%s: training finished in an earlier run (%s); exporting", stage, spec.work_dir)
        return
    if launcher is None and spec.deepspeed_config is None:
        from llamagene.training.worker import train

        train(spec)
        _check_stopped(spec, stage)
        return
    if launcher is None:  # DeepSpeed needs a process group: a one-process torchrun gives one
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "1"]  # fmt: skip
    program = launcher[0]
    beside_python = Path(sys.executable).parent / program
    if shutil.which(program) is None and "/" not in program and beside_python.is_file():
        program = str(beside_python)  # torchrun / deepspeed of this venv, not activated
    command = [program, *launcher[1:], "--module", "llamagene.training", str(spec_path)]
    log.info("%s: starting workers: %s", stage, " ".join(command))
    try:
        # SIGTERM, not SIGKILL: the launcher (torchrun, deepspeed) then stops its own workers
        done = subprocess.run(command, check=False, preexec_fn=locks.terminate_with_parent)
    except FileNotFoundError:
        raise StageError(f"launcher not found: {launcher[0]} (is it on PATH?)") from None
    _check_stopped(spec, stage)
    if done.returncode != 0:
        raise StageError(
            f"training workers failed (exit {done.returncode}); their output is above. "
            f"Rerun the stage to resume from the last checkpoint in {spec.work_dir}"
        )


def _check_stopped(spec: TrainSpec, stage: str) -> None:
    """Raise :class:`TrainingStopped` when the workers stopped on request (see
    ``StopOnRequest``): the checkpoint is saved and a rerun resumes from it."""
    stopped = Path(spec.work_dir) / STOPPED_FILE
    if stopped.is_file():
        step = json.loads(stopped.read_text(encoding="utf-8")).get("step")
        raise TrainingStopped(
            f"{stage}: training stopped on request after step {step} and saved a checkpoint "
            f"in {spec.work_dir}; rerun the stage to resume"
        )


def export_run(
    spec: TrainSpec, out_dir: Path, sample_ids: list[int], merged: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Export the finished training into ``out_dir`` (``adapter/``, ``merged/`` when asked,
    ``logs/``); returns the reproducible figures and the timings (see ``TIMING_FIGURES``)."""
    from llamagene.training.export import export_adapter, export_merged

    work_dir = Path(spec.work_dir)
    final = work_dir / FINAL_DIR
    figures = json.loads((final / "train_figures.json").read_text(encoding="utf-8"))
    timings = {k: figures.pop(k) for k in TIMING_FIGURES if k in figures}
    start = time.perf_counter()
    export_adapter(spec, final, Path(spec.model.tokenizer_dir), out_dir)
    if merged:
        figures["export"] = export_merged(spec, out_dir, sample_ids)
    timings["export_seconds"] = round(time.perf_counter() - start, 2)
    shutil.copytree(work_dir / LOGS_DIR, out_dir / LOGS_DIR)
    return figures, timings


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
