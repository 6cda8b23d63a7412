"""Stage ``merge_vocab``: merge the DNA and protein vocabularies into a LLaMA-family tokenizer.

Reads   ``base_tokenizer`` (a SentencePiece BPE ``tokenizer.model``, or a HF folder holding one),
        ``train_bpe``'s ``dna.model`` / ``protein.model`` and held-out windows.
Writes  ``<run_dir>/merge_vocab/``:
          ``tokenizer/``   HF tokenizer folder: ``AutoTokenizer.from_pretrained`` loads it as a fast
                           tokenizer; ``tokenizer.model`` is the same vocabulary for SentencePiece;
                           ``chat_template.jinja`` is the prompt format (``prompt_format.py``)
          ``report.json``, ``report.md``   id ranges, vocabulary sizes and the checks below
Run     ``llamagene run PIPELINE.yaml --only merge_vocab``

Sequences are written in private-use alphabets (:mod:`llamagene.alphabets`), so the merge leaves
English untouched and reproduces the sequence models' splits exactly. The stage proves it on
data it did not train on, and fails if a check falls below its threshold:

- held-out DNA (protein) windows split by the merged tokenizer as by the DNA (protein) model;
- English lines get the base tokenizer's ids, and every line decodes back to itself;
- the fast tokenizer (what ``AutoTokenizer`` returns) gives SentencePiece's ids on all of it;
- ``decode(encode(x)) == x`` for sequences and for mixed prompts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from llamagene.alphabets import LETTERS, SequenceKind, encode_markup, to_model_text
from llamagene.config import InputPath, StrictModel
from llamagene.errors import StageError
from llamagene.manifest import write_text_atomic
from llamagene.stages import StageContext

log = logging.getLogger("llamagene")


class MergeVocabConfig(StrictModel):
    """Config of ``merge_vocab``."""

    base_tokenizer: InputPath
    """A LLaMA-family SentencePiece BPE ``tokenizer.model``, or a HF tokenizer folder with one."""
    english_eval_files: list[InputPath] = Field(default_factory=list)
    """Plain-text files whose lines check that English is unchanged; default: the docstrings
    of Python's standard library (real English prose present on every machine)."""
    min_split_agreement: float = Field(0.99, ge=0.0, le=1.0)
    """Fail when fewer held-out windows split as the sequence-only model splits them."""
    min_english_agreement: float = Field(0.99, ge=0.0, le=1.0)
    """Fail when fewer English lines keep the base tokenizer's ids."""
    model_max_length: int = Field(4096, ge=16)
    """Written to tokenizer_config.json (the context length of the model to be trained)."""


@dataclass(frozen=True)
class Agreement:
    """How many of ``total`` items passed a check, with an example of a failure."""

    passed: int
    total: int
    example: str = ""

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "total": self.total, "rate": round(self.rate, 6)}


class MergeVocab:
    name = "merge_vocab"

    def upstream(self, cfg: MergeVocabConfig) -> tuple[str, ...]:
        return ("train_bpe",)

    def inputs(self, cfg: MergeVocabConfig) -> dict[str, Path]:
        named = {"base_tokenizer": cfg.base_tokenizer}
        named.update({f"english_eval_files[{i}]": p for i, p in enumerate(cfg.english_eval_files)})
        return named

    def check(self, cfg: MergeVocabConfig) -> list[str]:
        from llamagene.vocab import load_base_tokenizer

        problems = []
        for name, path in self.inputs(cfg).items():
            if not path.exists():
                problems.append(f"{name}: {path} does not exist")
        if cfg.base_tokenizer.exists():
            try:
                load_base_tokenizer(cfg.base_tokenizer)
            except StageError as err:
                problems.append(f"base_tokenizer: {err}")
        return problems

    def run(self, cfg: MergeVocabConfig, ctx: StageContext) -> None:
        from llamagene.vocab import load_base_tokenizer, merge_models, save_hf_tokenizer

        bpe_dir = ctx.upstream("train_bpe")
        models = {
            kind: (bpe_dir / f"{kind}.model").read_bytes()
            for kind in LETTERS
            if (bpe_dir / f"{kind}.model").is_file()
        }
        base = load_base_tokenizer(cfg.base_tokenizer)
        merged = merge_models(base, models)
        tok_dir = ctx.out_dir / "tokenizer"
        save_hf_tokenizer(merged, tok_dir, cfg.model_max_length)
        log.info("merge_vocab: %d -> %d pieces", merged.base_size, len(merged.proto.pieces))

        english = _english_lines(cfg.english_eval_files)
        checks = verify_merged_tokenizer(
            tok_dir, base.SerializeToString(), models, _heldout(bpe_dir, models), english
        )
        report = {
            "base_tokenizer": str(cfg.base_tokenizer),
            "base_vocab_size": merged.base_size,
            "vocab_size": len(merged.proto.pieces),
            "ranges": {kind: list(r) for kind, r in merged.ranges.items()},
            "design": "private-use alphabets per sequence kind (see llamagene.alphabets)",
            "checks": {name: a.as_dict() for name, a in checks.items()},
        }
        for name, agreement in checks.items():
            log.info(
                "merge_vocab: %-18s %d/%d (%.2f%%)",
                name, agreement.passed, agreement.total, 100 * agreement.rate,
            )  # fmt: skip
        write_text_atomic(ctx.out_dir / "report.json", json.dumps(report, indent=2) + "\n")
        write_text_atomic(ctx.out_dir / "report.md", _markdown(report, checks))
        ctx.report.update(
            {k: report[k] for k in ("base_vocab_size", "vocab_size", "ranges")}
            | {f"{name}_rate": round(a.rate, 6) for name, a in checks.items()}
        )
        failures = [
            f"{name}: {a.passed}/{a.total} ({a.rate:.2%}) is below {threshold:.0%}; "
            f"e.g. {a.example}"
            for name, a in checks.items()
            if a.rate < (threshold := _threshold(name, cfg))
        ]
        if failures:
            raise StageError("merged tokenizer failed its checks:\n  " + "\n  ".join(failures))


STAGE = MergeVocab()


def _threshold(check: str, cfg: MergeVocabConfig) -> float:
    if check.endswith("_split"):
        return cfg.min_split_agreement
    if check == "english_ids":
        return cfg.min_english_agreement
    return 1.0  # round trips and fast == slow must hold everywhere


def verify_merged_tokenizer(
    tok_dir: Path,
    base_model: bytes,
    models: dict[SequenceKind, bytes],
    heldout: dict[SequenceKind, list[str]],
    english: list[str],
) -> dict[str, Agreement]:
    """Check the merged tokenizer folder against the base and the sequence-only models."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(str(tok_dir))
    if not fast.is_fast:
        raise StageError(f"{tok_dir}: AutoTokenizer did not load a fast tokenizer")
    slow = spm.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    base = spm.SentencePieceProcessor(model_proto=base_model)

    def fast_ids(text: str) -> list[int]:
        return list(fast.encode(text, add_special_tokens=False))

    checks: dict[str, Agreement] = {}
    mapped_all: list[str] = []
    for kind, windows in heldout.items():
        only = spm.SentencePieceProcessor(model_proto=models[kind])
        mapped = [to_model_text(w, kind) for w in windows]
        mapped_all += mapped

        def same_split(pair: tuple[str, str], only: Any = only, kind: SequenceKind = kind) -> bool:
            window, text = pair
            want = [to_model_text(p, kind) for p in only.encode(window, out_type=str)]
            got = fast.convert_ids_to_tokens(fast_ids(text))
            return bool(got[1:] == want if got[:1] == ["▁"] else got == want)

        checks[f"{kind}_split"] = _agree(zip(windows, mapped, strict=True), same_split)
        checks[f"{kind}_roundtrip"] = _agree(
            zip(windows, mapped, strict=True),
            lambda pair: bool(fast.decode(fast_ids(pair[1])) == pair[0]),
        )
    checks["english_ids"] = _agree(english, lambda line: fast_ids(line) == base.encode(line))
    checks["english_roundtrip"] = _agree(english, lambda line: fast.decode(fast_ids(line)) == line)
    mixed = _mixed_prompts(heldout)
    checks["mixed_roundtrip"] = _agree(
        mixed, lambda text: fast.decode(fast_ids(encode_markup(text))) == text
    )
    everything = english + mapped_all + [encode_markup(t) for t in mixed]
    checks["fast_equals_slow"] = _agree(everything, lambda t: fast_ids(t) == slow.encode(t))
    return checks


def _agree(items: Iterable[Any], ok: Callable[[Any], bool]) -> Agreement:
    passed = total = 0
    example = ""
    for item in items:
        total += 1
        if ok(item):
            passed += 1
        elif not example:
            example = repr(item)[:120]
    return Agreement(passed, total, example)


def _heldout(bpe_dir: Path, models: dict[SequenceKind, bytes]) -> dict[SequenceKind, list[str]]:
    heldout: dict[SequenceKind, list[str]] = {}
    for kind in models:
        path = bpe_dir / f"{kind}_heldout.txt"
        lines = path.read_text(encoding="ascii").split() if path.is_file() else []
        heldout[kind] = lines
    return heldout


def _mixed_prompts(heldout: dict[SequenceKind, list[str]]) -> list[str]:
    dna = heldout.get("dna", [])[:50]
    protein = heldout.get("protein", [])[:50]
    prompts = [f"Is this sequence a promoter?  <dna>{s}</dna>\nAnswer: yes" for s in dna]
    prompts += [
        f"What does this protein do?\n<protein>{p}</protein> It binds ATP." for p in protein
    ]
    prompts += [
        f"Does <protein>{p[:60]}</protein> bind <dna>{s[:80]}</dna>? No."
        for s, p in zip(dna, protein, strict=False)
    ]
    return prompts


def _english_lines(files: list[Path]) -> list[str]:
    lines: list[str] = []
    if files:
        for path in files:
            text = path.read_text(encoding="utf-8", errors="replace")
            lines += [line for line in text.splitlines() if line.strip()]
        return lines
    import importlib
    import inspect

    seen: set[str] = set()
    for name in _STDLIB_DOC_MODULES:
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            doc = inspect.getdoc(obj) if callable(obj) or obj is module else None
            for line in (doc or "").splitlines():
                if line.strip() and line not in seen:
                    seen.add(line)
                    lines.append(line)
    return lines


_STDLIB_DOC_MODULES = (
    "argparse", "collections", "csv", "datetime", "decimal", "difflib", "email.message",
    "fractions", "functools", "gzip", "heapq", "http.client", "itertools", "json", "logging",
    "pathlib", "shutil", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "enum", "unittest", "urllib.parse", "zipfile",
)  # fmt: skip


def _markdown(report: dict[str, Any], checks: dict[str, Agreement]) -> str:
    rows = "\n".join(
        f"| {name} | {a.passed} / {a.total} | {a.rate:.2%} |" for name, a in checks.items()
    )
    ranges = "\n".join(
        f"| {kind} | {start} | {end - 1} | {end - start} |"
        for kind, (start, end) in report["ranges"].items()
    )
    return (
        "# merge_vocab report\n\n"
        f"Base `{report['base_tokenizer']}`: {report['base_vocab_size']} pieces; "
        f"merged: {report['vocab_size']} pieces.\n\n"
        "Sequences are written in private-use alphabets before encoding "
        "(`llamagene.alphabets.to_model_text` / `encode_markup`).\n\n"
        "| kind | first id | last id | pieces |\n|---|---|---|---|\n"
        f"{ranges}\n\n"
        "| check | passed | rate |\n|---|---|---|\n"
        f"{rows}\n"
    )
