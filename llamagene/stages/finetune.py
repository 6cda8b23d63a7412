"""Stage ``finetune``: instruction fine-tuning with a new LoRA adapter, loss on the answers only.

Reads   ``build_sft``'s ``train.jsonl`` and ``dev.jsonl`` (through the manifest), ``merge_vocab``'s
        tokenizer, and the base: ``pretrain``'s export (``merged/``) when ``base_model`` is not
        given, or any local HF causal-LM folder (with the merged vocabulary already, or with the
        base tokenizer's: it is then grown as pretrain grows it); an optional DeepSpeed config.
Writes  ``<run_dir>/finetune/``:
          ``adapter/``   the new LoRA adapter (+ trained new embedding rows), the tokenizer with
                         the prompt format as its chat template, ``llamagene_adapter.json``
          ``merged/``    the base with the adapter merged: a plain HF model folder for
                         ``AutoModelForCausalLM`` and ``llamagene chat``
          ``logs/``      ``metrics.jsonl`` (loss, dev loss, lr, tokens/s) and TensorBoard
          ``report.json``, ``timings.json``   data and training figures; wall clock and speed
Run     ``llamagene run PIPELINE.yaml --only finetune``
        ``pipelines/cluster/launch.sh --local --nproc 2 PIPELINE.yaml finetune``  (DeepSpeed etc.)

Every row becomes ids through the prompt format (:mod:`llamagene.prompt_format`): the loss
falls on answer tokens and their EOS only, every assistant turn of a conversation included.
Rows are **packed** by default: a micro batch is one sequence, positions restart per row and
no row attends to another (:mod:`llamagene.training.collate`); ``batching: padded`` pads and
groups rows by length instead. A row longer than ``max_tokens`` (default: the model's
context) stops the stage, or is dropped and counted with ``overflow: drop``; rows are never cut.
Training is pretrain's worker (:mod:`llamagene.training.worker`): the same global batch,
DeepSpeed, launcher, resume from the newest complete checkpoint, logs and export checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from llamagene.config import InputPath, StrictModel, to_plain
from llamagene.errors import StageError
from llamagene.stages import StageContext
from llamagene.training.batch_plan import BatchPlan, settle_batch, with_steps
from llamagene.training.collate import Batching
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
from llamagene.training.sft_data import Overflow
from llamagene.training.spec import ModelSpec, TrainSettings, TrainSpec

log = logging.getLogger("llamagene")
#: Rows of the dev split on which the exported chat template is checked against the format.
_TEMPLATE_CHECK_ROWS = 32


class FinetuneConfig(StrictModel):
    """Config of ``finetune``."""

    base_model: InputPath | None = None
    """A local HF causal-LM folder; default: pretrain's export (``<run_dir>/pretrain/merged``)."""
    batching: Batching = "packed"
    """``packed``: the rows of a micro batch joined into one sequence, no padding, no row
    attending to another; ``padded``: padded to the longest row, grouped by length."""
    max_tokens: int | None = Field(None, ge=8)
    """The longest row trained, in tokens of the prompt format; default: the model's context
    (``max_position_embeddings``)."""
    overflow: Overflow = "error"
    """A row over ``max_tokens``: ``error`` stops the stage (naming how many and the longest);
    ``drop`` drops it and counts it in ``report.json``."""
    lora: LoraSettings = LoraSettings()
    embedding_training: EmbeddingTraining = "trainable_tokens"
    """As in pretrain: ``trainable_tokens`` trains only the new rows (base rows stay
    bit-identical), ``modules_to_save`` full copies, ``frozen`` none."""
    embedding_init: EmbeddingInit = "compose"
    """How new rows start when the base does not have them yet (a base that skipped pretrain)."""
    training: TrainSettings = TrainSettings()
    deepspeed: InputPath | None = None
    """A DeepSpeed JSON config (ZeRO-2: ``pipelines/deepspeed/zero2.json``)."""
    export_merged: bool = True
    """Also write ``merged/``, the full model with the adapter merged in."""


class Finetune:
    name = "finetune"

    def upstream(self, cfg: FinetuneConfig) -> tuple[str, ...]:
        return ("merge_vocab", "build_sft") + (("pretrain",) if cfg.base_model is None else ())

    def inputs(self, cfg: FinetuneConfig) -> dict[str, Path]:
        named: dict[str, Path] = {}
        if cfg.base_model is not None:
            named["base_model"] = cfg.base_model
        if cfg.deepspeed is not None:
            named["deepspeed"] = cfg.deepspeed
        return named

    def check(self, cfg: FinetuneConfig) -> list[str]:
        return input_problems(cfg.base_model, cfg.deepspeed)

    def plan(self, cfg: FinetuneConfig, run_dir: Path, processes: int) -> BatchPlan:
        """The batch plan on ``processes`` processes; steps once build_sft has written rows
        (a micro batch is that many rows, packed or padded)."""
        plan = settle_batch(cfg.training, processes, "finetune.training")
        train = run_dir / "build_sft" / "train.jsonl"
        rows = None
        if train.is_file():
            with train.open("rb") as handle:
                rows = sum(1 for line in handle if line.strip())
        return with_steps(plan, cfg.training, rows)

    def run(self, cfg: FinetuneConfig, ctx: StageContext) -> None:
        from llamagene.prompt_format import FORMAT_VERSION
        from llamagene.training.sft_data import prepare_sft

        tokenizer_dir = ctx.upstream("merge_vocab") / "tokenizer"
        plan = stage_batch_plan(cfg.training, ctx.launcher, "finetune.training", None)
        base_dir = _base_dir(cfg, ctx)
        context = _check_base(base_dir, tokenizer_dir)
        max_tokens = cfg.max_tokens or context
        if max_tokens > context:
            raise StageError(
                f"max_tokens {max_tokens} is more than the model's context of {context} tokens"
            )
        sft_dir = ctx.upstream("build_sft")
        splits = {"train": sft_dir / "train.jsonl", "dev": sft_dir / "dev.jsonl"}
        data_key = _data_key(splits, max_tokens, cfg.overflow, FORMAT_VERSION)
        base = {"base": _folder_identity(base_dir)}  # a re-exported base starts afresh
        work_dir = ctx.work_dir(work_key(to_plain(cfg) | base, data_key, tokenizer_dir))
        stats = prepare_sft(splits, tokenizer_dir, work_dir / "data", max_tokens, cfg.overflow)
        if stats["train"]["rows"] == 0:
            dropped = stats["train"]["dropped_too_long"]
            raise StageError(
                f"{splits['train']}: the train split has no rows to train on"
                + (f" ({dropped} dropped as longer than {max_tokens} tokens)" if dropped else "")
            )
        log.info(
            "finetune: %d train rows (%d tokens, %d trained), %d dev rows; %s batches",
            stats["train"]["rows"], stats["train"]["tokens"], stats["train"]["trained_tokens"],
            stats["dev"]["rows"], cfg.batching,
        )  # fmt: skip
        log_plan(self.name, plan, cfg.training, stats["train"]["rows"])
        spec = TrainSpec(
            model=ModelSpec(
                base_model_dir=str(base_dir),
                base_model_config=None,
                seed=cfg.training.seed,
                tokenizer_dir=str(tokenizer_dir),
                embedding_init=cfg.embedding_init,
                embedding_training=cfg.embedding_training,
                lora=to_plain(cfg.lora),
            ),
            train=to_plain(cfg.training) | micro_batch(plan),
            data_dir=str(work_dir / "data"),
            work_dir=str(work_dir),
            data_kind="sft",
            batching=cfg.batching,
            deepspeed_config=deepspeed_config(cfg.deepspeed) if cfg.deepspeed else None,
            extra={"stage": self.name},
        )
        spec_path = work_dir / "spec.json"
        spec.save(spec_path)
        run_workers(spec, spec_path, ctx.launcher, self.name)

        sample = _sample_ids(work_dir / "data", stats)
        figures, timings = export_run(spec, ctx.out_dir, sample, cfg.export_merged)
        if cfg.export_merged:
            figures["export"]["chat_template_rows"] = _check_chat_template(
                ctx.out_dir / "merged", splits["dev"] if stats["dev"]["rows"] else splits["train"]
            )
        write_json(ctx.out_dir / "report.json", {"data": stats, "base_model": str(base_dir),
                                                  **figures})  # fmt: skip
        write_json(ctx.out_dir / TIMINGS, timings)
        kept = ("steps", "train_loss", "eval_loss", "processes", "trainable_parameters")
        ctx.report.update(
            {k: figures[k] for k in kept}
            | {k: timings.get(k) for k in ("tokens_per_s", "resumed_from_step")}
            | {"train_rows": stats["train"]["rows"], "dev_rows": stats["dev"]["rows"]}
        )


def _base_dir(cfg: FinetuneConfig, ctx: StageContext) -> Path:
    if cfg.base_model is not None:
        return cfg.base_model
    merged = ctx.upstream("pretrain") / "merged"
    if not (merged / "config.json").is_file():
        raise StageError(
            f"pretrain's export {merged} is missing: finetune starts from it. Set "
            "pretrain.export_merged: true and rerun pretrain, or give finetune.base_model"
        )
    return merged


def _check_base(base_dir: Path, tokenizer_dir: Path) -> int:
    """The base's context length, once its vocabulary is known to fit the merged tokenizer:
    its rows are the tokenizer's padded size (an export of pretrain: its tokenizer must then be
    this one), or the base tokenizer's size (a base that skipped pretrain)."""
    from llamagene.training.model import padded_vocab_size, tokenizer_meta

    try:
        config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StageError(f"base model {base_dir}: cannot read config.json ({err})") from None
    meta = tokenizer_meta(tokenizer_dir)
    rows, base_size = int(config.get("vocab_size", -1)), int(meta["base_vocab_size"])
    padded = padded_vocab_size(int(meta["vocab_size"]))
    if rows not in (padded, base_size):
        raise StageError(
            f"base model {base_dir}: its vocabulary ({rows} rows) does not match the merged "
            f"tokenizer ({padded} rows, or {base_size} for a base that was not pretrained): "
            "give the model that pretrain exported, or the original base model"
        )
    own = base_dir / "tokenizer.json"
    if (
        rows == padded
        and own.is_file()
        and own.read_bytes() != (tokenizer_dir / "tokenizer.json").read_bytes()
    ):
        raise StageError(
            f"base model {base_dir}: its tokenizer.json differs from the merged tokenizer "
            f"{tokenizer_dir}: the model was trained with another vocabulary"
        )
    return int(config.get("max_position_embeddings", 2048))


def _folder_identity(folder: Path) -> list[tuple[str, int, int]]:
    """Each file of a model folder by name, size and modification time: cheap, and new when
    the folder is written again (a model's weights are too big to hash on every run)."""
    return [
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*")) if p.is_file()
    ]  # fmt: skip


def _data_key(splits: dict[str, Path], max_tokens: int, overflow: str, version: int) -> str:
    digest = hashlib.sha256(f"{max_tokens}/{overflow}/{version}".encode())
    for path in splits.values():
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _sample_ids(data_dir: Path, stats: dict[str, Any]) -> list[int]:
    """A dev row's ids (or a train row's): the merged model is checked on them."""
    from llamagene.training.sft_data import open_sft

    split = "dev" if stats["dev"]["rows"] else "train"
    return open_sft(data_dir, split)[0]["input_ids"]


def _check_chat_template(model_dir: Path, rows_path: Path) -> int:
    """The exported folder's chat template must give the prompt format's ids on real rows."""
    from transformers import AutoTokenizer

    from llamagene.prompt_format import PromptFormat, messages_of

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    fmt = PromptFormat.from_dir(model_dir)
    lines = rows_path.read_text(encoding="utf-8").splitlines()[:_TEMPLATE_CHECK_ROWS]
    for number, line in enumerate(lines, start=1):
        row = json.loads(line)
        messages = messages_of(row)
        plain = [{"role": m.role, "content": m.content, "markup": row["markup"]} for m in messages]
        got = tokenizer.apply_chat_template(plain, tokenize=True, return_dict=False)
        if list(got) != fmt.encode(messages, bool(row["markup"])).input_ids:
            raise StageError(
                f"{model_dir}: its chat template gives other ids than the prompt format for "
                f"{rows_path}:{number}; please report it"
            )
    return len(lines)


STAGE = Finetune()
