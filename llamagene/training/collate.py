"""Batches of instruction rows: packed (the default) or padded.

**Packed** (:class:`PackedCollator`): the rows of a micro batch are joined into one sequence
with no padding at all, and ``position_ids`` restart at 0 at each row. Given position ids, no
attention mask and no cache, transformers builds a block-diagonal causal mask from the restarts
(``find_packed_sequence_indices``), so no row attends to another and each row's loss is what it
would be alone (tested to 1e-5); the worker sets ``use_cache=False`` for that. This is
``transformers.DataCollatorWithFlattening``'s layout; the first label of each row is -100
already (the prompt format never trains a BOS), so no row predicts the next one's start.

**Padded** (:class:`PaddedCollator`): rows are padded on the right to the longest of the micro
batch (pad = EOS, label -100, attention mask 0); the worker then groups rows of similar length
(``group_by_length``) to waste less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from llamagene.prompt_format import IGNORE

if TYPE_CHECKING:
    import torch

Batching = Literal["packed", "padded"]


@dataclass(frozen=True)
class PackedCollator:
    """Rows -> one packed row: ``input_ids``, ``labels``, ``position_ids`` of shape (1, total)."""

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        ids = [i for row in rows for i in row["input_ids"]]
        labels = [label for row in rows for label in row["labels"]]
        positions = [p for row in rows for p in range(len(row["input_ids"]))]
        return {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
        }


@dataclass(frozen=True)
class PaddedCollator:
    """Rows -> a padded batch with ``attention_mask``."""

    pad_id: int

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def padding_share(lengths: Sequence[Sequence[int]]) -> float:
    """The share of padding tokens in padded micro batches of these row lengths."""
    real = sum(sum(batch) for batch in lengths)
    total = sum(max(batch) * len(batch) for batch in lengths if batch)
    return 1 - real / total if total else 0.0


@dataclass(frozen=True)
class FlatBlocksCollator:
    """Corpus blocks -> one row of ``micro batch x block_size`` tokens, for FlashAttention:
    transformers reads packed documents from restarting ``position_ids`` only in a batch of one
    row (with several, FlashAttention would let documents attend to each other). Each block
    starts at position 0, so no block sees another; the first label of every block becomes
    -100, so no block's last token is trained to predict the next block's first (in separate
    rows that prediction does not exist): the loss is that of the unflattened batch."""

    def __call__(self, blocks: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        import torch

        labels = torch.stack([b["labels"] for b in blocks]).clone()
        labels[:, 0] = IGNORE
        return {
            "input_ids": torch.cat([b["input_ids"] for b in blocks]).unsqueeze(0),
            "labels": labels.reshape(1, -1),
            "position_ids": torch.cat([b["position_ids"] for b in blocks]).unsqueeze(0),
        }
