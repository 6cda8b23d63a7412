"""Stage ``train_bpe``: learn a DNA and a protein BPE vocabulary (SentencePiece by default).

Reads   DNA FASTA/FASTQ (``dna_inputs``) and protein FASTA (``protein_inputs``), plain or gzip.
Writes  ``<run_dir>/train_bpe/``:
          ``dna.model``, ``dna.vocab``          SentencePiece BPE model and its pieces/scores
          ``protein.model``, ``protein.vocab``  the same for protein
          ``dna_heldout.txt``, ``protein_heldout.txt``  windows kept out of training
          ``stats.json``                        pieces, characters read/sampled, bases/token
          ``timings.json``                      seconds spent reading and training (the one
                                                output that differs between identical runs)
Run     ``llamagene run PIPELINE.yaml --only train_bpe``

Genomes stream through :func:`llamagene.sequences.iter_windows` and are cut into sentences of
``dna_sentence_length`` bases (SentencePiece silently skips sentences over its
``max_sentence_length``; llamagene sets that limit above the sentence length). Each window
draws a number from a generator seeded with ``seed``: a ``heldout_fraction`` of windows is kept
out for measuring, and from the rest a uniform sample of at most ``max_train_chars`` characters
is kept (the windows with the smallest draws), so memory is bounded by the budget, not by the
genome, and the same inputs and seed give the same vocabulary byte for byte. On small inputs the
held-out set is topped up to ``min_heldout_windows`` from the windows last in line for training.

``dna_vocab_size`` counts SentencePiece's ``<unk>`` piece, as llama-gene's 30,000 did: the
merged tokenizer gains ``dna_vocab_size - 1`` DNA pieces (likewise for protein).

Two checks guard against inputs that cannot give the vocabulary asked for:

- Size. A BPE merge of a pair seen ``f`` times shortens the training text by ``f`` symbols, so
  ``n`` training characters allow at most ``n / k`` merges of pairs seen at least ``k`` times.
  With ``k =`` :data:`MIN_PAIR_COUNT` (5), the largest sensible vocabulary is
  ``1 (<unk>) + letters + training characters // 5``; asking for more is an error (SentencePiece
  would learn pieces seen once or twice: 111,914 of them from 0.3 Mbp). ``llamagene validate``
  finds it from the input files' sizes (reading at most ``5 x vocab size`` bytes of a gzip file);
  the run finds it exactly, before training. The demo (0.41 Mbp of DNA and 0.62 M residues of
  protein in training) supports 81,535 DNA and 123,778 protein pieces; it asks for 4,000 each.
- Alphabet. A protein input whose residues are at least :data:`DNA_LIKE_FRACTION` (90%)
  A/C/G/T/N/U is most likely DNA listed under ``protein_inputs``: a warning, or an error with
  ``strict_alphabet: true`` (proteins are about 25% these letters). DNA inputs need no such
  check: the DNA reader refuses any letter that DNA lacks (IUPAC codes and lowercase are DNA).

The sampling lives in :mod:`llamagene.bpe_sampling`, both checks in :mod:`llamagene.bpe_checks`
(their constants and :func:`largest_sensible_vocab_size` are importable from here too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from llamagene.alphabets import SequenceKind
from llamagene.bpe_checks import (
    ALPHABET_PEEK_RESIDUES,
    DNA_LIKE_FRACTION,
    DNA_LIKE_LETTERS,
    MIN_PAIR_COUNT,
    check_protein_alphabet,
    check_vocab_size,
    dna_like_message,
    inspect_start,
    largest_sensible_vocab_size,
    vocab_size_problem_from_files,
)
from llamagene.bpe_sampling import sample_windows
from llamagene.config import InputPath, StrictModel
from llamagene.machine import usable_cpus
from llamagene.manifest import write_bytes_atomic, write_text_atomic
from llamagene.sequences import SequencePolicy, SequenceStats
from llamagene.stages import StageContext

__all__ = [
    "ALPHABET_PEEK_RESIDUES",
    "DNA_LIKE_FRACTION",
    "DNA_LIKE_LETTERS",
    "MIN_PAIR_COUNT",
    "STAGE",
    "KindStats",
    "TrainBpe",
    "TrainBpeConfig",
    "largest_sensible_vocab_size",
]

log = logging.getLogger("llamagene")


class TrainBpeConfig(StrictModel):
    """Config of ``train_bpe``. Defaults follow llama-gene (30,000 pieces per vocabulary)."""

    dna_inputs: list[InputPath] = Field(default_factory=list)
    """DNA FASTA/FASTQ files (plain or gzip); lowercase (soft-masked) bases are upper-cased."""
    protein_inputs: list[InputPath] = Field(default_factory=list)
    """Protein FASTA files (plain or gzip)."""
    dna_vocab_size: int = Field(30000, ge=2)
    """Pieces of the DNA vocabulary, ``<unk>`` included. At most ``1 + letters + training
    bases // 5`` (one merged piece per 5 training bases, see MIN_PAIR_COUNT); more is an error."""
    protein_vocab_size: int = Field(30000, ge=2)
    """Pieces of the protein vocabulary, ``<unk>`` included; the same limit as for DNA."""
    dna_sentence_length: int = Field(1000, ge=8, le=100_000)
    """Bases per training sentence (window); records and N gaps always end a window."""
    protein_sentence_length: int = Field(2000, ge=8, le=100_000)
    """Residues per sentence; longer proteins are cut into several."""
    min_sentence_length: int = Field(20, ge=1)
    """Shorter record tails are dropped (counted in stats.json)."""
    trainer: Literal["sentencepiece", "hf"] = "sentencepiece"
    """BPE trainer: SentencePiece, or HF ``tokenizers`` (about 9x slower, equally good; its
    result is written as a SentencePiece model too, so later stages read either)."""
    max_piece_length: int = Field(16, ge=2, le=64)
    """Longest piece the trainer may learn, in characters."""
    max_train_chars: int = Field(200_000_000, ge=1000)
    """Per kind: a larger input is sampled down to this many characters (uniformly, seeded).
    SentencePiece needs about 37 bytes of memory per training character (100 Mbp: 3.7 GB);
    llama-gene trained on 1 GB per kind, which needs a machine with ~40 GB."""
    heldout_fraction: float = Field(0.01, ge=0.0, lt=0.5)
    """Share of windows kept out of training to measure bases/token (and, later, the merge)."""
    min_heldout_windows: int = Field(200, ge=0)
    """Hold out at least this many windows (taken from those last in line for training, at most
    a tenth of them), so the checks have enough data on small inputs; 0 turns this off."""
    max_heldout_chars: int = Field(2_000_000, ge=0)
    """Cap on the held-out set (written to ``<kind>_heldout.txt`` for merge_vocab's checks)."""
    iupac: Literal["to_n", "error"] = "to_n"
    """DNA: IUPAC ambiguity codes (R, Y, ...) become N, or are an error."""
    n_run_min_length: int = Field(10, ge=0)
    """DNA: N runs at least this long (assembly gaps) end a window and are skipped; 0 keeps all."""
    protein_ambiguous: Literal["keep", "to_x", "error"] = "keep"
    """Protein: B, Z, J, U, O kept, mapped to X, or an error."""
    strict_alphabet: bool = False
    """Make a protein input that looks like DNA (at least 90% A/C/G/T/N/U residues) an error
    naming the file, instead of a warning."""
    seed: int = 42
    num_threads: int | None = Field(None, ge=1)
    """SentencePiece training threads; default: every CPU this process may use."""

    @model_validator(mode="after")
    def _needs_input(self) -> TrainBpeConfig:
        if not self.dna_inputs and not self.protein_inputs:
            raise ValueError("give dna_inputs, protein_inputs or both")
        return self

    def policy(self, kind: SequenceKind) -> SequencePolicy:
        return SequencePolicy(
            kind=kind,
            iupac=self.iupac,
            n_run_min_length=self.n_run_min_length,
            protein_ambiguous=self.protein_ambiguous,
            protein_hint="list it under protein_inputs, not dna_inputs",
        )


@dataclass
class KindStats:
    """What ``train_bpe`` measured for one sequence kind (written to stats.json)."""

    inputs: list[str]
    records: int
    chars_read: int
    windows: int
    dropped_short_windows: int
    n_runs_skipped: int
    train_windows: int
    train_chars: int
    heldout_windows: int
    heldout_chars: int
    vocab_size_requested: int
    pieces: int
    chars_per_token_heldout: float


class TrainBpe:
    name = "train_bpe"

    def upstream(self, cfg: TrainBpeConfig) -> tuple[str, ...]:
        return ()

    def inputs(self, cfg: TrainBpeConfig) -> dict[str, Path]:
        named = {f"dna_inputs[{i}]": p for i, p in enumerate(cfg.dna_inputs)}
        named.update({f"protein_inputs[{i}]": p for i, p in enumerate(cfg.protein_inputs)})
        return named

    def check(self, cfg: TrainBpeConfig) -> list[str]:
        problems = []
        readable = True
        for name, path in self.inputs(cfg).items():
            kind: SequenceKind = "dna" if name.startswith("dna") else "protein"
            problem, dna_like = inspect_start(path, cfg.policy(kind), cfg.strict_alphabet)
            if problem:
                problems.append(f"{name}: {problem}")
                readable = False
            elif cfg.strict_alphabet and dna_like is not None:
                problems.append(f"{name}: {dna_like_message(path, *dna_like, strict=True)}")
        if not readable:
            return problems  # sizes of unreadable inputs mean nothing
        sizes: tuple[tuple[SequenceKind, list[Path], int], ...] = (
            ("dna", cfg.dna_inputs, cfg.dna_vocab_size),
            ("protein", cfg.protein_inputs, cfg.protein_vocab_size),
        )
        for kind, paths, vocab_size in sizes:
            problem = vocab_size_problem_from_files(
                kind, paths, vocab_size, cfg.policy(kind), cfg.max_train_chars
            )
            if problem:
                problems.append(problem)
        return problems

    def run(self, cfg: TrainBpeConfig, ctx: StageContext) -> None:
        stats: dict[str, KindStats] = {}
        timings: dict[str, dict[str, float]] = {}
        jobs: tuple[tuple[SequenceKind, list[Path], int, int], ...] = (
            ("dna", cfg.dna_inputs, cfg.dna_vocab_size, cfg.dna_sentence_length),
            ("protein", cfg.protein_inputs, cfg.protein_vocab_size, cfg.protein_sentence_length),
        )
        for kind, paths, vocab_size, length in jobs:
            if paths:
                stats[kind], timings[kind] = _train_one(
                    kind, paths, vocab_size, length, cfg, ctx.out_dir
                )
        write_text_atomic(
            ctx.out_dir / "stats.json",
            json.dumps({k: asdict(v) for k, v in stats.items()}, indent=2) + "\n",
        )
        # Wall-clock figures live apart, so every other output is byte-identical across runs.
        write_text_atomic(
            ctx.out_dir / "timings.json", json.dumps(timings, indent=2, sort_keys=True) + "\n"
        )
        for name, kind_stats in stats.items():
            ctx.report[f"{name}_pieces"] = kind_stats.pieces
            ctx.report[f"{name}_chars_per_token_heldout"] = round(
                kind_stats.chars_per_token_heldout, 3
            )
            ctx.report[f"{name}_train_seconds"] = timings[name]["train_seconds"]


STAGE = TrainBpe()


def _train_one(
    kind: SequenceKind,
    paths: list[Path],
    vocab_size: int,
    sentence_length: int,
    cfg: TrainBpeConfig,
    out_dir: Path,
) -> tuple[KindStats, dict[str, float]]:
    """Read, check and train one kind: ``(its stats, its timings in seconds)``."""
    from llamagene.vocab import chars_per_token, train_hf_bpe, train_sentencepiece_bpe

    seq_stats = SequenceStats(0, 0, 0, 0, 0, 0)
    unit = "bp" if kind == "dna" else "aa"
    start = time.perf_counter()
    sentences, heldout, chars_read, letters = sample_windows(
        kind,
        paths,
        cfg.policy(kind),
        sentence_length,
        cfg.min_sentence_length,
        seed=cfg.seed,
        max_train_chars=cfg.max_train_chars,
        heldout_fraction=cfg.heldout_fraction,
        min_heldout_windows=cfg.min_heldout_windows,
        max_heldout_chars=cfg.max_heldout_chars,
        seq_stats=seq_stats,
        unit=unit,
    )
    read_seconds = time.perf_counter() - start
    kept_chars = sum(map(len, sentences))
    heldout_chars = sum(map(len, heldout))
    if kind == "protein":
        check_protein_alphabet(paths, letters, cfg.strict_alphabet)
    check_vocab_size(kind, vocab_size, sentences)
    log.info(
        "train_bpe: %s: %d sentences, %.1f M%s -> %d pieces",
        kind, len(sentences), kept_chars / 1e6, unit, vocab_size,
    )  # fmt: skip
    start = time.perf_counter()
    with _elapsed(f"train_bpe: training {kind} BPE ({cfg.trainer})"):
        if cfg.trainer == "hf":
            model = train_hf_bpe(sentences, vocab_size, cfg.max_piece_length)
        else:
            model = train_sentencepiece_bpe(
                sentences,
                vocab_size=vocab_size,
                max_piece_length=cfg.max_piece_length,
                max_sentence_length=sentence_length + 16,
                num_threads=cfg.num_threads or usable_cpus(),
                seed=cfg.seed,
            )
    train_seconds = time.perf_counter() - start
    write_bytes_atomic(out_dir / f"{kind}.model", model)
    pieces = _write_vocab(model, out_dir / f"{kind}.vocab")
    write_text_atomic(out_dir / f"{kind}_heldout.txt", "".join(f"{t}\n" for t in heldout))
    ratio = chars_per_token(model, heldout or sentences[:100])
    log.info("train_bpe: %s: %d pieces, %.3f %s/token held out", kind, pieces, ratio, unit)
    if pieces < vocab_size:
        log.warning(
            "train_bpe: %s: asked for %d pieces, the trainer learned %d (it found no more pairs "
            "to merge)",
            kind, vocab_size, pieces,
        )  # fmt: skip
    timings = {"read_seconds": round(read_seconds, 2), "train_seconds": round(train_seconds, 2)}
    return KindStats(
        inputs=[str(p) for p in paths],
        records=seq_stats.records,
        chars_read=chars_read,
        windows=seq_stats.windows,
        dropped_short_windows=seq_stats.dropped_short,
        n_runs_skipped=seq_stats.n_runs_skipped,
        train_windows=len(sentences),
        train_chars=kept_chars,
        heldout_windows=len(heldout),
        heldout_chars=heldout_chars,
        vocab_size_requested=vocab_size,
        pieces=pieces,
        chars_per_token_heldout=ratio,
    ), timings


@contextlib.contextmanager
def _elapsed(desc: str) -> Iterator[None]:
    """Show elapsed time during a long call (SentencePiece releases the GIL, reports nothing)."""
    from tqdm import tqdm

    done = threading.Event()
    with tqdm(desc=desc, bar_format="{desc}: {elapsed} elapsed", disable=None) as bar:
        ticker = threading.Thread(target=lambda: _tick(bar, done), daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()


def _tick(bar: Any, done: threading.Event) -> None:
    while not done.wait(0.5):
        bar.refresh()


def _write_vocab(model: bytes, path: Path) -> int:
    from llamagene.vocab import parse_model

    proto = parse_model(model)
    write_text_atomic(path, "".join(f"{p.piece}\t{p.score:g}\n" for p in proto.pieces))
    return len(proto.pieces)
