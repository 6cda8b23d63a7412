"""The chunked loss equals the model's own (loss and every trainable gradient, to 1e-5 in fp32)
on packed rows with ignored labels, for every way of training the embedding rows; and the
attention check names the fix."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from llamagene.errors import StageError
from llamagene.training import loss as loss_module
from llamagene.training.loss import check_attention, use_chunked_loss
from llamagene.training.model import LoraSettings, attach_lora, build_base_model

VOCAB = 320  # no other dimension of the tiny model has this size: logits are recognisable
NEW_IDS = list(range(256, 300))
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2}  # fmt: skip


def _model(embedding_training: Any = "trainable_tokens") -> Any:
    base = build_base_model(None, TINY, seed=0, vocab_size=VOCAB)
    torch.manual_seed(0)
    model = attach_lora(base, LoraSettings(dropout=0.0), NEW_IDS, embedding_training)
    model.config.use_cache = False  # as the worker: packed rows need it
    with torch.no_grad():  # LoRA's B starts at zero: move it so its gradients mean something
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.02 * torch.randn_like(param))
    return model


def _corpus_batch() -> dict[str, torch.Tensor]:
    """Two blocks of 12 as the corpus packs them: documents restart their positions, the label
    of each document's first token is -100, the second block ends in padding."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (2, 12), generator=gen)
    ids[:, 2:4] = torch.tensor([[256, 270], [299, 256]])  # new rows, trained in and out
    positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6], [*range(9), 0, 1, 2]])
    labels = ids.clone()
    labels[positions == 0] = -100
    labels[1, 9:] = -100
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def _sft_batch() -> dict[str, torch.Tensor]:
    """Rows joined into one row as PackedCollator does, prompts masked."""
    batch = _corpus_batch()
    flat = {key: value.reshape(1, -1) for key, value in batch.items()}
    flat["labels"][0, 12:16] = -100
    return flat


def _loss_and_grads(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), grads


def _assert_same(model: Any, batch: dict[str, Any], chunk_tokens: int) -> None:
    loss, grads = _loss_and_grads(model, batch)
    use_chunked_loss(model, chunk_tokens)
    try:
        chunked, chunked_grads = _loss_and_grads(model, batch)
    finally:
        del model.get_base_model().forward
    torch.testing.assert_close(chunked, loss, atol=1e-5, rtol=1e-5)
    assert chunked_grads.keys() == grads.keys() and len(grads) > 20
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("embedding_training", ["trainable_tokens", "modules_to_save", "frozen"])
@pytest.mark.parametrize("chunk_tokens", [1, 5, 8, 24, 100])
def test_chunked_loss_and_gradients_equal_the_model_own(
    embedding_training: str, chunk_tokens: int
) -> None:
    # 24 tokens: chunks of 5 leave a remainder, 8 divides, 24 is one chunk, 100 is more
    _assert_same(_model(embedding_training), _corpus_batch(), chunk_tokens)


def test_one_packed_row_with_masked_prompts() -> None:
    _assert_same(_model(), _sft_batch(), 7)


@pytest.mark.parametrize("num_items", [torch.tensor(40), 40])
def test_num_items_in_batch_divides_the_sum_as_the_trainer_expects(num_items: Any) -> None:
    model = _model()
    _assert_same(model, {**_corpus_batch(), "num_items_in_batch": num_items}, 5)
    # and it is the sum over the batch's labels divided by that number, not the batch mean
    mean = model(**_corpus_batch()).loss
    use_chunked_loss(model, 5)
    summed = model(**_corpus_batch(), num_items_in_batch=num_items).loss
    labelled = int((_corpus_batch()["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(summed, mean * labelled / 40)


def test_no_logits_of_the_whole_batch_are_kept_for_backward() -> None:
    model, batch = _model(), _corpus_batch()
    tokens = batch["input_ids"].numel()

    def saved_logits() -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = []

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.dim() >= 2 and tensor.shape[-1] == VOCAB and tensor.shape[0] != VOCAB:
                shapes.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(**batch).loss.backward()
        return shapes

    standard = saved_logits()
    assert any(torch.Size(shape).numel() == tokens * VOCAB for shape in standard)
    use_chunked_loss(model, 5)
    assert saved_logits() == []  # the chunks' logits are remade in the backward pass


def test_without_labels_the_model_own_forward_runs() -> None:
    model, batch = _model(), _corpus_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
        use_chunked_loss(model, 5)
        assert torch.equal(model(**inputs).logits, logits)
        with_labels = model(**batch)
        as_tuple = model(**batch, return_dict=False)
    assert with_labels.logits is None and with_labels.loss is not None
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], with_labels.loss)
    # the Trainer passes num_items_in_batch only to a forward that takes **kwargs
    params = inspect.signature(model.get_base_model().forward).parameters.values()
    assert any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params)


def test_evaluation_without_gradients_gives_the_same_loss() -> None:
    model, batch = _model("modules_to_save"), _corpus_batch()
    model.eval()
    with torch.no_grad():
        loss = model(**batch).loss
        use_chunked_loss(model, 5)
        torch.testing.assert_close(model(**batch).loss, loss, atol=1e-6, rtol=1e-6)


def test_bad_uses_are_refused() -> None:
    with pytest.raises(ValueError, match="chunk_tokens"):
        use_chunked_loss(_model(), 0)
    with pytest.raises(TypeError, match="causal LM"):
        use_chunked_loss(torch.nn.Linear(2, 2), 4)


def test_attention_check() -> None:
    check_attention("sdpa")
    check_attention("eager")
    with pytest.raises(StageError, match="not one of eager, sdpa, flash_attention_2"):
        check_attention("flash")


@pytest.mark.skipif(loss_module._module_installed("flash_attn"), reason="flash-attn installed")
def test_flash_attention_without_its_package_says_so() -> None:
    with pytest.raises(StageError, match=r"needs flash-attn .* not installed.*use attn_impl"):
        check_attention("flash_attention_2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_flash_attention_without_a_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loss_module, "_module_installed", lambda name: True)
    for impl in ("flash_attention_2", "flash_attention_3"):
        with pytest.raises(StageError, match=r"needs a CUDA GPU .* use attn_implementation sdpa"):
            check_attention(impl)


def test_flattened_corpus_blocks_give_the_loss_of_separate_rows() -> None:
    """FlashAttention reads packed documents from position ids in a one-row batch only: the
    blocks of a micro batch are flattened, and the loss is that of the separate rows."""
    from transformers import LlamaConfig, LlamaForCausalLM, default_data_collator

    from llamagene.training.collate import FlatBlocksCollator

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, use_cache=False,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    blocks = []
    for _ in range(3):
        ids = torch.randint(3, 64, (16,))
        ids[[0, 7]] = 1  # two documents, the first continued from an earlier block
        positions = torch.cat([torch.arange(7), torch.arange(9)])
        labels = ids.masked_fill(ids == 1, -100)
        blocks.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    blocks[1]["input_ids"][0] = 5  # a block that starts inside a document
    blocks[1]["labels"][0] = 5
    with torch.no_grad():
        rows = model(**default_data_collator(blocks)).loss
        flat = FlatBlocksCollator()(blocks)
        assert flat["input_ids"].shape == (1, 48)
        one_row = model(**flat).loss
    assert torch.allclose(rows, one_row, atol=1e-5)
