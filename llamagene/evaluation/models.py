"""The models ``evaluate`` scores, loaded and checked against the merged tokenizer.

An exported model folder (``finetune/merged``, ``pretrain/merged``) is loaded as ``llamagene
chat`` loads it: its embedding rows must be the tokenizer's size rounded up to a multiple of 64,
else it is a one-line error ("do not belong together"). The untuned base is a base model
folder grown to the merged vocabulary with the ``compose`` init, as the training stages grow it,
so all models are scored with the same tokenizer and prompt format. float32 on the CPU; an
exported model in bfloat16 on a CUDA GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamagene.errors import LlamageneError, StageError
from llamagene.evaluation.predict import ModelRunner
from llamagene.prompt_format import PromptFormat


def load_exported(
    folder: Path, name: str, fmt: PromptFormat, tokenizer_dir: Path, batch_tokens: int
) -> ModelRunner:
    """An exported model folder (``<stage>/merged``) ready to score."""
    from llamagene.generation import load_for_generation

    if not (folder / "config.json").is_file():
        raise StageError(f"{folder}: missing: {name} must export merged/ to be evaluated")
    try:
        generator = load_for_generation(folder)
    except LlamageneError as err:
        raise StageError(f"{name} model: {err}") from None
    return _runner(generator.model, generator.context_length, fmt, tokenizer_dir, batch_tokens)


def load_grown_base(
    folder: Path, fmt: PromptFormat, tokenizer_dir: Path, batch_tokens: int
) -> ModelRunner:
    """The untuned base, its new embedding rows composed from base tokens."""
    import torch

    from llamagene.training.model import build_base_model, grow_embeddings

    if not (folder / "config.json").is_file():
        raise StageError(
            f"{folder}: no untuned base to evaluate (pretrain keeps one only when it builds the "
            "base from a config): give evaluate.base_model, the folder pretrain started from"
        )
    model = build_base_model(folder, None, 0, 0)
    grow_embeddings(model, tokenizer_dir, "compose")
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    context = int(getattr(model.config, "max_position_embeddings", 2048))
    return _runner(model, context, fmt, tokenizer_dir, batch_tokens)


def english_perplexity(runner: ModelRunner, ids: list[int]) -> dict[str, float]:
    """Perplexity of a held-out English text's ids (:func:`.scoring.perplexity`)."""
    from llamagene.evaluation.scoring import perplexity

    value, tokens = perplexity(
        runner.model, ids, bos_id=runner.format.bos_id, context=runner.context or 2048
    )
    return {"perplexity": value, "tokens": tokens}


def _runner(
    model: Any, context: int | None, fmt: PromptFormat, tokenizer_dir: Path, batch_tokens: int
) -> ModelRunner:
    from llamagene.training.export import padding_rows

    return ModelRunner(
        model=model, format=fmt, context=context, pad_id=fmt.eos_id,
        suppress=tuple(padding_rows(tokenizer_dir)), batch_tokens=batch_tokens,
    )  # fmt: skip
