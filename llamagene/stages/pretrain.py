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

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from llamagene.config import InputPath, StrictModel, to_plain
from llamagene.errors import ConfigError, StageError
from llamagene.machine import usable_cpus
from llamagene.manifest import write_text_atomic
from llamagene.stages import StageContext
from llamagene.training.batch_plan import BatchPlan, settle_batch, with_steps
from llamagene.training.model import EmbeddingInit, EmbeddingTraining, LoraSettings
from llamagene.training.run import (
    TIMINGS,
    deepspeed_config,
    export_run,
    input_problems,
    log_plan,
    micro_batch,
    run_workers,
    stage_batch_plan,
    work_key,
    write_json,
)
from llamagene.training.spec import ModelSpec, TrainSettings, TrainSpec

if TYPE_CHECKING:
    from llamagene.training.corpus import PackedCorpus

log = logging.getLogger("llamagene")


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
    embedding_training: EmbeddingTraining = "trainable_tokens"
    """``trainable_tokens``: train only the new rows (base rows stay bit-identical; small
    adapter); ``modules_to_save``: train full embed_tokens and lm_head copies (llama-gene);
    ``frozen``: none. Their learning rate: ``training.embedding_lr``."""
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

    def upstream(self, cfg: PretrainConfig) -> tuple[str, ...]:
        return ("merge_vocab",)

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

        problems = input_problems(cfg.base_model, cfg.deepspeed)
        try:
            load_recipe(cfg.data_recipe)
        except ConfigError as err:
            problems.extend(f"data_recipe ({err.source}): {p}" for p in err.problems)
        return problems

    def prepare(self, cfg: PretrainConfig, run_dir: Path) -> PackedCorpus:
        """The tokenized, packed corpus (built into the cache, or found there): the CPU work
        before training, which ``llamagene prepare`` runs as a job of its own."""
        from llamagene.training.corpus import prepare_corpus
        from llamagene.training.data_recipe import load_recipe

        tokenizer_dir = run_dir / "merge_vocab" / "tokenizer"
        recipe = load_recipe(cfg.data_recipe)
        workers = cfg.data_workers or min(8, usable_cpus())
        cache = _cache(cfg, run_dir)
        corpus = prepare_corpus(recipe, tokenizer_dir, cfg.block_size, cache, workers)
        log.info(
            "pretrain: corpus %s: %d training blocks, %d validation blocks of %d tokens "
            "(packing efficiency %.2f%%)",
            corpus.key[:12], corpus.train_blocks, corpus.valid_blocks, cfg.block_size,
            100 * float(corpus.stats.get("packing_efficiency", 1.0)),
        )  # fmt: skip
        if corpus.train_blocks == 0:
            raise StageError(f"{cfg.data_recipe}: the recipe gives no training blocks")
        return corpus

    def plan(self, cfg: PretrainConfig, run_dir: Path, processes: int) -> BatchPlan:
        """The batch plan on ``processes`` processes; steps when the corpus is in the cache."""
        from llamagene.training.corpus import cached_corpus
        from llamagene.training.data_recipe import load_recipe

        plan = settle_batch(cfg.training, processes, "pretrain.training", cfg.block_size)
        tokenizer_dir = run_dir / "merge_vocab" / "tokenizer"
        corpus = None
        if (tokenizer_dir / "tokenizer.json").is_file():
            corpus = cached_corpus(
                load_recipe(cfg.data_recipe), tokenizer_dir, cfg.block_size, _cache(cfg, run_dir)
            )
        return with_steps(plan, cfg.training, corpus.train_blocks if corpus else None)

    def run(self, cfg: PretrainConfig, ctx: StageContext) -> None:
        tokenizer_dir = ctx.upstream("merge_vocab") / "tokenizer"
        plan = stage_batch_plan(cfg.training, ctx.launcher, "pretrain.training", cfg.block_size)
        corpus = self.prepare(cfg, ctx.run_dir)
        log_plan(self.name, plan, cfg.training, corpus.train_blocks)
        work_dir = ctx.work_dir(work_key(to_plain(cfg), corpus.key, tokenizer_dir))
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
            train=to_plain(cfg.training) | micro_batch(plan),
            data_dir=str(corpus.dir),
            work_dir=str(work_dir),
            deepspeed_config=deepspeed_config(cfg.deepspeed) if cfg.deepspeed else None,
            extra={"stage": self.name},
        )
        if cfg.base_model_config is not None:
            from llamagene.training.worker import save_config_base

            save_config_base(spec.model, work_dir)  # once, before the workers load it
        spec_path = work_dir / "spec.json"
        spec.save(spec_path)
        run_workers(spec, spec_path, ctx.launcher, self.name)

        from llamagene.training.export import corpus_sample

        figures, timings = export_run(spec, ctx.out_dir, corpus_sample(corpus), cfg.export_merged)
        stats = dict(corpus.stats)
        if "throughput" in stats:  # how fast the cache was filled, maybe by an earlier run
            timings["corpus_throughput"] = stats.pop("throughput")
        write_text_atomic(ctx.out_dir / "corpus_stats.json", json.dumps(stats, indent=2) + "\n")
        write_json(ctx.out_dir / "report.json", {"corpus_key": corpus.key, **figures})
        write_json(ctx.out_dir / TIMINGS, timings)
        kept = ("steps", "train_loss", "eval_loss", "eval_loss_per_source", "processes",
                "trainable_parameters")  # fmt: skip
        ctx.report.update(
            {k: figures[k] for k in kept}
            | {k: timings.get(k) for k in ("tokens_per_s", "resumed_from_step")}
            | {
                "train_blocks": corpus.train_blocks,
                "packing_efficiency": corpus.stats.get("packing_efficiency"),
            }
        )


def _cache(cfg: PretrainConfig, run_dir: Path) -> Path:
    return cfg.cache_dir or run_dir / ".cache" / "corpus"


STAGE = Pretrain()
