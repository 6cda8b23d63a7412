"""Errors that llamagene reports to a person as one clear message, never as a traceback.

Every error a user can cause (a bad config, a malformed input file, a corrupt manifest) is a
subclass of :class:`LlamageneError`; the CLI prints its message and exits with its ``exit_code``.
"""

from __future__ import annotations


class LlamageneError(Exception):
    """A problem the user can fix; ``str(err)`` says what is wrong, where, and how to fix it."""

    exit_code: int = 2


class ConfigError(LlamageneError):
    """A pipeline file or override is invalid. ``problems`` lists every problem found, each
    prefixed with its YAML path (``stages.train_bpe.dna_vocab_size: ...``)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}:\n{lines}")


class ManifestError(LlamageneError):
    """The run's manifest cannot be read or does not describe this pipeline."""


class StageError(LlamageneError):
    """A stage could not do its work because of its inputs (not a bug in llamagene)."""

    exit_code = 1


class TrainingStopped(StageError):
    """Training saved a checkpoint and stopped because it was asked to (a signal, a stop
    file); rerunning the stage resumes. Its exit code (EX_TEMPFAIL) tells a job script to
    requeue rather than give up."""

    exit_code = 75


class NotImplementedStageError(LlamageneError):
    """A stage named in a pipeline is planned but not built in this version."""
