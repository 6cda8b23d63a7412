"""English instruction data mixed into the SFT set so the model keeps its English.

Two JSON Lines formats (plain or gzip):

- ``alpaca``: ``{"instruction": ..., "input": ..., "output": ...}``; ``input`` may be empty or
  absent. The prompt is the instruction, then a blank line and the input when there is one.
- ``chat``: ``{"messages": [{"role": ..., "content": ...}, ...]}``: an optional ``system``
  message, then ``user`` and ``assistant`` turns in turn, ending with the assistant's. Every
  assistant turn is trained (:mod:`llamagene.prompt_format`).

Each line becomes an :class:`~llamagene.tasks.Example` of task ``english/<file stem>``, split
``train``, with the fields ``prompt`` and ``answer`` (a chat: its last user turn and the answer
to it) and, for a chat, ``messages`` (every turn, stripped). Errors name the file and line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from llamagene.prompt_format import ROLES, FormatError, Message, Role, check_order
from llamagene.tasks import Example, TaskDataError
from llamagene.tasks.table import iter_jsonl

InstructionFormat = Literal["alpaca", "chat"]


def instruction_task_id(path: Path) -> str:
    """``english/<stem>``: ``data/alpaca.jsonl.gz`` -> ``english/alpaca``."""
    name = path.name.removesuffix(".gz")
    for suffix in (".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return f"english/{name}"


def load_instructions(path: Path, format: InstructionFormat) -> Iterator[Example]:
    """Stream ``path``'s rows as Examples with ``prompt`` and ``answer``; ``format`` is
    ``alpaca`` or ``chat``."""
    if format not in ("alpaca", "chat"):
        raise ValueError(f"format must be 'alpaca' or 'chat', not {format!r}")
    if not path.is_file():
        raise TaskDataError(str(path), "instruction file not found")
    task_id = instruction_task_id(path)
    parse = _alpaca if format == "alpaca" else _chat
    index = 0
    for line, row in iter_jsonl(path):
        where = f"{path}:{line}"
        yield Example(task_id, "train", index, parse(row, where), where)
        index += 1
    if index == 0:
        raise TaskDataError(str(path), "no instructions: the file has no rows")


def _text(row: dict[str, Any], key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise TaskDataError(where, f"'{key}' must be a string ({got}); keys here: {', '.join(row)}")
    if required and not value.strip():
        raise TaskDataError(where, f"'{key}' is empty")
    return value


def _alpaca(row: dict[str, Any], where: str) -> dict[str, Any]:
    instruction = _text(row, "instruction", where).strip()
    extra = _text(row, "input", where, required=False).strip()
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return {"prompt": prompt, "answer": _text(row, "output", where).strip()}


def _chat(row: dict[str, Any], where: str) -> dict[str, Any]:
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise TaskDataError(where, "'messages' must be a list of at least 2 {role, content} turns")
    turns: list[tuple[Role, str]] = []
    for i, message in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(message, dict):
            raise TaskDataError(at, "expected an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise TaskDataError(at, f"role {role!r} is not one of {', '.join(ROLES)}")
        turns.append((role, _text(message, "content", at).strip()))
    *context, (last_role, answer) = turns
    if last_role != "assistant":
        reason = (
            f"the last message is the answer, so its role must be 'assistant', not {last_role!r}"
        )
        raise TaskDataError(where, reason)
    if not any(role == "user" for role, _ in context):
        raise TaskDataError(where, "no 'user' turn before the answer")
    messages = [Message(role, text) for role, text in turns]
    try:
        check_order(messages)
    except FormatError as err:
        raise TaskDataError(where, str(err)) from None
    return {
        "prompt": context[-1][1],
        "answer": answer,
        "messages": [{"role": role, "content": text} for role, text in turns],
    }
