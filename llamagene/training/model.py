"""Models for the training stages: the base model, its grown vocabulary, LoRA, and the export.

    model = build_base_model(base_model_dir=None, base_model_config={"hidden_size": 64}, seed=0)
    grown = grow_embeddings(model, tokenizer_dir, init="compose")    # 32,000 -> 40,000 rows
    peft_model = attach_lora(model, LoraSettings(), grown.new_token_ids, "modules_to_save")

**Growing the vocabulary.** The merged tokenizer keeps the base's ids and appends the DNA and
protein pieces (``llamagene_tokenizer.json`` gives their range). The embedding matrix and the
output layer grow to the merged size rounded up to a multiple of 64 (tensor-core friendly).
Each new piece's row starts as the mean of the base rows of the tokens the *base* tokenizer
splits the piece's letters into inside a word (``compose``): a DNA piece ``ACGTT`` starts where
the base model already puts "ACGTT" in running text (no word-start ``▁`` tokens). ``mean``
starts every new row at the mean of all base rows (the usual recipe); padding rows beyond the
tokenizer always get that mean.

**Training the new rows.** ``trainable_tokens`` (the default) trains only the new rows (PEFT's
``trainable_token_indices``): the base rows of ``embed_tokens`` and ``lm_head`` stay
bit-identical, so English is untouched, and the adapter stays small. ``modules_to_save`` trains
full copies of ``embed_tokens`` and ``lm_head`` as llama-gene did (the adapter then holds two
vocab x hidden matrices, and English rows move too); ``frozen`` trains no embedding rows. The
rows past the tokenizer (padding to a multiple of 64) are never a token: the exported
generation config suppresses them. Either way the adapter holds the rows' full
values, so it needs only the base model, resized first (:func:`load_adapter_model`): loading or
merging an adapter with grown embeddings into an un-resized base is the classic export failure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field

from llamagene.alphabets import from_model_text
from llamagene.config import StrictModel
from llamagene.errors import StageError
from llamagene.vocab import TOKENIZER_META

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel

log = logging.getLogger("llamagene")

EmbeddingInit = Literal["compose", "mean"]
#: Every linear layer of a LLaMA block (llama-gene's LoRA targets).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EmbeddingTraining = Literal["modules_to_save", "trainable_tokens", "frozen"]
#: Embedding rows are padded to a multiple of this (GPU matmul tiles).
PAD_VOCAB_TO = 64
#: A small LLaMA for tests and the demo; ``base_model_config`` keys override these.
TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 172,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


class LoraSettings(StrictModel):
    """LoRA on the attention and MLP projections; llama-gene's values are the defaults."""

    r: int = Field(8, ge=1)
    """Rank of each adapter."""
    alpha: int = Field(32, ge=1)
    """Scale: the update is multiplied by ``alpha / r``."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the adapter's input."""
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_PROJECTIONS))
    """Names of the linear layers that get adapters."""


@dataclass(frozen=True)
class GrownVocab:
    """What :func:`grow_embeddings` did."""

    base_vocab_size: int
    tokenizer_size: int
    rows: int
    new_token_ids: list[int]
    init: EmbeddingInit
    composed_from_base: int
    """New pieces whose row was composed from base tokens (the rest got the mean)."""
    grown_before: bool = False
    """The model had the merged vocabulary already (an export of ``pretrain``)."""


def tokenizer_meta(tokenizer_dir: Path) -> dict[str, Any]:
    """``llamagene_tokenizer.json`` of a merged tokenizer folder (written by merge_vocab)."""
    path = tokenizer_dir / TOKENIZER_META
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: not a merged llamagene tokenizer ({err})") from None
    return meta


def padded_vocab_size(tokenizer_size: int) -> int:
    return math.ceil(tokenizer_size / PAD_VOCAB_TO) * PAD_VOCAB_TO


def build_base_model(
    base_model_dir: Path | None,
    base_model_config: Mapping[str, Any] | None,
    seed: int,
    vocab_size: int,
    dtype: torch.dtype | None = None,
) -> PreTrainedModel:
    """Load a local HF causal LM, or build a LLaMA from ``TINY_LLAMA`` + ``base_model_config``.

    A built model is initialised from ``seed`` and has ``vocab_size`` rows (the base tokenizer's
    size), so it stands where a pretrained base would.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if base_model_dir is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(base_model_dir), dtype=dtype or torch.float32, local_files_only=True
            )
        except (OSError, ValueError) as err:
            raise StageError(f"base_model {base_model_dir}: cannot load it: {err}") from None
        return model
    settings = {**TINY_LLAMA, **(base_model_config or {}), "vocab_size": vocab_size}
    try:
        config = LlamaConfig(**settings)
    except (TypeError, ValueError) as err:
        raise StageError(f"base_model_config: {err}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built: PreTrainedModel = LlamaForCausalLM(config)
    if dtype is not None:
        built = cast("PreTrainedModel", built.to(dtype))  # type: ignore[arg-type]
    return built


def grow_embeddings(model: PreTrainedModel, tokenizer_dir: Path, init: EmbeddingInit) -> GrownVocab:
    """Resize ``model`` to the merged tokenizer and initialise the new rows (see module doc)."""
    import torch
    from transformers import AutoTokenizer

    meta = tokenizer_meta(tokenizer_dir)
    base_size, tok_size = int(meta["base_vocab_size"]), int(meta["vocab_size"])
    # the module's row count: under ZeRO-3 the weight itself is an empty partition here
    old_rows = int(getattr(model.get_input_embeddings(), "num_embeddings"))  # noqa: B009
    if old_rows < base_size:
        raise StageError(
            f"the base model has {old_rows} embedding rows but the tokenizer's base vocabulary "
            f"has {base_size}: the model and {tokenizer_dir} do not belong together"
        )
    rows = padded_vocab_size(tok_size)
    new_ids = list(range(base_size, tok_size))
    if old_rows == rows:  # grown already (pretrain's export): its new rows are trained ones
        return GrownVocab(base_size, tok_size, rows, new_ids, init, 0, grown_before=True)
    if old_rows > base_size:
        raise StageError(
            f"the base model has {old_rows} embedding rows, but the merged tokenizer has "
            f"{base_size} base pieces and {tok_size} in all ({rows} rows, padded to a multiple "
            f"of {PAD_VOCAB_TO}): the model and {tokenizer_dir} do not belong together"
        )
    parts: dict[int, list[int]] = {}
    if init == "compose":
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        pieces = tokenizer.convert_ids_to_tokens(new_ids)
        for token_id, piece in zip(new_ids, pieces, strict=True):
            ids = _base_ids(tokenizer, piece, base_size)
            if ids:
                parts[token_id] = ids
    model.resize_token_embeddings(rows, mean_resizing=False)
    with gathered(embedding_matrices(model)), torch.no_grad():
        for weight in embedding_matrices(model):
            weight[base_size:] = weight[:base_size].float().mean(dim=0).to(weight.dtype)
            for token_id, ids in parts.items():
                weight[token_id] = weight[ids].float().mean(dim=0).to(weight.dtype)
    model.config.vocab_size = rows
    composed = len(parts)
    return GrownVocab(base_size, tok_size, rows, new_ids, init, composed)


def gathered(params: list[torch.Tensor]) -> contextlib.AbstractContextManager[Any]:
    """Whole parameters inside the block, written back to their partitions after it, under
    DeepSpeed ZeRO-3 (a no-op otherwise)."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():  # type: ignore[no-untyped-call]
        return contextlib.nullcontext()
    import deepspeed

    return cast(
        "contextlib.AbstractContextManager[Any]",
        deepspeed.zero.GatheredParameters(params, modifier_rank=0),
    )


def held_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(elements this process holds, elements in all): the same under DDP, about 1/N of
    them with ZeRO-3 partitioning over N processes."""
    held = total = 0
    for param in model.parameters():
        partition = getattr(param, "ds_tensor", None)
        held += partition.numel() if partition is not None else param.numel()
        total += int(getattr(param, "ds_numel", param.numel()))
    return held, total


def embedding_matrices(model: PreTrainedModel) -> list[torch.Tensor]:
    """The input embedding matrix, and the output one unless the two are tied."""
    matrices = [cast("torch.Tensor", model.get_input_embeddings().weight)]
    output = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    if output is not None:
        out_weight = cast("torch.Tensor", output.weight)
        tied = out_weight is matrices[0] or (
            out_weight.numel() > 0 and out_weight.data_ptr() == matrices[0].data_ptr()
        )  # (a ZeRO-3 partitioned weight is an empty tensor here: compare objects)
        if not tied:
            matrices.append(out_weight)
    return matrices


def _base_ids(tokenizer: Any, piece: str, base_size: int) -> list[int]:
    """The base tokenizer's ids for a new piece's letters (``\ue000\ue001`` -> "AC"), as
    they are split *inside* a word: the BPE model itself runs on the letters, without the
    normaliser or pre-tokeniser that would add the dummy prefix (``▁``), so the row starts
    from the tokens of "...ACGT..." in running text, never from word-start tokens (``▁AC``)."""
    letters = from_model_text(piece).replace("\u2581", " ").strip()
    if not letters or " " in letters:
        return []
    tokens = tokenizer.backend_tokenizer.model.tokenize(letters)
    return [int(t.id) for t in tokens if int(t.id) < base_size]


def attach_lora(
    model: PreTrainedModel,
    lora: LoraSettings,
    new_token_ids: list[int],
    embedding_training: EmbeddingTraining,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; only adapters and the chosen embedding rows train.
    With ``trainable_tokens`` only the new rows of embed_tokens and lm_head train: the base
    rows stay bit-identical, so English is untouched."""
    from peft import LoraConfig, get_peft_model

    extra: dict[str, Any] = {}
    if embedding_training == "modules_to_save":
        extra["modules_to_save"] = ["embed_tokens", "lm_head"]
    elif embedding_training == "trainable_tokens" and new_token_ids:
        extra["trainable_token_indices"] = {
            "embed_tokens": new_token_ids,
            "lm_head": new_token_ids,
        }
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
        **extra,
    )
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise StageError(f"lora: {err}") from None
    return peft_model


def load_adapter_model(base: PreTrainedModel, adapter_dir: Path) -> PeftModel:
    """Attach an exported adapter (``<run_dir>/pretrain/adapter``) to the original ``base``.

    The base is first grown to the merged vocabulary exactly as in training (same rows, same
    initialisation, read from the adapter folder's ``llamagene_adapter.json`` and tokenizer):
    rows the adapter does not hold (padding rows, or every new row when they were frozen) must
    match what training saw.
    """
    from peft import PeftModel

    info = json.loads((adapter_dir / "llamagene_adapter.json").read_text(encoding="utf-8"))
    grown = grow_embeddings(base, adapter_dir, info["embedding_init"])
    if grown.rows != int(info["rows"]):
        raise StageError(
            f"{adapter_dir}: the adapter was trained with {info['rows']} embedding rows, but "
            f"this base grows to {grown.rows}"
        )
    return PeftModel.from_pretrained(base, str(adapter_dir))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""

    def count(param: torch.Tensor) -> int:
        return int(getattr(param, "ds_numel", param.numel()))  # whole, when partitioned

    trainable = sum(count(p) for p in model.parameters() if p.requires_grad)
    total = sum(count(p) for p in model.parameters())
    return trainable, total
