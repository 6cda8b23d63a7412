"""Memory per GPU of one training step, estimated before asking for GPUs (``llamagene plan``).

    estimate = estimate_memory(llama_config, vocab_rows=32_640, new_rows=598, lora_r=8,
                               lora_targets=LLAMA_PROJECTIONS, lora_dropout=0.05,
                               embedding_training="trainable_tokens", micro_batch=4,
                               seq_len=4096, world=8, zero_stage=2, precision="bf16",
                               gradient_checkpointing=True)
    print(estimate.table())

``llama_config`` is a HF ``LlamaConfig`` as a dict. Parameters are counted exactly as
``LlamaForCausalLM`` and PEFT create them; bytes are what one step keeps alive, read off the code
that runs (transformers' LLaMA and loss, PEFT's LoRA and trainable tokens, autograd, ZeRO).
``tests/unit/test_memory_plan.py`` checks the count against built models, the activations
against what autograd saves (within 2%), and the total against the peak memory of a CPU run of
the worker (fp32, 4 layers, hidden 512, 32,640 rows, micro batch 4 x 256 tokens: 644 MiB for
the measured 698 with gradient checkpointing, 892 for 942 without; the rest is the process's
own growth, not tensors). Assumptions:

- Weights: the frozen base (embedding rows, lm_head unless tied, q/k/v/o, gate/up/down, the
  RMSNorms; ``modules_to_save`` keeps the originals too) in the compute dtype, as the worker
  loads it; ZeRO-3 splits them over the processes.
- Trainable: LoRA A (r x in) and B (out x r) on every targeted projection of every layer, and
  the new embedding rows (``trainable_tokens``: new_rows x hidden for embed_tokens and, unless
  tied, lm_head) or full copies of both (``modules_to_save``). Without DeepSpeed they are fp32
  (the worker casts them) with fp32 gradients, and DDP (world > 1) keeps a second fp32 copy of
  the gradients in its buckets. DeepSpeed casts the module, trainable parameters included, to
  the compute dtype (gradients too) and keeps an fp32 master copy: ZeRO-1 splits the master
  copy and optimizer state, ZeRO-2 the gradients too, ZeRO-3 the parameters too; ZeRO-0 is
  ZeRO-1 without the splitting. Gradients count as live at the peak (they are from the second
  micro batch of an accumulating step on; a one-micro-batch step makes this conservative).
- Optimizer: AdamW, two fp32 moments per trainable parameter; its step runs after the
  activations are freed, so its temporary buffers are not counted.
- Activations, per token of a micro batch and per layer, what autograd keeps for backward:
  each RMSNorm's input in fp32 and its rsqrt; q, k, v and the output of sdpa attention (no
  seq x seq scores; k and v repeated to every head when a mask makes transformers call
  ``repeat_kv``) and its fp32 logsumexp; with ``attention_mask`` (rows packed with restarting
  positions or padded, as llamagene's always are) a seq x seq additive mask in the compute
  dtype per layer, which sdpa makes from transformers' boolean mask. Eager attention keeps
  seq x seq probabilities instead (fp32, and their cast), FlashAttention what sdpa keeps
  without a mask (not measured here). SiLU's input and output and up_proj's output. For each
  LoRA target its input and r values after A: dropout gives every target its own dropped copy
  and a mask (bool on CUDA, the input's dtype on the CPU); without dropout targets of one
  input share it unless a cast copies it (PEFT casts it to the LoRA dtype, autocast to
  bf16). Frozen projections keep nothing. With gradient
  checkpointing a layer keeps only its input, and one layer at a time is recomputed. A frozen
  embedding makes layer 0 keep a little less: not modelled.
- bf16 without DeepSpeed is autocast: bf16 activations, but an fp32 residual stream with
  ``modules_to_save`` (its fp32 embed_tokens copy), and bf16 copies of the fp32 LoRA matrices
  and trainable-token deltas kept for backward.
- Logits (micro x seq x vocab rows): transformers' ``ForCausalLMLoss`` peaks in backward with
  three fp32 buffers (log-softmax output, nll gradient, log-softmax gradient: 12 bytes a logit)
  above the forward's logits and fp32 upcast (8-10 bytes). Chunked cross-entropy
  (:func:`llamagene.training.loss.use_chunked_loss`) holds one chunk of
  ``chunked_loss_tokens`` tokens. The head also keeps PEFT's merged lm_head
  (``trainable_tokens`` copies vocab x hidden every step) or autocast's bf16 cast of a
  ``modules_to_save`` lm_head copy.
- Total, the peak: weights + trainable + optimizer + buffers + activations + logits, but with
  gradient checkpointing the recompute of a layer and the logits never coexist (the larger
  counts). Not counted: the CUDA context and kernels (~0.5-1 GiB), the caching allocator's
  reserve and fragmentation, NCCL's buffers, and DeepSpeed's buckets unless given
  (:func:`deepspeed_bucket_elements`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from llamagene.training.model import LLAMA_PROJECTIONS, EmbeddingTraining
from llamagene.training.spec import AttentionImplementation

if TYPE_CHECKING:
    import torch

GIB = 2**30
#: Bytes of an fp32 value: master copies, optimizer moments, RMSNorm internals, the loss.
FP32 = 4
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a LLaMA with LoRA attached by PEFT, by what they are."""

    base: int
    """The base model's parameters, all frozen (``modules_to_save`` keeps them too)."""
    lora: int
    """LoRA A and B matrices."""
    embedding: int
    """Trained embedding values: the new rows' deltas, or the embed_tokens/lm_head copies."""

    @property
    def trainable(self) -> int:
        return self.lora + self.embedding

    @property
    def total(self) -> int:
        return self.base + self.trainable


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process (per GPU) of one training step; the module doc says what counts."""

    weights: int
    """Frozen base weights held by this process."""
    trainable: int
    """Trainable parameters: the module's copy, gradients, fp32 master copy (DeepSpeed)."""
    optimizer: int
    """AdamW's two fp32 moments."""
    activations: int
    """What one micro batch keeps for backward (every layer, or checkpoints + one layer)."""
    logits: int
    """The loss head at its peak: logits and fp32 buffers, the lm_head working copy."""
    buffers: int
    """DeepSpeed's gradient reduction and prefetch buckets, when given."""
    total: int
    """The peak: the sum, less what never coexists (module doc)."""
    parameters: ParameterCount
    setting: str
    """Processes, DeepSpeed, precision, micro batch x sequence length, checkpointing."""
    notes: tuple[str, ...]
    """The assumptions behind these figures, one short line each."""

    def table(self) -> str:
        """A printable table: GiB per part, the total, and the assumptions."""
        count = self.parameters
        rows = [
            ("weights", self.weights, f"frozen base, {count.base:,} parameters"),
            ("trainable", self.trainable, f"{count.trainable:,} parameters ({count.lora:,} "
             f"LoRA, {count.embedding:,} embedding): values, gradients, master copies"),
            ("optimizer", self.optimizer, "AdamW: 2 fp32 moments per trainable parameter"),
            ("activations", self.activations, "kept for backward, one micro batch"),
            ("logits", self.logits, "loss head at its peak"),
        ]  # fmt: skip
        if self.buffers:
            rows.append(("buffers", self.buffers, "DeepSpeed buckets"))
        rows.append(("total", self.total, "peak per GPU"))
        lines = [f"memory per GPU: {self.setting}"]
        lines += [f"  {name:<12}{size / GIB:>8.2f} GiB  {what}" for name, size, what in rows]
        lines.append("assumptions:")
        lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


def parameter_count(
    config: Mapping[str, Any],
    *,
    vocab_rows: int,
    new_rows: int,
    lora_r: int,
    lora_targets: Sequence[str],
    embedding_training: EmbeddingTraining,
) -> ParameterCount:
    """The exact parameter count of ``LlamaForCausalLM(config)`` grown to ``vocab_rows``, with
    LoRA attached by :func:`llamagene.training.model.attach_lora`."""
    shape = _Shape.of(config)
    targets = _targets(lora_targets)
    per_layer = 2 * shape.hidden  # input_layernorm, post_attention_layernorm
    lora = 0
    for name, (fan_in, fan_out) in shape.projections().items():
        bias = shape.attention_bias if name in ATTENTION_PROJECTIONS else shape.mlp_bias
        per_layer += fan_in * fan_out + (fan_out if bias else 0)
        if name in targets:
            lora += shape.layers * lora_r * (fan_in + fan_out)
    matrices = 1 if shape.tied else 2  # embed_tokens, and lm_head unless tied
    base = matrices * vocab_rows * shape.hidden + shape.layers * per_layer + shape.hidden
    if embedding_training == "modules_to_save":
        embedding = 2 * vocab_rows * shape.hidden  # PEFT copies both, tied or not
    elif embedding_training == "trainable_tokens":
        embedding = matrices * new_rows * shape.hidden  # a tied lm_head shares the delta
    else:
        embedding = 0
    return ParameterCount(base=base, lora=lora, embedding=embedding)


def model_parameter_count(model: torch.nn.Module) -> ParameterCount:
    """The same split, counted (numel) on a built PEFT model."""
    from llamagene.training.trainer import embedding_parameter

    base = lora = embedding = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            base += param.numel()
        elif embedding_parameter(name):
            embedding += param.numel()
        else:
            lora += param.numel()
    return ParameterCount(base=base, lora=lora, embedding=embedding)


def deepspeed_bucket_elements(deepspeed_config: Mapping[str, Any], hidden_size: int) -> int:
    """Elements of the buffers DeepSpeed allocates for backward: ZeRO-1/2 reduce gradients
    through ``reduce_bucket_size`` elements (twice that with ``overlap_comm``; only with
    ``contiguous_gradients``, its default), ZeRO-3 through a reduce and a prefetch bucket.
    "auto" sizes are transformers' (hidden², 0.9 x hidden²). The shipped ZeRO-2 config gives
    1e8 elements (0.19 GiB in bf16); its former 5e8 buckets gave 1.86 GiB."""
    zero = deepspeed_config.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))

    def size(key: str, auto: float, default: int) -> int:
        value = zero.get(key, default)
        return int(auto) if value == "auto" else int(value)

    reduce = size("reduce_bucket_size", hidden_size**2, 500_000_000)
    if stage in (1, 2):
        if not zero.get("contiguous_gradients", True):
            return 0
        return reduce * (2 if zero.get("overlap_comm", False) else 1)
    if stage == 3:
        return reduce + size("stage3_prefetch_bucket_size", 0.9 * hidden_size**2, 50_000_000)
    return 0


def estimate_memory(
    config: Mapping[str, Any],
    *,
    vocab_rows: int,
    new_rows: int,
    lora_r: int,
    lora_targets: Sequence[str],
    lora_dropout: float,
    embedding_training: EmbeddingTraining,
    micro_batch: int,
    seq_len: int,
    world: int,
    zero_stage: int | None,
    precision: Literal["bf16", "fp32"],
    gradient_checkpointing: bool,
    chunked_loss_tokens: int | None = None,
    attention_mask: bool = True,
    attn_implementation: AttentionImplementation = "sdpa",
    bucket_elements: int = 0,
    device: Literal["cuda", "cpu"] = "cuda",
) -> MemoryEstimate:
    """Bytes per process of one training step (the module doc lists every assumption).

    ``vocab_rows``: the grown, padded vocabulary; ``new_rows``: the pieces added to the base's.
    ``zero_stage``: None without DeepSpeed. ``attention_mask``: rows are packed with restarting
    positions or padded (llamagene's always are), so transformers builds a mask (for sdpa).
    ``attn_implementation``: transformers' name; sdpa is its default.
    ``bucket_elements``: DeepSpeed's buffers (:func:`deepspeed_bucket_elements`).
    ``device``: ``cpu`` changes only the dropout masks (float tensors there, not bool ones)."""
    if min(world, micro_batch, seq_len) < 1:
        raise ValueError("world, micro_batch and seq_len must be at least 1")
    if zero_stage not in (None, 0, 1, 2, 3):
        raise ValueError(f"zero_stage must be None or 0-3, not {zero_stage!r}")
    shape = _Shape.of(config)
    targets = _targets(lora_targets)
    count = parameter_count(
        config, vocab_rows=vocab_rows, new_rows=new_rows, lora_r=lora_r,
        lora_targets=lora_targets, embedding_training=embedding_training,
    )  # fmt: skip
    compute = 2 if precision == "bf16" else FP32
    deepspeed = zero_stage is not None
    autocast = precision == "bf16" and not deepspeed
    lora_dtype = compute if deepspeed else FP32  # the worker's fp32 cast; DeepSpeed recasts
    # the residual stream has the dtype of the embedding output
    stream = FP32 if (embedding_training == "modules_to_save" and autocast) else compute
    lm_head_trains = embedding_training == "modules_to_save" or (
        embedding_training == "trainable_tokens" and new_rows > 0
    )

    weights = count.base * compute // (world if zero_stage == 3 else 1)
    trainable, optimizer = _trainable_bytes(count.trainable, compute, world, zero_stage)
    tokens = micro_batch * seq_len
    layer = tokens * _layer_bytes_per_token(
        shape, targets, lora_r, lora_dropout > 0, (compute, stream, lora_dtype),
        _attention_bytes_per_token(shape, attn_implementation, attention_mask, compute, seq_len),
        dropout_mask=1 if device == "cuda" else lora_dtype,
        attention_output_kept=attn_implementation != "eager",
    )  # fmt: skip
    # the final RMSNorm's fp32 input and rsqrt, and lm_head's input when lm_head trains
    head = tokens * (shape.hidden * FP32 + FP32 + (shape.hidden * compute if lm_head_trains else 0))
    # autocast's bf16 copies of fp32 LoRA matrices and token deltas, kept for backward
    casts = count.lora + (count.embedding if embedding_training == "trainable_tokens" else 0)
    kept = head + (casts * compute if autocast else 0)
    lm_head_copy = 0
    if embedding_training == "trainable_tokens" and new_rows > 0:
        lm_head_copy = vocab_rows * shape.hidden * compute  # PEFT's index_copy, kept
    elif embedding_training == "modules_to_save" and autocast:
        lm_head_copy = vocab_rows * shape.hidden * compute  # autocast's cast of the copy
    loss_tokens = min(tokens, chunked_loss_tokens) if chunked_loss_tokens else tokens
    logits = loss_tokens * vocab_rows * 3 * FP32 + lm_head_copy
    if gradient_checkpointing:
        kept += shape.layers * tokens * shape.hidden * stream  # each layer's input
        activations, peak = kept + layer, kept + max(layer, logits)
    else:
        activations = kept + shape.layers * layer
        peak = activations + logits
    buffers = bucket_elements * compute
    setting = ", ".join((
        f"{world} process{'es' if world > 1 else ''}",
        f"DeepSpeed ZeRO-{zero_stage}" if deepspeed else "no DeepSpeed",
        precision,
        f"micro batch {micro_batch} x {seq_len} tokens",
        f"gradient checkpointing {'on' if gradient_checkpointing else 'off'}",
    ))  # fmt: skip
    notes = _notes(
        precision, zero_stage, world, stream, lora_dropout, (attn_implementation, attention_mask),
        chunked_loss_tokens, gradient_checkpointing, embedding_training, device,
    )  # fmt: skip
    return MemoryEstimate(
        weights=weights, trainable=trainable, optimizer=optimizer, activations=activations,
        logits=logits, buffers=buffers, total=weights + trainable + optimizer + buffers + peak,
        parameters=count, setting=setting, notes=notes,
    )  # fmt: skip


@dataclass(frozen=True)
class _Shape:
    """The sizes of a LLaMA config that memory depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    attention_bias: bool
    mlp_bias: bool

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> _Shape:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        return cls(
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            tied=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
        )

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a block."""
        h, i = self.hidden, self.intermediate
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip


def _targets(lora_targets: Sequence[str]) -> set[str]:
    unknown = sorted(set(lora_targets) - set(LLAMA_PROJECTIONS))
    if unknown:
        raise ValueError(
            f"LoRA targets {unknown}: memory is estimated for {', '.join(LLAMA_PROJECTIONS)}"
        )
    return set(lora_targets)


def _trainable_bytes(
    params: int, compute: int, world: int, zero_stage: int | None
) -> tuple[int, int]:
    """(values + gradients + master copy, AdamW moments) of the trainable parameters."""
    if zero_stage is None:
        buckets = FP32 if world > 1 else 0  # DDP's gradient buckets (not gradient views)
        return params * (2 * FP32 + buckets), params * 2 * FP32
    split = world if zero_stage >= 1 else 1
    values = params * compute // (world if zero_stage == 3 else 1)
    grads = params * compute // (world if zero_stage >= 2 else 1)
    return values + grads + params * FP32 // split, params * 2 * FP32 // split


def _layer_bytes_per_token(
    shape: _Shape,
    targets: set[str],
    lora_r: int,
    dropout: bool,
    dtypes: tuple[int, int, int],
    attention: int,
    dropout_mask: int,
    attention_output_kept: bool,
) -> int:
    """Bytes one decoder layer keeps for backward, per token (module doc). ``dtypes``: bytes
    of the compute dtype, of the residual stream and of the LoRA matrices; ``attention``:
    what attention itself keeps."""
    compute, stream, lora_dtype = dtypes
    q_width = shape.heads * shape.head_dim

    def lora_inputs(group: Sequence[str], width: int, dtype: int, kept: bool = False) -> int:
        """What the A matrices of targets sharing one input keep of it (``kept``: the input is
        kept anyway). PEFT casts it to the LoRA dtype, autocast to bf16: each cast a copy."""
        n = len(targets.intersection(group))
        if not n:
            return 0
        if dropout:
            return n * width * (dropout_mask + compute)
        if dtype == lora_dtype == compute:
            return 0 if kept else width * compute
        return n * width * compute

    norms = 2 * (shape.hidden * FP32 + FP32)
    mlp = 3 * shape.intermediate * compute
    lora = (
        lora_inputs(("q_proj", "k_proj", "v_proj"), shape.hidden, stream)
        + lora_inputs(("o_proj",), q_width, compute, kept=attention_output_kept)
        + lora_inputs(("gate_proj", "up_proj"), shape.hidden, stream)
        + lora_inputs(("down_proj",), shape.intermediate, compute)
        + len(targets) * lora_r * compute  # each A's output, kept by B
    )
    return norms + attention + mlp + lora


def _attention_bytes_per_token(
    shape: _Shape, implementation: str, mask: bool, compute: int, seq_len: int
) -> int:
    """What attention keeps per token and layer: q, k, v (k and v repeated to every head by
    eager, and by sdpa when given a mask), the output (eager keeps its probabilities instead:
    fp32 and cast), the fp32 logsumexp (fused kernels), and sdpa's additive mask row."""
    q_width = shape.heads * shape.head_dim
    repeated = implementation == "eager" or (implementation == "sdpa" and mask)
    kv_width = q_width if repeated else shape.kv_heads * shape.head_dim
    if implementation == "eager":
        probabilities = shape.heads * seq_len * (FP32 + (compute if compute != FP32 else 0))
        return compute * (q_width + 2 * kv_width) + probabilities
    kept = compute * (2 * q_width + 2 * kv_width) + FP32 * shape.heads
    return kept + (compute * seq_len if implementation == "sdpa" and mask else 0)


def _notes(
    precision: str,
    zero_stage: int | None,
    world: int,
    stream: int,
    lora_dropout: float,
    attention: tuple[str, bool],
    chunked_loss_tokens: int | None,
    gradient_checkpointing: bool,
    embedding_training: str,
    device: str,
) -> tuple[str, ...]:
    notes = [f"frozen weights in {precision}" + (", split by ZeRO-3" if zero_stage == 3 else "")]
    if zero_stage is None:
        notes.append(
            "trainable parameters in fp32 with fp32 gradients"
            + (" (and DDP's bucket copy)" if world > 1 else "")
        )
        if precision == "bf16":
            notes.append(f"autocast; residual stream in {'fp32' if stream == FP32 else 'bf16'}")
    else:
        split = ("nothing", "master copies and optimizer state", "gradients too",
                 "parameters too")[zero_stage]  # fmt: skip
        notes.append(
            f"DeepSpeed: trainable parameters and gradients in {precision}, fp32 master "
            f"copies; ZeRO-{zero_stage} splits {split}"
        )
    if lora_dropout > 0:
        kind = "a float mask on the CPU" if device == "cpu" else "a bool mask"
        notes.append(f"LoRA dropout {lora_dropout}: each target keeps its own input and {kind}")
    else:
        notes.append("no LoRA dropout: targets of one input share it")
    implementation, mask = attention
    if implementation == "eager":
        notes.append("eager attention: seq² probabilities per layer")
    elif implementation == "sdpa":
        notes.append(
            "sdpa attention, no seq² scores"
            + ("; a seq² mask per layer (packed or padded rows)" if mask else "")
        )
    else:
        notes.append(f"{implementation}: no seq² scores or mask")
    notes.append(
        "gradient checkpointing: each layer keeps its input, one layer recomputed at a time"
        if gradient_checkpointing
        else "no gradient checkpointing: every layer keeps its activations"
    )
    notes.append(
        f"chunked cross-entropy, {chunked_loss_tokens} tokens a chunk, 12 bytes a logit"
        if chunked_loss_tokens
        else "transformers' ForCausalLMLoss: 12 bytes a logit at its backward peak"
    )
    if embedding_training == "trainable_tokens":
        notes.append("PEFT merges the new rows into a full copy of lm_head every step")
    notes.append("not counted: CUDA context (~0.5-1 GiB), allocator reserve, NCCL buffers")
    return tuple(notes)
