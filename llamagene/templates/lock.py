"""The lock file that pins each template's version to its text: ``templates.lock.json``.

``prompt_templates/templates.lock.json`` maps every template id to its version and the SHA-256
of what its rendered text depends on (:attr:`PromptTemplate.text_hash`: task, type, prompt,
answer, choices and the vars it uses; not weight, metrics or comments). :func:`lock_problems`
compares templates with it: text changed without a version bump, a version that went down,
templates missing from or stale in the lock. ``llamagene templates lint`` reports them and
``--update-lock`` rewrites the lock (:func:`write_lock`); ``build_sft`` refuses a template whose
(version, text) is not the lock's (:func:`check_locked`), so a version number always names one
text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from llamagene.templates.loading import PromptTemplate
from llamagene.templates.problems import LintProblem, TemplateError, show_path

LOCK_NAME = "templates.lock.json"
LOCK_FORMAT = "llamagene-templates-lock"
UPDATE_HINT = "run `llamagene templates lint --update-lock`"


def lock_problems(
    templates: Sequence[PromptTemplate], previous: Mapping[str, tuple[int, str]]
) -> list[LintProblem]:
    """Changed text without a version bump; templates missing from, or stale in, the lock."""
    problems: list[LintProblem] = []
    fix = UPDATE_HINT
    for tpl in templates:
        where = show_path(tpl.path)
        if tpl.id not in previous:
            problems.append(LintProblem(where, tpl.id, f"not in {LOCK_NAME}: {fix}", lock=True))
            continue
        version, text_hash = previous[tpl.id]
        if text_hash != tpl.text_hash and tpl.version <= version:
            problems.append(
                LintProblem(
                    where,
                    tpl.id,
                    f"text changed but version not bumped ({LOCK_NAME} has version {version} "
                    f"with another text): set version: {version + 1}",
                )
            )
        elif tpl.version < version:
            problems.append(LintProblem(where, tpl.id, f"version went down from {version}"))
        elif (tpl.version, tpl.text_hash) != (version, text_hash):
            message = f"{LOCK_NAME} has version {version}: {fix}"
            problems.append(LintProblem(where, tpl.id, message, lock=True))
    ids = {t.id for t in templates}
    for gone in sorted(set(previous) - ids):
        message = f"in {LOCK_NAME} but no template has this id: {fix}"
        problems.append(LintProblem(LOCK_NAME, gone, message, lock=True))
    return problems


def read_lock(path: Path) -> dict[str, tuple[int, str]]:
    """id -> (version, text_hash) from a lock file; {} if there is none."""
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format") != LOCK_FORMAT:
            raise ValueError(f"format is not {LOCK_FORMAT!r}")
        return {k: (int(v["version"]), str(v["sha256"])) for k, v in raw["templates"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise TemplateError(f"not a template lock file ({err}): rewrite it with --update-lock",
                            path=path) from None  # fmt: skip


def lock_text(templates: Sequence[PromptTemplate]) -> str:
    """The lock file for ``templates``: sorted, so an unchanged set gives identical bytes."""
    entries = {t.id: {"version": t.version, "sha256": t.text_hash} for t in templates}
    body = {"format": LOCK_FORMAT, "templates": dict(sorted(entries.items()))}
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def write_lock(path: Path, templates: Sequence[PromptTemplate]) -> None:
    from llamagene.manifest import write_text_atomic

    write_text_atomic(path, lock_text(templates))


def check_locked(templates: Sequence[PromptTemplate], lock_path: Path) -> None:
    """Refuse any of ``templates`` whose (version, text) is not what ``lock_path`` records.

    Raises TemplateError naming the template file and id and how to fix it: an edited text
    under an old version would otherwise be rendered as if it were the text that version names.
    """
    if not lock_path.is_file():
        raise TemplateError(
            f"no {LOCK_NAME} beside the templates: every template's version must be recorded "
            f"before build_sft renders it; run `llamagene templates --root "
            f"{show_path(lock_path.parent)} lint --update-lock`",
            path=lock_path,
        )
    locked = read_lock(lock_path)
    for tpl in templates:
        entry = locked.get(tpl.id)
        if entry is None:
            reason = f"not in {LOCK_NAME}: lint it, then {UPDATE_HINT}"
        elif entry == (tpl.version, tpl.text_hash):
            continue
        elif entry[0] == tpl.version:
            reason = (
                f"its text differs from the text {LOCK_NAME} records for version "
                f"{tpl.version}: set version: {tpl.version + 1}, then {UPDATE_HINT}"
            )
        else:
            reason = f"{LOCK_NAME} records version {entry[0]}, not {tpl.version}: {UPDATE_HINT}"
        raise TemplateError(reason, path=tpl.path, template_id=tpl.id)
