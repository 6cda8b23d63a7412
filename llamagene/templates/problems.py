"""How template problems are told: :class:`TemplateError` (one line naming the file and the
template id) and :class:`LintProblem` (one line of ``llamagene templates lint``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamagene.errors import LlamageneError


class TemplateError(LlamageneError):
    """A template cannot be loaded or rendered; the message names the file and template id."""

    def __init__(
        self, reason: str, *, path: Path | str | None = None, template_id: str | None = None
    ) -> None:
        self.reason = reason
        self.path = path
        self.template_id = template_id
        where = f"{show_path(path)}: " if path is not None else ""
        where += f"template {template_id}: " if template_id else ""
        super().__init__(where + reason)


@dataclass(frozen=True)
class LintProblem:
    """One problem; ``lock`` problems are the ones ``lint --update-lock`` fixes; a ``warning``
    is shown but does not fail ``lint``."""

    path: str
    template_id: str
    message: str
    lock: bool = False
    warning: bool = False

    def __str__(self) -> str:
        message = f"warning: {self.message}" if self.warning else self.message
        if self.template_id:
            return f"{self.path}: {self.template_id}: {message}"
        return f"{self.path}: {message}"


def show_path(path: Path | str | None) -> str:
    """A path relative to the working directory where it lies below it."""
    if path is None:
        return ""
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(p)
