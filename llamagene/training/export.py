"""Export a trained adapter, and the full model with it merged, so that plain HF code loads them.

    export_adapter(spec, work_dir / "final", tokenizer_dir, out_dir)   # out_dir/adapter/
    export_merged(spec, out_dir, corpus)                               # out_dir/merged/

The merged model is made the only safe way: the base is rebuilt exactly as training saw it
(grown to the merged vocabulary, new rows initialised the same way), the adapter is loaded onto
it and merged. The merge is checked in fp32 before any cast (logits on a validation block,
within a depth-scaled tolerance); the model is then cast, saved with the tokenizer, the saved
tensors checked equal to the cast ones, and the folder loaded back with
``AutoModelForCausalLM`` / ``AutoTokenizer`` to generate a few tokens.

The adapter is self-contained: ``adapter_config.json`` names the base, and
``grown_rows.safetensors`` holds the initial values of the grown embedding rows the adapter does
not hold (the padding rows; every new row when they were frozen), so plain transformers + PEFT
rebuild the grown base without llamagene (``llamagene_adapter.json``'s ``how_to_load``).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamagene.manifest import write_text_atomic
from llamagene.prompt_format import CHAT_TEMPLATE_FILE
from llamagene.training.model import padded_vocab_size, tokenizer_meta

if TYPE_CHECKING:
    from llamagene.training.corpus import PackedCorpus
    from llamagene.training.spec import TrainSpec

log = logging.getLogger("llamagene")
ADAPTER_META = "llamagene_adapter.json"
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "llamagene_tokenizer.json", CHAT_TEMPLATE_FILE,
)  # fmt: skip
#: ``adapter_config.json`` values that PEFT holds as sets (their order means nothing).
_SET_VALUED = ("target_modules", "exclude_modules")


def copy_tokenizer(tokenizer_dir: Path, out_dir: Path) -> None:
    for name in _TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out_dir / name)


#: Rows of the grown embeddings that the adapter does not hold (``grown_rows.safetensors``).
GROWN_ROWS = "grown_rows.safetensors"


def export_adapter(spec: TrainSpec, final_dir: Path, tokenizer_dir: Path, out_dir: Path) -> None:
    """``out_dir/adapter`` (+ ``out_dir/base_model`` when the base was built from a config).
    The adapter names its base: where the config gave it, or ``../base_model`` (relative to
    the adapter folder, so that two runs in different folders write the same bytes) for a base
    built from a config."""
    adapter_dir = out_dir / "adapter"
    shutil.copytree(
        final_dir,
        adapter_dir,
        ignore=shutil.ignore_patterns("train_figures.json", "training_args.bin", "README.md"),
    )
    work_dir = Path(spec.work_dir)
    if spec.model.base_model_dir is None:
        shutil.copytree(work_dir / "base_model", out_dir / "base_model")
        base_name = "../base_model"
    else:
        base_name = str(Path(spec.model.base_model_dir).resolve())
    normalize_adapter_config(adapter_dir / "adapter_config.json", base_name)
    copy_tokenizer(tokenizer_dir, adapter_dir)
    meta = tokenizer_meta(tokenizer_dir)
    rows = padded_vocab_size(int(meta["vocab_size"]))
    first = _first_row_not_held(spec, int(meta["base_vocab_size"]), int(meta["vocab_size"]))
    if first < rows:
        _save_grown_rows(spec, work_dir, first, adapter_dir / GROWN_ROWS)
    info = {
        "format": "llamagene-adapter",
        "version": 2,
        "base_model": base_name,
        "rows": int(rows),
        "base_vocab_size": meta["base_vocab_size"],
        "tokenizer_size": meta["vocab_size"],
        "embedding_init": spec.model.embedding_init,
        "embedding_training": spec.model.embedding_training,
        "grown_rows": {"file": GROWN_ROWS, "first_row": first} if first < rows else None,
        "how_to_load": (
            "base = AutoModelForCausalLM.from_pretrained(adapter_config's "
            "base_model_name_or_path, a relative one taken from this folder); "
            "base.resize_token_embeddings(rows); copy the tensors of "
            f"{GROWN_ROWS} (embed_tokens, and lm_head unless tied) into rows first_row.. of the "
            "input and output embeddings; PeftModel.from_pretrained(base, this folder). Or "
            "load ../merged with AutoModelForCausalLM"
        ),
    }
    write_text_atomic(adapter_dir / ADAPTER_META, json.dumps(info, indent=2, sort_keys=True) + "\n")


def _first_row_not_held(spec: TrainSpec, base_size: int, tokenizer_size: int) -> int:
    """The first embedding row the adapter does not hold: full copies hold every row, PEFT's
    trainable tokens the new rows, a frozen vocabulary none of the grown ones."""
    training = spec.model.embedding_training
    if training == "modules_to_save":
        return padded_vocab_size(tokenizer_size)
    return tokenizer_size if training == "trainable_tokens" else base_size


def _save_grown_rows(spec: TrainSpec, work_dir: Path, first: int, path: Path) -> None:
    """The rows ``first..`` of the grown base's embeddings, as training started them."""
    import torch
    from safetensors.torch import save_file

    from llamagene.training.model import embedding_matrices
    from llamagene.training.worker import build_model

    base = build_model(spec.model, work_dir, torch.float32)
    names = ("embed_tokens", "lm_head")
    tensors = {
        name: weight[first:].detach().clone().contiguous()
        for name, weight in zip(names, embedding_matrices(base), strict=False)
    }
    save_file(tensors, str(path), metadata={"first_row": str(first)})


def padding_rows(tokenizer_dir: Path) -> list[int]:
    """The embedding rows past the tokenizer (the vocabulary rounded up to a multiple of 64)."""
    size = int(tokenizer_meta(tokenizer_dir)["vocab_size"])
    return list(range(size, padded_vocab_size(size)))


def _generation_defaults(model: Any, tokenizer_dir: Path) -> None:
    """BOS, EOS and pad (EOS) ids, and the padding rows suppressed: no decoding ever picks
    a row that no token stands for."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = model.generation_config
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.eos_token_id
    config.suppress_tokens = padding_rows(tokenizer_dir) or None


def normalize_adapter_config(path: Path, base_model: str | None) -> None:
    """Rewrite PEFT's ``adapter_config.json`` the same way every run: PEFT keeps
    ``target_modules`` (and ``exclude_modules``) as a set, so it lists them in a different
    order in each process; sorted lists and sorted keys load back the same. The base is named
    where it will stay (PEFT would name the scratch folder a resumed run loaded it from)."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model
    for key in _SET_VALUED:
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def corpus_sample(corpus: PackedCorpus) -> list[int]:
    """The ids the merged model is checked on: the first 64 of a validation block."""
    data = corpus.dataset("valid") if corpus.valid_blocks else corpus.dataset("train")
    return [int(i) for i in data[0]["input_ids"][:64]]


def export_merged(spec: TrainSpec, out_dir: Path, sample_ids: list[int]) -> dict[str, Any]:
    """Merge the adapter into the base, check the merge, save ``out_dir/merged`` and check
    what was saved. Its generation config suppresses the padding rows (never a token).

    The merge is checked in fp32, before any cast: the merged model's logits on
    ``sample_ids`` must equal the adapter model's within a tolerance that grows with depth
    (float sums over more layers) and the logits' scale. The model is then cast to the
    training precision and saved, and the saved tensors must equal the cast ones exactly. The
    folder is loaded back with the auto classes and generates; how far bf16 rounding moved its
    logits (largest difference, top-1 agreement with the fp32 adapter model) is reported."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamagene.errors import StageError
    from llamagene.training.spec import resolve_precision
    from llamagene.training.worker import build_model

    work_dir = Path(spec.work_dir)
    base = build_model(spec.model, work_dir, torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(out_dir / "adapter")).eval()
    sample = torch.tensor([sample_ids])
    with torch.no_grad():
        expected = peft_model(input_ids=sample).logits
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(input_ids=sample).logits
    max_diff = float((merged_logits - expected).abs().max())
    layers = int(getattr(merged.config, "num_hidden_layers", 1))
    tolerance = merge_tolerance(layers, float(expected.abs().max()))
    if not max_diff <= tolerance:
        raise StageError(
            f"the merged model's logits differ from the adapter model's by {max_diff:.3g} in "
            f"fp32 (tolerance {tolerance:.3g} for {layers} layers): the merge is wrong; "
            "please report it"
        )
    save_dtype = torch.bfloat16 if resolve_precision(spec.train["precision"]) == "bf16" else None
    if save_dtype is not None:
        merged = merged.to(save_dtype)
    merged_dir = out_dir / "merged"
    _generation_defaults(merged, Path(spec.model.tokenizer_dir))
    merged.save_pretrained(str(merged_dir), safe_serialization=True)
    copy_tokenizer(Path(spec.model.tokenizer_dir), merged_dir)
    mismatch = _saved_mismatch(merged, merged_dir)
    if mismatch is not None:
        raise StageError(f"{merged_dir}: {mismatch}: the saved model is not the merged one")
    del merged, peft_model, base

    loaded = AutoModelForCausalLM.from_pretrained(
        str(merged_dir), dtype=torch.float32, local_files_only=True
    )
    loaded.train(False)
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    with torch.no_grad():
        got = loaded(input_ids=sample).logits
    saved_diff = float((got - expected).abs().max())
    top1 = float((got.argmax(-1) == expected.argmax(-1)).float().mean())
    prompt = sample[:, :16]
    with torch.no_grad():
        generated = loaded.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=8,
            min_new_tokens=8,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    new_tokens = int(generated.shape[1] - prompt.shape[1])
    log.info(
        "export: merge checked in fp32 (max |logit difference| vs adapter %.2e, tolerance "
        "%.2e); saved %s weights reloaded: max difference %.2e, top-1 agreement %.3f; "
        "generated %d tokens", max_diff, tolerance, "bf16" if save_dtype else "fp32",
        saved_diff, top1, new_tokens,
    )  # fmt: skip
    return {
        "max_logit_diff": max_diff,
        "merge_tolerance": tolerance,
        "saved_dtype": "bf16" if save_dtype is not None else "fp32",
        "saved_max_logit_diff": saved_diff,
        "saved_top1_agreement": top1,
        "generated_tokens": new_tokens,
    }


def merge_tolerance(layers: int, logit_scale: float) -> float:
    """How far fp32 merged logits may stray from the adapter model's: 1e-5 of the logits'
    scale per layer, summed as independent rounding errors grow (the square root of depth).
    A 2-layer model with logits near 10 allows ~1.6e-4; a 32-layer 7B, ~6e-4. A wrong merge
    (a missed scaling, a row left out) is off by orders of magnitude more."""
    return 1e-5 * max(logit_scale, 1.0) * math.sqrt(max(layers, 1)) + 1e-5


def _saved_mismatch(model: Any, folder: Path) -> str | None:
    """Whether the safetensors files in ``folder`` hold exactly ``model``'s tensors."""
    import torch
    from safetensors import safe_open

    state = model.state_dict()
    seen = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name not in state:
                    return f"{path.name} holds {name}, which the model lacks"
                if not torch.equal(handle.get_tensor(name), state[name].detach().cpu()):
                    return f"{path.name}: {name} differs from the model's"
                seen += 1
    return None if seen else "no weights were saved"
