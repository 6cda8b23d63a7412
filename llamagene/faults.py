"""Fault injection for the reliability tests: kill a run at a named point, as a crash would.

    LLAMAGENE_FAULT=corpus.tokenize llamagene run PIPELINE.yaml

When the variable names a point that :func:`reached` is called with, the ``llamagene run``
process is sent SIGKILL. Called from a forked worker, that kills the worker's parent mid-work:
the case that used to leave orphaned workers holding the run folder's lock. Outside the tests
the variable is unset and :func:`reached` costs one dictionary lookup.

Points: ``corpus.tokenize`` (a ``datasets`` tokenizing worker), ``build_sft.render`` (a
build_sft rendering worker).
"""

from __future__ import annotations

import contextlib
import os
import signal

FAULT_ENV = "LLAMAGENE_FAULT"
#: The ``llamagene run`` process (inherited by forked workers); 0 when no run is armed.
_run_pid = 0


def arm() -> None:
    """Mark this process as the run that a fault kills (called when a run takes its lock)."""
    global _run_pid
    if os.environ.get(FAULT_ENV):
        _run_pid = os.getpid()


def reached(point: str) -> None:
    """Kill the armed run if ``LLAMAGENE_FAULT`` names ``point``."""
    if os.environ.get(FAULT_ENV) != point or _run_pid <= 1:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(_run_pid, signal.SIGKILL)
