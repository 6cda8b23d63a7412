"""BPE vocabularies: train them with SentencePiece, merge them into a LLaMA-family tokenizer.

The merge (see :mod:`llamagene.alphabets` for why sequences get private-use alphabets):

1. the base SentencePiece BPE model keeps every piece, id and score;
2. each sequence model's pieces are appended, written in its private-use alphabet, with unique
   scores below every normal base piece, in the sequence model's own order;
3. the fast ``tokenizer.json`` is built here, not converted by transformers: its merges are every
   ``(left, right)`` pair of pieces whose concatenation is a piece, ranked by that piece's score.
   SentencePiece breaks ties between equal scores (the base's whitespace-run pieces all score
   -1e9) by taking the leftmost pair; ranking tied merges by the longer left part first gives the
   same result, so fast and slow agree id for id.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from llamagene.alphabets import LETTERS, SequenceKind, model_code
from llamagene.errors import StageError
from llamagene.manifest import write_bytes_atomic, write_text_atomic
from llamagene.prompt_format import write_chat_template

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: ``sentencepiece_model_pb2.ModelProto``: generated protobuf code without type information.
ModelProto: TypeAlias = Any

# SentencePiece piece types (sentencepiece_model.proto)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BPE_MODEL_TYPE = 2
#: Scores this low mark hand-added pieces (whitespace runs); they are not "normal" scores.
_HAND_SCORE = -1e8
TOKENIZER_META = "llamagene_tokenizer.json"


def train_sentencepiece_bpe(
    sentences: Sequence[str],
    vocab_size: int,
    max_piece_length: int,
    max_sentence_length: int,
    num_threads: int,
    seed: int,
) -> bytes:
    """Train a SentencePiece BPE model on sequence sentences; return the serialized model.

    No dummy prefix and no whitespace handling (sequences have none), every character kept
    (``character_coverage=1``), only ``<unk>`` as a meta piece. ``max_sentence_length`` must
    exceed the longest sentence: SentencePiece silently skips longer ones.
    """
    import io

    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        max_sentencepiece_length=max_piece_length,
        max_sentence_length=max_sentence_length,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_by_unicode_script=False,
        split_by_number=False,
        split_digits=False,
        byte_fallback=False,
        hard_vocab_limit=False,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        num_threads=num_threads,
        minloglevel=2,
    )
    return out.getvalue()


def train_hf_bpe(sentences: Sequence[str], vocab_size: int, max_piece_length: int) -> bytes:
    """Train with HF ``tokenizers``' BPE trainer; return it as a SentencePiece BPE model.

    Each merge becomes a piece scored by its rank (earlier merges score higher), followed by
    the single letters, so SentencePiece's score-ordered merging replays HF's merges; the
    conversion is what lets ``merge_vocab`` take either trainer's output. About 9x slower than
    SentencePiece for an equally good vocabulary (ARCHITECTURE.md), hence not the default.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import Tokenizer, models, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>"],
        max_token_length=max_piece_length,
        show_progress=False,
    )
    tokenizer.train_from_iterator(sentences, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merged = ["".join(m) if isinstance(m, list) else m.replace(" ", "") for m in model["merges"]]
    letters = [p for p in model["vocab"] if p != "<unk>" and len(p) == 1]
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = BPE_MODEL_TYPE
    proto.trainer_spec.vocab_size = 1 + len(merged) + len(letters)
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = 0, -1, -1
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    unk = proto.pieces.add()
    unk.piece, unk.score, unk.type = "<unk>", 0.0, UNKNOWN
    seen = set()
    for rank, piece in enumerate([*merged, *letters]):
        if piece in seen:  # two merges may spell one piece: the earlier one's rank stands
            continue
        seen.add(piece)
        new = proto.pieces.add()
        new.piece, new.score, new.type = piece, -float(rank), NORMAL
    return bytes(proto.SerializeToString())


def chars_per_token(model: bytes, texts: Iterable[str]) -> float:
    """Characters per token of ``model`` over ``texts`` (bases/token, residues/token)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model)
    chars = tokens = 0
    for text in texts:
        chars += len(text)
        tokens += len(sp.encode(text))
    return chars / tokens if tokens else 0.0


def parse_model(data: bytes) -> ModelProto:
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(data)
    return proto


def load_base_tokenizer(path: Path) -> ModelProto:
    """Read a LLaMA-family base: a SentencePiece ``.model`` file, or a HF dir holding one.

    Byte-level BPE bases (LLaMA-3 style ``tokenizer.json`` without ``tokenizer.model``),
    Unigram SentencePiece models and bases whose normalizer changes whitespace
    (:func:`whitespace_problem`) are refused with the reason.
    """
    if path.is_dir():
        model_file = path / "tokenizer.model"
        if not model_file.is_file():
            raise StageError(_no_sentencepiece_reason(path))
        path = model_file
    try:
        data = path.read_bytes()
        proto = parse_model(data)
    except OSError as err:
        raise StageError(f"{path}: cannot read the base tokenizer: {err}") from None
    except Exception:  # protobuf raises DecodeError and friends
        raise StageError(
            f"{path}: not a SentencePiece model (a LLaMA-family tokenizer.model, or a HF "
            f"tokenizer folder containing one)"
        ) from None
    if not proto.pieces:
        raise StageError(f"{path}: not a SentencePiece model (it has no pieces)")
    if proto.trainer_spec.model_type != BPE_MODEL_TYPE:
        raise StageError(
            f"{path}: the base is a SentencePiece {_model_type_name(proto)} model; llamagene "
            f"merges into BPE bases (LLaMA-1/2, Mistral, and other LLaMA-family tokenizers)"
        )
    if proto.normalizer_spec.name not in ("identity", "") and not (
        proto.normalizer_spec.precompiled_charsmap
    ):
        raise StageError(f"{path}: normalizer {proto.normalizer_spec.name!r} has no charsmap")
    if proto.trainer_spec.treat_whitespace_as_suffix:
        raise StageError(f"{path}: bases with treat_whitespace_as_suffix are not supported")
    try:
        problem = whitespace_problem(proto)
    except RuntimeError as err:  # sentencepiece's error for a spec it cannot load
        raise StageError(f"{path}: SentencePiece cannot load its normalizer: {err}") from None
    if problem:
        raise StageError(
            f"{path}: the base's normalizer changes whitespace ({problem}), so text with runs of "
            f"spaces, tabs or newlines would not decode back to itself; llamagene needs a base "
            f"that keeps whitespace (LLaMA-1/2, Mistral)"
        )
    return proto


#: Whitespace a base must keep: ``(what it is, text holding it)``.
_WHITESPACE_PROBES = (
    ("two spaces", "a  b"),
    ("a leading space", " a"),
    ("a trailing space", "a "),
    ("a tab", "a\tb"),
    ("a newline", "a\nb"),
    ("a carriage return", "a\r\nb"),
)


def whitespace_problem(proto: ModelProto) -> str | None:
    """How the normalizer of ``proto`` changes whitespace, naming the setting; None if it keeps it.

    ``remove_extra_whitespaces`` is read from the model; normalization rules (a precompiled
    charsmap, such as ``nmt_nfkc``'s, which maps tabs and newlines to spaces) are probed by
    normalizing text that holds each kind of whitespace.
    """
    import sentencepiece as spm

    spec = proto.normalizer_spec
    if spec.remove_extra_whitespaces:
        return (
            "normalizer_spec.remove_extra_whitespaces is true: runs of spaces become one, "
            "leading and trailing spaces are dropped"
        )
    normalizer = spm.SentencePieceNormalizer(normalizer_spec=spec.SerializeToString())
    prefix = "▁" if spec.add_dummy_prefix else ""
    for what, text in _WHITESPACE_PROBES:
        want = prefix + (text.replace(" ", "▁") if spec.escape_whitespaces else text)
        got = normalizer.normalize(text)
        if got != want:
            shown = got[len(prefix) :] if got.startswith(prefix) else got
            return (
                f"normalizer_spec.name is {spec.name!r}: {text!r} ({what}) becomes "
                f"{shown.replace('▁', ' ')!r}"
            )
    return None


def _no_sentencepiece_reason(path: Path) -> str:
    tok_json = path / "tokenizer.json"
    if not tok_json.is_file():
        return (
            f"{path}: no tokenizer.model or tokenizer.json here: give a LLaMA-family "
            f"SentencePiece tokenizer.model, or a HF tokenizer folder containing one"
        )
    try:
        spec = json.loads(tok_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{tok_json}: unreadable tokenizer.json ({err})"
    pre = json.dumps(spec.get("pre_tokenizer"))
    if "ByteLevel" in pre:
        return (
            f"{path}: a byte-level BPE tokenizer (LLaMA-3 style tokenizer.json) is not supported: "
            f"llamagene merges DNA and protein pieces into SentencePiece BPE bases (LLaMA-1/2, "
            f"Mistral v1). Give such a base's tokenizer.model"
        )
    return (
        f"{path}: has tokenizer.json but no tokenizer.model; llamagene needs the SentencePiece "
        f"tokenizer.model of the base to merge into"
    )


def _model_type_name(proto: ModelProto) -> str:
    return {1: "Unigram", 2: "BPE", 3: "word", 4: "char"}.get(proto.trainer_spec.model_type, "?")


@dataclass(frozen=True)
class MergedVocab:
    """A merged SentencePiece model and where each sequence kind's pieces sit in it."""

    proto: ModelProto
    base_size: int
    #: kind -> (first id, one past the last id) of its pieces
    ranges: dict[SequenceKind, tuple[int, int]]


def merge_models(base: ModelProto, sequence_models: Mapping[SequenceKind, bytes]) -> MergedVocab:
    """Append each sequence model's pieces (in its private-use alphabet) after the base's."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    merged = pb.ModelProto()
    merged.CopyFrom(base)
    normal_scores = [p.score for p in base.pieces if p.type == NORMAL and p.score > _HAND_SCORE]
    score = min(normal_scores, default=0.0) - 1.0
    existing = {p.piece for p in base.pieces}
    ranges: dict[SequenceKind, tuple[int, int]] = {}
    for kind, data in sequence_models.items():
        table = {ord(c): model_code(kind, c) for c in LETTERS[kind]}
        start = len(merged.pieces)
        for piece in parse_model(data).pieces:
            if piece.type != NORMAL:
                continue
            mapped = piece.piece.translate(table)
            if not set(piece.piece) <= set(LETTERS[kind]) or mapped in existing:
                raise StageError(
                    f"{kind} model has piece {piece.piece!r} with letters outside {LETTERS[kind]}"
                )
            new = merged.pieces.add()
            new.piece, new.score, new.type = mapped, score, NORMAL
            existing.add(mapped)
            score -= 1.0
        ranges[kind] = (start, len(merged.pieces))
    if score < -(2**24):
        raise StageError("vocabulary too large: scores would lose float32 precision")
    return MergedVocab(merged, len(base.pieces), ranges)


def build_fast_tokenizer(proto: ModelProto) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that encodes exactly like the SentencePiece BPE ``proto``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

    pieces = list(proto.pieces)
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    mergeable = {p.piece for p in pieces if p.type in (NORMAL, USER_DEFINED)}
    ranked: list[tuple[float, int, int, int, str, str]] = []
    for piece in pieces:
        if piece.type != NORMAL:
            continue
        text = piece.piece
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-piece.score, -cut, vocab[left], vocab[right], left, right))
    ranked.sort()
    unk = next((p.piece for p in pieces if p.type == UNKNOWN), None)
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=[(r[4], r[5]) for r in ranked],
            unk_token=unk,
            byte_fallback=proto.trainer_spec.byte_fallback,
            fuse_unk=True,
        )
    )
    spec = proto.normalizer_spec
    steps: list[Any] = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    back = [decoders.Replace(chr(code), letter) for code, letter in _code_letters()]
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            *([decoders.Strip(" ", 1, 0)] if spec.add_dummy_prefix else []),
            *back,
        ]
    )
    specials = [p.piece for p in pieces if p.type in (UNKNOWN, CONTROL)]
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    user = [p.piece for p in pieces if p.type == USER_DEFINED]
    if user:
        tokenizer.add_tokens([AddedToken(s, special=False, normalized=False) for s in user])
    bos_id = proto.trainer_spec.bos_id
    if 0 <= bos_id < len(pieces):
        bos = pieces[bos_id].piece
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def _code_letters() -> list[tuple[int, str]]:
    kinds: tuple[SequenceKind, ...] = ("dna", "protein")
    return [(ord(model_code(kind, c)), c) for kind in kinds for c in LETTERS[kind]]


def save_hf_tokenizer(merged: MergedVocab, out_dir: Path, model_max_length: int) -> None:
    """Write a HF tokenizer folder: ``tokenizer.json`` (fast), ``tokenizer.model`` (slow),
    ``tokenizer_config.json``, ``special_tokens_map.json`` and llamagene's own metadata."""
    proto = merged.proto
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = build_fast_tokenizer(proto)
    write_text_atomic(out_dir / "tokenizer.json", fast.to_str(pretty=False))
    write_bytes_atomic(out_dir / "tokenizer.model", proto.SerializeToString())
    spec = proto.trainer_spec

    def piece(idx: int) -> str | None:
        return proto.pieces[idx].piece if 0 <= idx < len(proto.pieces) else None

    special = {
        "bos_token": piece(spec.bos_id),
        "eos_token": piece(spec.eos_id),
        "unk_token": piece(spec.unk_id),
    }
    special = {k: v for k, v in special.items() if v is not None}
    config = {
        # The generic fast class: LlamaTokenizer would rebuild the pre-tokenizer and drift from
        # SentencePiece on whitespace runs (ARCHITECTURE.md).
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": spec.bos_id >= 0,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "right",
    }
    write_text_atomic(out_dir / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    write_text_atomic(out_dir / "special_tokens_map.json", json.dumps(special, indent=2) + "\n")
    write_chat_template(out_dir)  # the prompt format, for apply_chat_template
    meta = {
        "format": "llamagene-tokenizer",
        "version": 1,
        "base_vocab_size": merged.base_size,
        "vocab_size": len(proto.pieces),
        "ranges": {kind: list(r) for kind, r in merged.ranges.items()},
        "alphabets": {
            kind: {letter: model_code(kind, letter) for letter in LETTERS[kind]}
            for kind in merged.ranges
        },
    }
    write_text_atomic(
        out_dir / TOKENIZER_META, json.dumps(meta, indent=2, ensure_ascii=True) + "\n"
    )
