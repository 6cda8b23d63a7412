"""The merged tokenizer on real data: the demo pipeline (real genome, proteins and the real
32,000-piece Mistral v1 base), checked on held-out windows and real English text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from llamagene.alphabets import encode_markup, to_model_text
from llamagene.cli import DEMO_PIPELINE
from llamagene.config import resolve_package_path
from llamagene.pipeline import load_pipeline

LICENSES = Path("/usr/share/common-licenses")


def _english_files() -> list[Path]:
    files = sorted(p for p in LICENSES.glob("*") if p.is_file()) if LICENSES.is_dir() else []
    return files or [Path(json.__file__).parent.parent / "LICENSE.txt"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("demo")
    english = "[" + ", ".join(str(p) for p in _english_files()) + "]"
    pipeline = load_pipeline(
        DEMO_PIPELINE, [f"run_dir={run_dir}", f"merge_vocab.english_eval_files={english}"]
    )
    pipeline.run(only=["train_bpe", "merge_vocab"])
    return run_dir


def test_report_meets_the_goals(demo_run: Path) -> None:
    report = json.loads((demo_run / "merge_vocab" / "report.json").read_text())
    checks = report["checks"]
    assert checks["english_ids"]["total"] > 1000
    assert checks["dna_split"]["total"] >= 20 and checks["protein_split"]["total"] >= 50
    for name in ("dna_split", "protein_split", "english_ids"):
        assert checks[name]["rate"] >= 0.99, name
    for name in ("dna_roundtrip", "protein_roundtrip", "english_roundtrip", "mixed_roundtrip",
                 "fast_equals_slow"):  # fmt: skip
        assert checks[name]["rate"] == 1.0, name
    assert report["vocab_size"] == 32000 + 3999 + 3999
    assert (demo_run / "merge_vocab" / "report.md").read_text().startswith("# merge_vocab report")


def test_independent_check_on_fresh_windows(demo_run: Path) -> None:
    """Windows at random offsets (not the stage's own held-out set) split as DNA-only does."""
    tok = AutoTokenizer.from_pretrained(str(demo_run / "merge_vocab" / "tokenizer"))
    assert type(tok).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")
    dna_only = spm.SentencePieceProcessor(model_file=str(demo_run / "train_bpe" / "dna.model"))
    genome = resolve_package_path(
        "pkg://pyhmmer/tests/data/seqs/1390.SAMEA104415756.OFHT01000022.fna"
    )
    seq = "".join(line.strip() for line in genome.read_text().splitlines()[1:]).upper()
    rng = random.Random(3)
    same = 0
    for _ in range(200):
        start = rng.randrange(len(seq) - 300)
        window = seq[start : start + 300]
        want = [to_model_text(p, "dna") for p in dna_only.encode(window, out_type=str)]
        got = tok.convert_ids_to_tokens(
            tok.encode(to_model_text(window, "dna"), add_special_tokens=False)
        )
        same += got == ["▁", *want]
    assert same >= 198


def test_mixed_prompt_round_trip_and_bos(demo_run: Path) -> None:
    tok = AutoTokenizer.from_pretrained(str(demo_run / "merge_vocab" / "tokenizer"))
    text = "Is <dna>ACGTTGCAN</dna> a promoter of <protein>MKVLAAGIW</protein>?  Yes."
    ids = tok(encode_markup(text))["input_ids"]
    assert ids[0] == tok.bos_token_id == 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    english = "The quick brown fox, ACGT and GATTACA are ordinary words here."
    base = spm.SentencePieceProcessor(model_file=str(resolve_package_path(
        "pkg://mistral_common/data/tokenizer.model.v1")))  # fmt: skip
    assert tok.encode(english, add_special_tokens=False) == base.encode(english)
