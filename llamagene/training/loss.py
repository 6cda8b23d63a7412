"""The training loss over a large vocabulary, chunk by chunk, and the attention check.

    model = attach_lora(base, LoraSettings(), new_ids, "trainable_tokens")
    use_chunked_loss(model, chunk_tokens=2048)     # before the Trainer wraps the model
    check_attention("flash_attention_2")           # StageError with the fix, before loading

**Why.** The merged vocabulary gives the output layer ~91.6k rows. HF's causal-LM forward makes
the logits of every position at once, and the loss keeps their fp32 log-softmax for the backward
pass: a micro batch of 8 x 1,024 tokens at 91,648 rows is 751M values, 3.0 GB in fp32. With the
fp32 copy, the log-softmax and then their gradients, the loss raises the peak by ~12 bytes x
tokens x vocab (measured on the CPU, fp32: +2.16 GB for 2 x 1,024 tokens), ~9 GB for that
micro batch. :func:`use_chunked_loss` computes the loss ``chunk_tokens`` positions at a time:
the lm_head projection, the fp32 upcast and the summed cross-entropy of one chunk run under
activation checkpointing, so only the chunk's hidden states are kept and its logits are made
again in the backward pass. The rise becomes that of one chunk (~12 bytes x chunk_tokens x
vocab: 2.2 GB for 2,048 tokens; measured +1.10 GB and +0.39 GB for chunks of 1,024 and 256 of
the 2,048 tokens above), for one more lm_head forward (2 x vocab x hidden FLOPs a token, ~7% of
a 1.1B LLaMA's training FLOPs). With PEFT's ``trainable_tokens`` each lm_head call also rebuilds
the merged weight and an index of the new rows, so fewer, larger chunks cost less.

**Equality.** The loss is the one ``LlamaForCausalLM`` computes (``ForCausalLMLoss``): labels
shifted by one (padded with -100 on the right), -100 ignored, cross-entropy of fp32-upcast
logits, summed and divided by the number of label tokens, or by ``num_items_in_batch`` when the
Trainer passes it (then the sum over the accumulated micro batches is the global mean). Loss and
every gradient match the unchunked ones to float rounding (tests/unit/test_chunked_loss.py:
1e-5 in fp32, for packed rows, PEFT's ``trainable_tokens`` and ``modules_to_save`` heads); a
2-process DeepSpeed run with the loss in chunks logs the losses of one process without it
(tests/stages/test_pretrain.py). The output has ``logits=None`` when labels are given;
evaluation in the Trainer needs only the loss. Without labels the model's own forward runs.
"""

from __future__ import annotations

import importlib.util
import types
from typing import TYPE_CHECKING, Any, get_args

from llamagene.errors import StageError
from llamagene.training.spec import AttentionImplementation

if TYPE_CHECKING:
    import torch

#: Attention implementations a training config may name (transformers' names).
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = get_args(AttentionImplementation)
#: FlashAttention: the module transformers imports, the package that gives it, and the lowest
#: CUDA compute capability it runs on (8 = Ampere: A100; 9 = Hopper: H100, H200).
_FLASH = {
    "flash_attention_2": ("flash_attn", "flash-attn (pip install flash-attn)", 8),
    "flash_attention_3": (
        "flash_attn_interface", "flash-attn-3 (built from flash-attention's hopper/ folder)", 9
    ),
}  # fmt: skip
IGNORE_INDEX = -100


def use_chunked_loss(model: torch.nn.Module, chunk_tokens: int) -> None:
    """Make ``model`` compute its loss ``chunk_tokens`` positions at a time (see module doc).

    ``model`` is a PEFT model (its base model is patched) or a HF causal LM with ``.model`` (the
    decoder) and ``.lm_head``. The causal LM's ``forward`` attribute is replaced, so whatever
    wraps the model (PEFT, DDP, a DeepSpeed engine, torch.compile) still calls it through its
    module, hooks included; ``del inner.forward`` undoes it. Calling it again replaces the chunk
    size.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, not {chunk_tokens}")
    inner = _causal_lm(model)
    inner.forward = types.MethodType(_chunked_forward(chunk_tokens), inner)


def check_attention(impl: str) -> None:
    """Raise :class:`StageError` with the fix when ``impl`` cannot run here.

    ``eager`` and ``sdpa`` always can (sdpa is transformers' default). FlashAttention needs its
    package and a CUDA GPU of the generation it was built for. Note that transformers reads packed
    documents from restarting position ids under FlashAttention only when a batch is one row:
    batches of several packed rows must be flattened into one row (sdpa and eager handle either).
    """
    if impl not in ATTENTION_IMPLEMENTATIONS:
        raise StageError(
            f"attn_implementation {impl!r} is not one of {', '.join(ATTENTION_IMPLEMENTATIONS)}"
        )
    if impl not in _FLASH:
        return
    module, package, min_major = _FLASH[impl]
    if not _module_installed(module):
        raise StageError(
            f"attn_implementation {impl} needs {package}, which is not installed here: "
            "install it, or use attn_implementation sdpa"
        )
    import torch

    if not torch.cuda.is_available():
        raise StageError(
            f"attn_implementation {impl} needs a CUDA GPU and this machine has none: "
            "use attn_implementation sdpa here"
        )
    major, minor = torch.cuda.get_device_capability()
    if major < min_major:
        raise StageError(
            f"attn_implementation {impl} needs a GPU of compute capability {min_major}.0 or "
            f"newer, and {torch.cuda.get_device_name()} is {major}.{minor}: use sdpa on it"
        )
    from transformers.utils.import_utils import (
        is_flash_attn_2_available,
        is_flash_attn_3_available,
    )

    usable = is_flash_attn_2_available if impl == "flash_attention_2" else is_flash_attn_3_available
    if not usable():
        raise StageError(
            f"attn_implementation {impl}: the installed {module} is not one transformers can use "
            f"(flash-attn 2 must be >= 2.3.3): reinstall {package}, or use sdpa"
        )


def _module_installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The HF causal LM inside ``model``: a PEFT model's base model, or ``model`` itself."""
    import torch

    get_base_model = getattr(model, "get_base_model", None)
    inner = get_base_model() if callable(get_base_model) else model
    if not isinstance(inner, torch.nn.Module) or not all(
        isinstance(getattr(inner, name, None), torch.nn.Module) for name in ("model", "lm_head")
    ):
        raise TypeError(
            f"{type(inner).__name__} is not a causal LM with .model and .lm_head: "
            "the chunked loss cannot patch it"
        )
    return inner


def _chunked_forward(chunk_tokens: int) -> Any:
    """The forward that replaces a causal LM's own (bound to it by :func:`use_chunked_loss`)."""

    def forward(
        self: Any, input_ids: Any = None, *args: Any, labels: Any = None, **kwargs: Any
    ) -> Any:
        own_forward = type(self).forward
        keep = kwargs.get("logits_to_keep", 0)
        if labels is None or args or not (isinstance(keep, int) and keep == 0):
            # no loss to compute, or a call this forward does not model: the model's own does it
            return own_forward(self, input_ids, *args, labels=labels, **kwargs)
        from torch.nn import functional
        from transformers.modeling_outputs import CausalLMOutputWithPast

        return_dict = kwargs.pop("return_dict", None)
        if return_dict is None:  # as transformers' can_return_tuple decides
            return_dict = getattr(self.config, "return_dict", True)
        kwargs.pop("logits_to_keep", None)
        # the model's own forward passes its loss kwargs (num_items_in_batch...) on too
        outputs = self.model(input_ids=input_ids, **kwargs)
        hidden = outputs[0]
        ignore_index = int(kwargs.get("ignore_index", IGNORE_INDEX))
        shift_labels = kwargs.get("shift_labels")
        if shift_labels is None:  # as ForCausalLMLoss: position i predicts label i + 1
            padded = functional.pad(labels, (0, 1), value=ignore_index)
            shift_labels = padded[..., 1:]
        shift_labels = shift_labels.reshape(-1).to(hidden.device)
        loss = chunked_cross_entropy(
            self.lm_head, hidden.reshape(-1, hidden.shape[-1]), shift_labels, chunk_tokens,
            ignore_index, kwargs.get("num_items_in_batch"),
        )  # fmt: skip
        result = CausalLMOutputWithPast(
            loss=loss,
            logits=None,
            cache=getattr(outputs, "cache", None),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )
        return result if return_dict else result.to_tuple()

    return forward


def chunked_cross_entropy(
    lm_head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    chunk_tokens: int,
    ignore_index: int = IGNORE_INDEX,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``lm_head(hidden)`` against ``labels`` (already shifted, flat),
    ``chunk_tokens`` rows at a time, no chunk's logits kept for backward. Divided by the number
    of labels that are not ``ignore_index``, or by ``num_items_in_batch`` when given."""
    import torch
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    for part, part_labels in zip(
        torch.split(hidden, chunk_tokens), torch.split(labels, chunk_tokens), strict=True
    ):
        if torch.is_grad_enabled():
            total = total + checkpoint(
                _summed_loss, lm_head, part, part_labels, ignore_index, use_reentrant=False
            )
        else:
            total = total + _summed_loss(lm_head, part, part_labels, ignore_index)
    if num_items_in_batch is None:
        return total / (labels != ignore_index).sum()
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _summed_loss(
    lm_head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    from torch.nn import functional

    logits = lm_head(hidden).float()
    return functional.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
