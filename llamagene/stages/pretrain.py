"""Stage ``pretrain``: LoRA continued pretraining on a DNA / protein / English mix.

Reads   ``base_model`` (a local HF LLaMA-family folder) or ``base_model_config`` (a LLaMA built
        from a config: tests, the demo, benchmarks), ``merge_vocab``'s tokenizer, a data recipe
        (``data_recipes/*.yaml``), an optional DeepSpeed config (``pipelines/deepspeed/``).
Writes  ``<run_dir>/pretrain/``:
          ``adapter/``        LoRA adapter with the trained embedding rows, the tokenizer, and
                              ``llamagene_adapter.json`` (rows to resize the base to first)
          ``merged/``         base resized, then the adapter merged: a plain HF model folder
                              (safetensors + tokenizer) for ``AutoModelForCausalLM``
          ``base_model/``     only for a base built from a config: the frozen base it trained on
          ``logs/``           ``metrics.jsonl`` (loss, lr, grad norm, tokens/s) and TensorBoard
          ``corpus_stats.json``, ``report.json``   data and training figures
          ``timings.json``    wall-clock, speed and memory figures, and where a rerun resumed
        Two runs of the same config write byte-identical files, but for ``timings.json`` and
        ``logs/`` (the manifest records those as volatile).
Run     ``llamagene run PIPELINE.yaml --only pretrain``                  (one process)
        ``pipelines/cluster/launch.sh --local --nproc 2 PIPELINE.yaml pretrain``  (DeepSpeed etc.)

The corpus is prepared once, in this process, and cached by content
(:mod:`llamagene.training.corpus`).
Training runs here, or under the launcher given to ``llamagene run --launcher`` (torchrun,
srun + torchrun, deepspeed), as :mod:`llamagene.training` workers. Checkpoints live in
``<run_dir>/.work/pretrain/<key>/`` where ``key`` hashes the config, corpus and tokenizer: rerun
the stage after a crash and it resumes from the newest checkpoint; change the config and it
starts afresh. The folder is removed when the stage succeeds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from llamagene import locks
from llamagene.config import InputPath, StrictModel, to_plain
from llamagene.errors import ConfigError, StageError
from llamagene.manifest import write_text_atomic
from llamagene.stages import StageContext
from llamagene.training.model import EmbeddingInit, EmbeddingTraining, LoraSettings
from llamagene.training.spec import (
    FINAL_DIR,
    LOGS_DIR,
    TIMING_FIGURES,
    ModelSpec,
    TrainSettings,
    TrainSpec,
)

log = logging.getLogger("llamagene")
#: Config keys that do not change what is trained (kept out of the checkpoint key).
_NOT_IN_KEY = ("data_workers", "cache_dir", "export_merged")
#: Figures that differ between identical runs; ``logs/`` is volatile too.
TIMINGS = "timings.json"


class PretrainConfig(StrictModel):
    """Config of ``pretrain``. Defaults follow llama-gene (LoRA r=8, alpha=32, block 512)."""

    base_model: InputPath | None = None
    """A local HF causal-LM folder (LLaMA family, SentencePiece vocabulary of merge_vocab's
    base). Exactly one of ``base_model`` and ``base_model_config``."""
    base_model_config: dict[str, Any] | None = None
    """Build a LLaMA from these ``LlamaConfig`` values (over a tiny default) instead of loading
    one, initialised from ``training.seed``: for tests, the demo and benchmarks."""
    data_recipe: InputPath
    """The corpus: sources, mixing weights, caps, seed (see ``data_recipes/README.md``)."""
    block_size: int = Field(512, ge=16)
    """Tokens per training sequence; documents are packed into blocks with EOS between them."""
    lora: LoraSettings = LoraSettings()
    embedding_init: EmbeddingInit = "compose"
    """New rows start as the mean of the base tokens of their letters (``compose``) or as the
    mean of all base rows (``mean``)."""
    embedding_training: EmbeddingTraining = "modules_to_save"
    """``modules_to_save``: train full embed_tokens and lm_head copies (llama-gene);
    ``trainable_tokens``: train only the new rows (much smaller adapter); ``frozen``: none."""
    training: TrainSettings = TrainSettings()
    deepspeed: InputPath | None = None
    """A DeepSpeed JSON config (ZeRO-2: ``pipelines/deepspeed/zero2.json``); without a launcher
    the stage starts one process under torchrun for it."""
    data_workers: int = Field(0, ge=0)
    """Processes that tokenize the corpus; 0 = one per CPU core, at most 8."""
    cache_dir: InputPath | None = None
    """Where tokenized corpora are cached by content; default ``<run_dir>/.cache/corpus``."""
    export_merged: bool = True
    """Also write ``merged/``, the full model with the adapter merged in."""

    @model_validator(mode="after")
    def _one_base(self) -> PretrainConfig:
        if (self.base_model is None) == (self.base_model_config is None):
            raise ValueError("give exactly one of base_model and base_model_config")
        return self


class Pretrain:
    name = "pretrain"
    upstream: tuple[str, ...] = ("merge_vocab",)

    def inputs(self, cfg: PretrainConfig) -> dict[str, Path]:
        from llamagene.training.data_recipe import load_recipe, recipe_inputs

        named: dict[str, Path] = {"data_recipe": cfg.data_recipe}
        if cfg.base_model is not None:
            named["base_model"] = cfg.base_model
        if cfg.deepspeed is not None:
            named["deepspeed"] = cfg.deepspeed
        if cfg.data_recipe.is_file():
            try:
                recipe = load_recipe(cfg.data_recipe, check_files=False)
            except ConfigError:
                return named  # check() reports it
            named.update({f"data_recipe.{k}": p for k, p in recipe_inputs(recipe).items()})
        return named

    def check(self, cfg: PretrainConfig) -> list[str]:
        from llamagene.training.data_recipe import load_recipe

        problems = []
        if cfg.base_model is not None and not (cfg.base_model / "config.json").is_file():
            problems.append(
                f"base_model: {cfg.base_model} is not a HF model folder (no config.json)"
            )
        try:
            load_recipe(cfg.data_recipe)
        except ConfigError as err:
            problems.extend(f"data_recipe ({err.source}): {p}" for p in err.problems)
        if cfg.deepspeed is not None:
            try:
                _deepspeed_config(cfg.deepspeed)
            except StageError as err:
                problems.append(f"deepspeed: {err}")
        return problems

    def run(self, cfg: PretrainConfig, ctx: StageContext) -> None:
        from llamagene.training.corpus import prepare_corpus
        from llamagene.training.data_recipe import load_recipe

        tokenizer_dir = ctx.upstream("merge_vocab") / "tokenizer"
        recipe = load_recipe(cfg.data_recipe)
        workers = cfg.data_workers or min(8, os.cpu_count() or 1)
        cache_dir = cfg.cache_dir or ctx.run_dir / ".cache" / "corpus"
        corpus = prepare_corpus(recipe, tokenizer_dir, cfg.block_size, cache_dir, workers)
        log.info(
            "pretrain: corpus %s: %d training blocks, %d validation blocks of %d tokens "
            "(packing efficiency %.2f%%)",
            corpus.key[:12], corpus.train_blocks, corpus.valid_blocks, cfg.block_size,
            100 * float(corpus.stats.get("packing_efficiency", 1.0)),
        )  # fmt: skip
        if corpus.train_blocks == 0:
            raise StageError(f"{cfg.data_recipe}: the recipe gives no training blocks")

        work_dir = ctx.work_dir(_work_key(cfg, corpus.key, tokenizer_dir))
        spec = TrainSpec(
            model=ModelSpec(
                base_model_dir=str(cfg.base_model) if cfg.base_model else None,
                base_model_config=cfg.base_model_config,
                seed=cfg.training.seed,
                tokenizer_dir=str(tokenizer_dir),
                embedding_init=cfg.embedding_init,
                embedding_training=cfg.embedding_training,
                lora=to_plain(cfg.lora),
            ),
            train=to_plain(cfg.training),
            corpus_dir=str(corpus.dir),
            work_dir=str(work_dir),
            deepspeed_config=_deepspeed_config(cfg.deepspeed) if cfg.deepspeed else None,
            extra={"stage": self.name},
        )
        spec_path = work_dir / "spec.json"
        spec.save(spec_path)
        _run_workers(spec, spec_path, ctx.launcher)

        final = work_dir / FINAL_DIR
        figures = json.loads((final / "train_figures.json").read_text(encoding="utf-8"))
        timings = {k: figures.pop(k) for k in TIMING_FIGURES if k in figures}
        from llamagene.training.export import export_adapter, export_merged

        start = time.perf_counter()
        export_adapter(spec, final, tokenizer_dir, ctx.out_dir)
        if cfg.export_merged:
            figures["export"] = export_merged(spec, ctx.out_dir, corpus)
        timings["export_seconds"] = round(time.perf_counter() - start, 2)
        shutil.copytree(work_dir / LOGS_DIR, ctx.out_dir / LOGS_DIR)
        stats = dict(corpus.stats)
        if "throughput" in stats:  # how fast the cache was filled, maybe by an earlier run
            timings["corpus_throughput"] = stats.pop("throughput")
        write_text_atomic(ctx.out_dir / "corpus_stats.json", json.dumps(stats, indent=2) + "\n")
        _write_json(ctx.out_dir / "report.json", {"corpus_key": corpus.key, **figures})
        _write_json(ctx.out_dir / TIMINGS, timings)
        kept = ("steps", "train_loss", "eval_loss", "processes", "trainable_parameters")
        ctx.report.update(
            {k: figures[k] for k in kept}
            | {k: timings.get(k) for k in ("tokens_per_s", "resumed_from_step")}
            | {
                "train_blocks": corpus.train_blocks,
                "packing_efficiency": corpus.stats.get("packing_efficiency"),
            }
        )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _run_workers(spec: TrainSpec, spec_path: Path, launcher: list[str] | None) -> None:
    """Train in this process, or start workers under the launcher and wait for them."""
    if (Path(spec.work_dir) / FINAL_DIR / "train_figures.json").is_file():
        log.info("pretrain: training finished in an earlier run (%s); exporting", spec.work_dir)
        return
    if launcher is None and spec.deepspeed_config is None:
        from llamagene.training.worker import train

        train(spec)
        return
    if launcher is None:  # DeepSpeed needs a process group: a one-process torchrun gives one
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "1"]  # fmt: skip
    program = launcher[0]
    beside_python = Path(sys.executable).parent / program
    if shutil.which(program) is None and "/" not in program and beside_python.is_file():
        program = str(beside_python)  # torchrun / deepspeed of this venv, not activated
    command = [program, *launcher[1:], "--module", "llamagene.training", str(spec_path)]
    log.info("pretrain: starting workers: %s", " ".join(command))
    try:
        # SIGTERM, not SIGKILL: the launcher (torchrun, deepspeed) then stops its own workers
        done = subprocess.run(command, check=False, preexec_fn=locks.terminate_with_parent)
    except FileNotFoundError:
        raise StageError(f"launcher not found: {launcher[0]} (is it on PATH?)") from None
    if done.returncode != 0:
        raise StageError(
            f"training workers failed (exit {done.returncode}); their output is above. "
            f"Rerun the stage to resume from the last checkpoint in {spec.work_dir}"
        )


def _work_key(cfg: PretrainConfig, corpus_key: str, tokenizer_dir: Path) -> str:
    plain = {k: v for k, v in to_plain(cfg).items() if k not in _NOT_IN_KEY}
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True).encode())
    digest.update(corpus_key.encode())
    digest.update((tokenizer_dir / "tokenizer.json").read_bytes())
    return digest.hexdigest()[:16]


def _deepspeed_config(path: Path) -> dict[str, Any]:
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


STAGE = Pretrain()
