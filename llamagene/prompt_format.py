"""The prompt format: the one place where a prompt and its answer become token ids.

    fmt = PromptFormat.from_dir(run_dir / "merge_vocab" / "tokenizer")
    encoded = fmt.encode(single_turn("Is <dna>TATAAT</dna> a promoter?", "yes"))
    encoded.input_ids, encoded.labels        # labels: -100 on the prompt side
    fmt.prompt_ids([Message("user", "Translate <dna>ATGGCC</dna>")])   # what generation starts from

``build_sft`` counts rows with it, ``finetune`` trains on it, ``evaluate`` scores with it and
``llamagene chat`` talks with it; every exported model carries it as the tokenizer's chat
template (:func:`chat_template`), so ``tokenizer.apply_chat_template`` gives the same ids.

**The ids of a conversation** (system, then user and assistant turns in turn)::

    BOS  [system "\\n\\n"] user CUE  answer EOS  user CUE  answer EOS ...

where ``CUE`` is ``"\\n\\n### Response:"`` and every text is encoded on its own (the tokenizer
puts its word-start mark ``▁`` before it, so an answer ``no`` is ``▁no``). Labels are the answer's
ids and its EOS; everything else is -100. A single-turn row (a benchmark prompt and its answer)
is one user turn and one assistant turn; an English instruction is the same, with its text read
as plain text (``markup=False``: a ``<dna>`` in it is no sequence markup).

**Sequences.** Inside ``<dna>…</dna>`` and ``<protein>…</protein>`` spans the letters are mapped to
the merged tokenizer's private-use alphabets (:mod:`llamagene.alphabets`) before encoding; the
tokenizer maps them back to letters when decoding.

**Why the string and the parts agree.** The chat template renders one string and the tokenizer
encodes it whole, while this module encodes the parts and joins the ids. The two agree because
every seam is one that no BPE merge crosses: BOS and EOS are special tokens (the tokenizer
encodes the text between them on its own, ``▁`` first); the cue starts with a newline, which a
SentencePiece LLaMA-family vocabulary holds only as a byte piece; and the answer follows the
cue's ``:`` after a space, and no piece has ``▁`` after another character. :func:`seam_problem`
checks the last two facts of a tokenizer, and the tests check the ids on every demo row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llamagene.alphabets import LETTERS, encode_markup, model_code
from llamagene.errors import LlamageneError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

#: Bump when the ids of some conversation change.
FORMAT_VERSION = 1
#: Starts the answer of every assistant turn; a prompt for generation ends with it.
CUE = "\n\n### Response:"
#: Between a system message and the first user message.
SYSTEM_SEPARATOR = "\n\n"
#: The label of a position that is not trained.
IGNORE = -100
#: Where an exported model folder keeps the format (transformers reads it as the chat template).
CHAT_TEMPLATE_FILE = "chat_template.jinja"

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")


class FormatError(LlamageneError):
    """A conversation the format cannot encode (roles out of order, bad sequence letters)."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class Encoded:
    """A conversation's ids, and its labels (the id where trained, else -100)."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained(self) -> int:
        """Positions with a label (answer tokens and their EOS)."""
        return sum(label != IGNORE for label in self.labels)


def single_turn(prompt: str, answer: str) -> list[Message]:
    """A benchmark row or an English instruction: one user turn and its answer."""
    return [Message("user", prompt), Message("assistant", answer)]


def messages_of(row: Mapping[str, Any]) -> list[Message]:
    """The conversation of a ``build_sft`` row: its ``messages`` when it has them (chat data),
    else its ``prompt`` and ``answer``."""
    turns = row.get("messages")
    if turns:
        return [Message(m["role"], m["content"]) for m in turns]
    return single_turn(str(row["prompt"]), str(row["answer"]))


def check_order(messages: Sequence[Message], *, for_generation: bool = False) -> None:
    """Raise FormatError unless the roles run: [system] user assistant user assistant ... (for
    generation: ending with a user turn)."""
    roles = [m.role for m in messages]
    start = 1 if roles[:1] == ["system"] else 0
    body = roles[start:]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(body))]
    problem = None
    if any(r not in ROLES for r in roles):
        problem = f"roles must be among {', '.join(ROLES)}"
    elif not body or body != expected:
        problem = "turns must alternate user, assistant, ... after an optional system message"
    elif for_generation != (body[-1] == "user"):
        problem = f"the last turn must be the {'user' if for_generation else 'assistant'}'s"
    if problem:
        raise FormatError(f"{problem} (got {', '.join(roles) or 'no turns'})")


class PromptFormat:
    """The format over one tokenizer (a merged tokenizer folder's ``tokenizer.json``)."""

    def __init__(self, tokenizer: Tokenizer, bos_id: int, eos_id: int) -> None:
        self.tokenizer = tokenizer
        self.bos_id = bos_id
        self.eos_id = eos_id

    @classmethod
    def from_dir(cls, tokenizer_dir: Path) -> PromptFormat:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
            config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text("utf-8"))
        except Exception as err:  # tokenizers raises its own Exception on a bad file
            raise FormatError(f"{tokenizer_dir}: not a tokenizer folder ({err})") from None
        bos, eos = (tokenizer.token_to_id(str(config.get(k))) for k in ("bos_token", "eos_token"))
        if bos is None or eos is None:
            raise FormatError(f"{tokenizer_dir}: the tokenizer has no BOS or no EOS token")
        return cls(tokenizer, bos, eos)

    def text_ids(self, texts: Sequence[str], markup: bool = True) -> list[list[int]]:
        """Each text encoded on its own (``▁`` first), sequence spans mapped when ``markup``."""
        mapped = [self._mapped(t) if markup else t for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch_fast(mapped, add_special_tokens=False)]

    def encode(self, messages: Sequence[Message], markup: bool = True) -> Encoded:
        """A whole conversation, ending with an assistant turn."""
        return self.encode_many([messages], markup=[markup])[0]

    def encode_many(
        self, conversations: Sequence[Sequence[Message]], markup: Sequence[bool]
    ) -> list[Encoded]:
        """Many conversations at once (one batch through the tokenizer per markup kind)."""
        plans = [self._texts(c) for c in conversations]
        ids: list[list[list[int]] | None] = [None] * len(plans)
        for kind in (True, False):
            chosen = [i for i, m in enumerate(markup) if m is kind]
            flat = self.text_ids([t for i in chosen for t, _ in plans[i]], markup=kind)
            at = 0
            for i in chosen:
                ids[i], at = flat[at : at + len(plans[i])], at + len(plans[i])
        return [self._join(plan, parts or []) for plan, parts in zip(plans, ids, strict=True)]

    def prompt_ids(self, messages: Sequence[Message], markup: bool = True) -> list[int]:
        """The ids generation starts from: the conversation so far (ending with a user turn),
        up to and including the cue."""
        check_order(messages, for_generation=True)
        plan = self._texts([*messages, Message("assistant", "")])[:-1]
        return self._join(plan, self.text_ids([t for t, _ in plan], markup)).input_ids

    def _join(self, plan: Sequence[tuple[str, bool]], parts: Sequence[list[int]]) -> Encoded:
        input_ids, labels = [self.bos_id], [IGNORE]
        for (_, trained), part in zip(plan, parts, strict=True):
            part = [*part, self.eos_id] if trained else part
            input_ids += part
            labels += part if trained else [IGNORE] * len(part)
        return Encoded(input_ids, labels)

    def _texts(self, messages: Sequence[Message]) -> list[tuple[str, bool]]:
        """The texts encoded one by one, each with whether it is trained (gets an EOS)."""
        check_order(messages)
        texts: list[tuple[str, bool]] = []
        pending = ""
        for message in messages:
            content = message.content.strip()
            if message.role == "system":
                pending = content + SYSTEM_SEPARATOR
            elif message.role == "user":
                texts.append((pending + content + CUE, False))
                pending = ""
            else:
                texts.append((content, True))
        return texts

    @staticmethod
    def _mapped(text: str) -> str:
        try:
            return encode_markup(text)
        except ValueError as err:
            raise FormatError(str(err)) from None


def seam_problem(tokenizer: Tokenizer) -> str | None:
    """Why joined text would not encode as its parts under this tokenizer, or None: a piece
    holding a newline, or one with ``▁`` after another character (see the module doc)."""
    for piece in tokenizer.get_vocab():
        if "\n" in piece:
            return f"its vocabulary has a piece with a newline ({piece!r})"
        if "\u2581" in piece.lstrip("\u2581"):
            return f"its vocabulary has a piece with an inner word-start mark ({piece!r})"
    return None


def chat_template() -> str:
    """The format as a Jinja chat template (what ``apply_chat_template`` renders).

    A message may carry ``"markup": false`` (English text: its ``<dna>`` is not mapped). Letters
    inside sequence spans are mapped; the template does not check them (llamagene does)."""
    maps = {
        kind: "".join(f"|replace({c!r}, {model_code(kind, c)!r})" for c in letters)
        for kind, letters in LETTERS.items()
    }
    spans = "".join(
        f"{{%- set parts = ns.text.split('<{kind}>') -%}}"
        f"{{%- set ns.text = parts[0] -%}}"
        f"{{%- for part in parts[1:] -%}}"
        f"{{%- if '</{kind}>' in part -%}}"
        f"{{%- set inner = part.split('</{kind}>', 1) -%}}"
        f"{{%- set ns.text = ns.text ~ '<{kind}>' ~ (inner[0]{maps[kind]}) ~ '</{kind}>' "
        f"~ inner[1] -%}}"
        f"{{%- else -%}}{{%- set ns.text = ns.text ~ '<{kind}>' ~ part -%}}{{%- endif -%}}"
        f"{{%- endfor -%}}"
        for kind in LETTERS
    )
    cue = json.dumps(CUE)
    separator = json.dumps(SYSTEM_SEPARATOR)
    return (
        f"{{#- llamagene prompt format {FORMAT_VERSION} (llamagene/prompt_format.py) -#}}\n"
        "{{- bos_token -}}\n"
        "{%- for message in messages -%}\n"
        "{%- set ns = namespace(text=message['content'] | trim) -%}\n"
        "{%- if message.get('markup', true) -%}" + spans + "{%- endif -%}\n"
        "{%- if message['role'] == 'system' -%}{{ ns.text ~ " + separator + " }}\n"
        "{%- elif message['role'] == 'user' -%}{{ ns.text }}\n"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{ " + cue + " ~ ' ' ~ ns.text }}{{ eos_token }}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}{{ " + cue + " }}{%- endif -%}\n"
    )


def write_chat_template(tokenizer_dir: Path) -> None:
    """Ship the format with a tokenizer folder (``chat_template.jinja``)."""
    from llamagene.manifest import write_text_atomic

    write_text_atomic(tokenizer_dir / CHAT_TEMPLATE_FILE, chat_template())
