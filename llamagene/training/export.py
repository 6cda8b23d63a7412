"""Export a trained adapter, and the full model with it merged, so that plain HF code loads them.

    export_adapter(spec, work_dir / "final", tokenizer_dir, out_dir)   # out_dir/adapter/
    export_merged(spec, out_dir, corpus)                               # out_dir/merged/

The merged model is made the only safe way: the base is rebuilt exactly as training saw it
(grown to the merged vocabulary, new rows initialised the same way), the adapter is loaded onto
it, merged, and saved with the tokenizer. The export is then checked: the saved folder is loaded
back with ``AutoModelForCausalLM`` / ``AutoTokenizer``, its logits are compared with the adapter
model's on a validation block, and it generates a few tokens.
"""

from __future__ import annotations

import json
import logging
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


def export_adapter(spec: TrainSpec, final_dir: Path, tokenizer_dir: Path, out_dir: Path) -> None:
    """``out_dir/adapter`` (+ ``out_dir/base_model`` when the base was built from a config)."""
    adapter_dir = out_dir / "adapter"
    shutil.copytree(
        final_dir,
        adapter_dir,
        ignore=shutil.ignore_patterns("train_figures.json", "training_args.bin", "README.md"),
    )
    normalize_adapter_config(adapter_dir / "adapter_config.json", spec.model.base_model_dir)
    copy_tokenizer(tokenizer_dir, adapter_dir)
    work_dir = Path(spec.work_dir)
    if spec.model.base_model_dir is None:
        shutil.copytree(work_dir / "base_model", out_dir / "base_model")
    meta = tokenizer_meta(tokenizer_dir)
    rows = padded_vocab_size(int(meta["vocab_size"]))
    info = {
        "format": "llamagene-adapter",
        "version": 1,
        "base_model": spec.model.base_model_dir or "base_model (built from a config)",
        "rows": int(rows),
        "base_vocab_size": meta["base_vocab_size"],
        "tokenizer_size": meta["vocab_size"],
        "embedding_init": spec.model.embedding_init,
        "embedding_training": spec.model.embedding_training,
        "how_to_load": "resize the base model's embeddings to `rows` (new rows initialised "
        "with llamagene.training.model.grow_embeddings) before PeftModel.from_pretrained; or load "
        "../merged with AutoModelForCausalLM",
    }
    write_text_atomic(adapter_dir / ADAPTER_META, json.dumps(info, indent=2, sort_keys=True) + "\n")


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
    as the config gave it (``None`` for one built from a config: PEFT would name the
    scratch folder a resumed run loaded it from)."""
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
    """Merge the adapter into the base, save ``out_dir/merged``, load it back and check it on
    ``sample_ids``. Its generation config suppresses the padding rows (never a token)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamagene.training.spec import resolve_precision
    from llamagene.training.worker import build_model

    work_dir = Path(spec.work_dir)
    base = build_model(spec.model, work_dir, torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(out_dir / "adapter")).eval()
    sample = torch.tensor([sample_ids])
    with torch.no_grad():
        expected = peft_model(input_ids=sample).logits
    merged = peft_model.merge_and_unload()
    save_dtype = torch.bfloat16 if resolve_precision(spec.train["precision"]) == "bf16" else None
    if save_dtype is not None:
        merged = merged.to(save_dtype)
    merged_dir = out_dir / "merged"
    _generation_defaults(merged, Path(spec.model.tokenizer_dir))
    merged.save_pretrained(str(merged_dir), safe_serialization=True)
    copy_tokenizer(Path(spec.model.tokenizer_dir), merged_dir)
    del merged, peft_model, base

    loaded = AutoModelForCausalLM.from_pretrained(
        str(merged_dir), dtype=torch.float32, local_files_only=True
    )
    loaded.train(False)
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    with torch.no_grad():
        got = loaded(input_ids=sample).logits
    max_diff = float((got - expected).abs().max())
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
        "export: merged model reloaded; max |logit difference| vs adapter %.2e; generated %d "
        "tokens", max_diff, new_tokens,
    )  # fmt: skip
    tolerance = 5e-2 if save_dtype is not None else 1e-3
    if not max_diff <= tolerance:
        from llamagene.errors import StageError

        raise StageError(
            f"the merged model's logits differ from the adapter model's by {max_diff:.3g} "
            f"(tolerance {tolerance}): the export is wrong; please report it"
        )
    return {"max_logit_diff": max_diff, "generated_tokens": new_tokens}
