"""Talk to a trained model: load it, turn a conversation into ids, and stream the answer.

    generator = load_for_generation(Path("runs/demo/pretrain/merged"))
    # or: load_for_generation(Path("base_model"), adapter_dir=Path("runs/demo/pretrain/adapter"))
    messages = [Message("user", "Translate <dna>atggcc</dna> in frame 0.")]
    for text in generator.stream(messages, Settings(max_new_tokens=64)):
        print(text, end="", flush=True)

    chat = Conversation(generator, system="Answer briefly.")
    "".join(chat.reply("Is <dna>TATAAT</dna> a promoter?", Settings()))   # kept in chat.messages

This is what ``llamagene generate`` and ``llamagene chat`` run (:mod:`llamagene.cli`).

**Prompts** go through the prompt format (:mod:`llamagene.prompt_format`), nothing else: the
ids generation starts from are ``PromptFormat.prompt_ids`` of the conversation so far. Letters
inside ``<dna>…</dna>`` and ``<protein>…</protein>`` spans may be typed in lower case; they are
upper-cased first, and a letter outside the alphabet is a :class:`FormatError`.

**Answers** are decoded piece by piece as the model makes them, with the merged tokenizer's
decoder, which writes the DNA and protein pieces back as plain letters; generation stops at the
tokenizer's EOS (also the padding id). Greedy unless ``Settings.sample``. The model's own
``generation_config`` (e.g. ``suppress_tokens`` for the padding rows) is kept.

**Checks** (each a one-line :class:`GenerationError`): the folder is a model folder; the model's
embedding rows are the tokenizer's size rounded up to a multiple of
:data:`~llamagene.training.model.PAD_VOCAB_TO` (a model and a tokenizer that do not belong
together would write garbage); the prompt plus ``max_new_tokens`` fits the model's context.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from llamagene.alphabets import from_model_text, split_markup
from llamagene.errors import LlamageneError
from llamagene.prompt_format import FormatError, Message, PromptFormat

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel, StoppingCriteria

__all__ = [
    "ContextError",
    "Conversation",
    "GenerationError",
    "Generator",
    "IncrementalDecoder",
    "Settings",
    "load_for_generation",
    "upper_spans",
]


class GenerationError(LlamageneError):
    """A model that cannot be loaded or used as asked (bad folder, vocabulary, prompt length)."""


class ContextError(GenerationError):
    """The prompt and the new tokens asked for do not fit the model's context."""


@dataclass(frozen=True)
class Settings:
    """How to generate: greedy by default; ``sample`` draws with ``temperature`` and ``top_p``
    (and ``seed``, set before each answer, so one prompt always gets the same answer)."""

    max_new_tokens: int = 128
    sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None

    def check(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if not self.temperature > 0:
            problems.append(f"temperature must be above 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if problems:
            raise GenerationError("; ".join(problems))


def upper_spans(text: str) -> str:
    """``text`` with the inside of every ``<dna>``/``<protein>`` span upper-cased."""
    parts = split_markup(text)
    out = [parts.texts[0]]
    for (_, letters), after in zip(parts.sequences, parts.texts[1:], strict=True):
        out += [letters.upper(), after]
    return "".join(out)


class IncrementalDecoder:
    """The text that each new id adds to an answer.

    Decoding ids one at a time would lose the spaces the decoder strips at the start of a text
    and cut multi-byte characters, so each step decodes a short window twice (up to the last
    printed id, and up to the newest) and returns the difference; nothing is returned while the
    newest ids end inside a character (the decoder then ends with U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # the window starts here
        self._read = 0  # ids up to here are printed

    def add(self, ids: Sequence[int]) -> str:
        self.ids += ids
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=True)
        after = decode(self.ids[self._prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        # the merged tokenizer's decoder writes letters already; this keeps any other one honest
        return from_model_text(after[len(before) :])


class Generator:
    """A loaded model and its prompt format (see :func:`load_for_generation`)."""

    def __init__(
        self,
        model: PreTrainedModel | PeftModel,
        prompt_format: PromptFormat,
        context_length: int | None,
    ) -> None:
        self.model = model
        self.format = prompt_format
        self.context_length = context_length

    @property
    def eos_id(self) -> int:
        return self.format.eos_id

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The ids generation starts from (spans upper-cased; FormatError on a bad letter)."""
        return self.format.prompt_ids([Message(m.role, upper_spans(m.content)) for m in messages])

    def check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """GenerationError when the prompt and the new tokens do not fit the context."""
        total = prompt_tokens + max_new_tokens
        if self.context_length is not None and total > self.context_length:
            raise ContextError(
                f"the prompt is {prompt_tokens} tokens and up to {max_new_tokens} new tokens "
                f"are asked for: {total} tokens is {total - self.context_length} tokens over "
                f"the model's context of {self.context_length} (max_position_embeddings); "
                f"shorten the prompt or ask for fewer new tokens"
            )

    def stream(self, messages: Sequence[Message], settings: Settings) -> Iterator[str]:
        """The answer to ``messages`` (ending with a user turn), piece by piece as generated.

        The prompt and settings are checked here, before anything is generated; closing the
        iterator early stops the generation."""
        settings.check()
        ids = self.prompt_ids(messages)
        self.check_length(len(ids), settings.max_new_tokens)
        return self.stream_ids(ids, settings)

    def answer(self, messages: Sequence[Message], settings: Settings) -> str:
        return "".join(self.stream(messages, settings))

    def stream_ids(self, prompt_ids: Sequence[int], settings: Settings) -> Iterator[str]:
        """Generate from ``prompt_ids`` in a worker thread and yield the decoded text."""
        import torch

        streamer = _QueueStreamer()
        stop = threading.Event()
        kwargs = self._generate_kwargs(prompt_ids, settings, streamer, stop)
        failures: list[BaseException] = []

        def work() -> None:
            try:
                if settings.sample and settings.seed is not None:
                    torch.manual_seed(settings.seed)
                generate: Any = self.model.generate  # PeftModel and PreTrainedModel alike
                generate(**kwargs)
            except BaseException as err:  # handed to the reading thread, raised there
                failures.append(err)
            finally:
                streamer.end()

        thread = threading.Thread(target=work, name="llamagene-generate", daemon=True)
        thread.start()
        decoder = IncrementalDecoder(self.format.tokenizer)
        try:
            for ids in streamer:
                if self.eos_id in ids:
                    ids = ids[: ids.index(self.eos_id)]
                    stop.set()
                text = decoder.add(ids)
                if text:
                    yield text
                if stop.is_set():
                    break
        finally:
            stop.set()
            thread.join()
        if failures:
            raise failures[0]

    def _generate_kwargs(
        self,
        prompt_ids: Sequence[int],
        settings: Settings,
        streamer: _QueueStreamer,
        stop: threading.Event,
    ) -> dict[str, Any]:
        import torch
        from transformers import StoppingCriteriaList

        device = next(self.model.parameters()).device
        input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.sample,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.eos_id,
            "use_cache": True,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_stop_criterion(stop)]),
        }
        if settings.sample:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        return kwargs


class Conversation:
    """A multi-turn chat: each reply sees the whole conversation so far."""

    def __init__(self, generator: Generator, system: str | None = None) -> None:
        self.generator = generator
        self.system = system.strip() if system and system.strip() else None
        self.messages: list[Message] = []
        self.reset()

    def reset(self) -> None:
        """Forget every turn (the system message stays)."""
        self.messages = [Message("system", self.system)] if self.system else []

    def reply(self, text: str, settings: Settings) -> Iterator[str]:
        """Stream the answer to ``text``; the two turns join the conversation once the answer
        is complete (not when the iterator is closed early, nor on an error)."""
        asked = [*self.messages, Message("user", text)]
        pieces = self.generator.stream(asked, settings)  # checks the prompt now
        return self._keep(asked, pieces)

    def _keep(self, asked: list[Message], pieces: Iterator[str]) -> Iterator[str]:
        answer: list[str] = []
        try:
            for piece in pieces:
                answer.append(piece)
                yield piece
        finally:  # closed early: stop the generation now, not when garbage is collected
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        turns = [*asked, Message("assistant", "".join(answer).strip())]
        try:  # an answer with a span the format cannot read back would break every next turn
            self.generator.format.text_ids([upper_spans(turns[-1].content)])
        except FormatError:
            turns = asked[:-1]
        self.messages = turns


def load_for_generation(
    model_dir: Path, adapter_dir: Path | None = None, device: str | None = None
) -> Generator:
    """Load an exported model folder (safetensors + tokenizer files), or a base model folder
    with an exported adapter (the tokenizer is then the adapter folder's), for generation.

    float32 on the CPU, bfloat16 on a CUDA GPU (``device`` chooses: ``"cpu"``, ``"cuda"``)."""
    import torch
    from transformers import AutoModelForCausalLM

    _check_model_dir(model_dir)
    if adapter_dir is not None:
        _check_adapter_dir(adapter_dir)
    tokenizer_dir = adapter_dir if adapter_dir is not None else model_dir
    prompt_format = PromptFormat.from_dir(tokenizer_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, local_files_only=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise GenerationError(f"{model_dir}: cannot load the model: {_first_line(err)}") from None
    context = getattr(model.config, "max_position_embeddings", None)
    loaded: PreTrainedModel | PeftModel = model
    if adapter_dir is not None:
        from llamagene.training.model import load_adapter_model

        try:
            loaded = load_adapter_model(model, adapter_dir)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise GenerationError(
                f"{adapter_dir}: cannot attach the adapter to {model_dir}: {_first_line(err)}"
            ) from None
    where = adapter_dir if adapter_dir is not None else model_dir
    _check_vocabulary(where, _embedding_rows(loaded), prompt_format.tokenizer)
    loaded.to(device)  # type: ignore[arg-type]
    loaded.eval()
    return Generator(loaded, prompt_format, int(context) if context else None)


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise GenerationError(f"{model_dir}: no such model folder")
    if not (model_dir / "config.json").is_file():
        hint = (
            f" (it is an adapter folder: give the base model folder and --adapter {model_dir})"
            if (model_dir / "adapter_config.json").is_file()
            else ""
        )
        raise GenerationError(f"{model_dir}: not a model folder: it has no config.json{hint}")


def _check_adapter_dir(adapter_dir: Path) -> None:
    if not adapter_dir.is_dir():
        raise GenerationError(f"{adapter_dir}: no such adapter folder")
    for name in ("adapter_config.json", "llamagene_adapter.json"):
        path = adapter_dir / name
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise GenerationError(
                f"{adapter_dir}: not an exported llamagene adapter folder ({name}: "
                f"{_first_line(err)})"
            ) from None


def _embedding_rows(model: PreTrainedModel | PeftModel) -> int:
    weight = cast("torch.Tensor", model.get_input_embeddings().weight)
    return int(weight.shape[0])


def _check_vocabulary(where: Path, rows: int, tokenizer: Tokenizer) -> None:
    from llamagene.training.model import PAD_VOCAB_TO, padded_vocab_size

    size = tokenizer.get_vocab_size(with_added_tokens=True)
    padded = padded_vocab_size(size)
    if rows < size:
        raise GenerationError(
            f"{where}: the model has {rows} embedding rows but its tokenizer has {size} tokens: "
            f"the model and the tokenizer do not belong together"
        )
    if rows != padded:
        raise GenerationError(
            f"{where}: the model has {rows} embedding rows but its tokenizer's {size} tokens "
            f"rounded up to a multiple of {PAD_VOCAB_TO} are {padded}: the model and the "
            f"tokenizer do not belong together"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class _QueueStreamer:
    """What ``model.generate`` hands a streamer, as lists of new ids on a queue (the prompt,
    which generate hands over first, is skipped); iterating ends at :meth:`end`."""

    def __init__(self) -> None:
        self._queue: queue.Queue[list[int] | None] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._queue.put([int(i) for i in value.reshape(-1).tolist()])

    def end(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[list[int]]:
        while (ids := self._queue.get()) is not None:
            yield ids


def _stop_criterion(stop: threading.Event) -> StoppingCriteria:
    """A StoppingCriteria that ends generation once ``stop`` is set (the reader went away)."""
    import torch
    from transformers import StoppingCriteria

    class _Stop(StoppingCriteria):
        def __call__(
            self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
        ) -> torch.BoolTensor:
            done = torch.full((input_ids.shape[0],), stop.is_set(), device=input_ids.device)
            return done  # type: ignore[return-value]

    return _Stop()
