"""Tests for llamagene.sequences: streaming FASTA/FASTQ reading, normalisation and windows."""

from __future__ import annotations

import bz2
import gzip
import pickle
import random
import re
from pathlib import Path

import pytest

from llamagene.sequences import (
    Fragment,
    SequenceFormatError,
    SequencePolicy,
    SequenceStats,
    iter_fragments,
    iter_windows,
    open_text,
    reverse_complement,
    scan_stats,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sequences"
DNA = SequencePolicy("dna")
PROTEIN = SequencePolicy("protein")


def write(tmp_path: Path, text: str, name: str = "x.fa") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def frags(path: Path, policy: SequencePolicy = DNA) -> list[tuple[str, int, str, bool, bool]]:
    return [
        (f.record_id, f.line, f.text, f.record_start, f.gap_before)
        for f in iter_fragments(path, policy)
    ]


def texts(path: Path, policy: SequencePolicy = DNA) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in iter_fragments(path, policy):
        out[f.record_id] = out.get(f.record_id, "") + f.text
    return out


def error(path: Path, policy: SequencePolicy = DNA) -> SequenceFormatError:
    with pytest.raises(SequenceFormatError) as info:
        list(iter_fragments(path, policy))
    return info.value


# --- reading and normalising -------------------------------------------------------------------


def test_fixture_fasta_lowercase_gap_short_n_run_rna_iupac() -> None:
    assert frags(FIXTURES / "small.fa") == [
        ("chr1", 2, "ACGTACGTNNN", True, False),  # 3 N < 10: kept
        ("chr1", 3, "ACGT", False, False),
        ("chr1", 4, "GGCC", False, True),  # 8 + 4 N across two lines: one skipped gap
        ("chr2", 7, "ACGTNNN", True, False),  # U -> T, IUPAC r y k -> N
    ]


def test_multiline_fasta_and_header_first_word(tmp_path: Path) -> None:
    p = write(tmp_path, ">seq1 some description\nACGT\nTTGA\n  \n>seq2\tx\nGG CC\t\n")
    assert texts(p) == {"seq1": "ACGTTTGA", "seq2": "GGCC"}
    assert [f.record_start for f in iter_fragments(p, DNA)] == [True, False, True]


def test_fastq(tmp_path: Path) -> None:
    p = write(tmp_path, "@r1 extra\nACGTN\n+\nIIIII\n@r2\nggtt\n+r2\n@@@@\n", "x.fq")
    assert frags(p) == [("r1", 2, "ACGTN", True, False), ("r2", 6, "GGTT", True, False)]


def test_gzip_is_detected_by_magic_not_extension(tmp_path: Path) -> None:
    p = tmp_path / "plain_name.fa"
    p.write_bytes(gzip.compress(b">a\nACGT\nAC\n"))
    assert texts(p) == {"a": "ACGTAC"}
    with open_text(p) as fh:
        assert fh.read() == ">a\nACGT\nAC\n"
    q = tmp_path / "not_gzip.fa.gz"
    q.write_bytes(b">b\nGG\n")
    assert texts(q) == {"b": "GG"}


def test_crlf_line_endings(tmp_path: Path) -> None:
    p = write(tmp_path, ">a desc\r\nACGT\r\nacgt\r\n>b\r\nTT\r\n")
    assert frags(p) == [
        ("a", 2, "ACGT", True, False),
        ("a", 3, "ACGT", False, False),
        ("b", 5, "TT", True, False),
    ]
    with open_text(p) as fh:
        assert fh.readlines() == [">a desc\n", "ACGT\n", "acgt\n", ">b\n", "TT\n"]


def test_iupac_to_n_and_error(tmp_path: Path) -> None:
    p = write(tmp_path, ">a\nACRYKMSWBDHVacrykmswbdhvu\n")
    assert texts(p, SequencePolicy("dna", n_run_min_length=0)) == {"a": "ACNNNNNNNNNN" * 2 + "T"}
    err = error(p, SequencePolicy("dna", iupac="error"))
    assert (err.line, err.record) == (2, "a")
    assert "'R'" in err.reason and "column 3" in err.reason and "iupac: to_n" in err.reason


def test_n_run_splitting_and_disabling(tmp_path: Path) -> None:
    p = write(tmp_path, ">a\nACGT" + "N" * 9 + "GG" + "N" * 10 + "TT" + "n" * 30 + "\n")
    assert frags(p) == [  # 9 N kept, 10 N and a final run of 30 n skipped
        ("a", 2, "ACGT" + "N" * 9 + "GG", True, False),
        ("a", 2, "TT", False, True),
    ]
    q = write(tmp_path, ">a\nAC" + "N" * 10 + "GG\n", "q.fa")
    assert frags(q) == [("a", 2, "AC", True, False), ("a", 2, "GG", False, True)]
    assert frags(q, SequencePolicy("dna", n_run_min_length=0)) == [
        ("a", 2, "AC" + "N" * 10 + "GG", True, False)
    ]
    assert frags(q, SequencePolicy("dna", n_run_min_length=11)) == [
        ("a", 2, "AC" + "N" * 10 + "GG", True, False)
    ]
    # A record that starts with a gap: its first fragment is both record_start and gap_before.
    r = write(tmp_path, ">a\n" + "N" * 6 + "\n" + "N" * 6 + "\nAC\n>b\n" + "N" * 20 + "\n", "r.fa")
    stats = SequenceStats()
    assert list(iter_fragments(r, DNA, stats)) == [Fragment("a", 4, "AC", True, True)]
    assert (stats.records, stats.n_runs_skipped, stats.n_bases_skipped) == (2, 2, 32)


@pytest.mark.parametrize("width", [1, 7, 37, 80])
@pytest.mark.parametrize("k", [0, 1, 3, 10])
def test_segments_match_a_whole_string_reference(tmp_path: Path, width: int, k: int) -> None:
    rnd = random.Random(width * 100 + k)
    parts = [
        "N" * rnd.randint(1, 25) if rnd.random() < 0.2 else rnd.choice("ACGT") for _ in range(400)
    ]
    seq = "".join(parts)
    lines = [seq[i : i + width] for i in range(0, len(seq), width)]
    p = write(tmp_path, ">a\n" + "\n".join(lines) + "\n>b\nACGT\n")
    policy = SequencePolicy("dna", n_run_min_length=k)
    fs = [f for f in iter_fragments(p, policy) if f.record_id == "a"]
    assert all(f.text and (k == 0 or "N" * k not in f.text) for f in fs)
    segments = [s for s in (re.split(f"N{{{k},}}", seq) if k else [seq]) if s]
    got = "".join("|" + f.text if f.gap_before else f.text for f in fs).split("|")
    assert [g for g in got if g] == segments
    wins = [
        w.text for w in iter_windows([p], policy, window_len=16, min_len=5) if w.record_id == "a"
    ]
    expected = [s[i : i + 16] for s in segments for i in range(0, len(s), 16)]
    assert wins == [w for w in expected if len(w) >= 5]


def test_protein_alphabet_and_policies(tmp_path: Path) -> None:
    assert frags(FIXTURES / "small.faa", PROTEIN) == [
        ("sp|P1|ONE", 2, "MKTAYIAKQR", True, False),
        ("sp|P1|ONE", 3, "QISFVKSHFS", False, False),  # trailing '*' removed
        ("sp|P2|TWO", 5, "MKBZJUOX", True, False),
    ]
    to_x = SequencePolicy("protein", protein_ambiguous="to_x")
    assert texts(FIXTURES / "small.faa", to_x)["sp|P2|TWO"] == "MKXXXXXX"
    err = error(FIXTURES / "small.faa", SequencePolicy("protein", protein_ambiguous="error"))
    assert (err.line, err.record) == (5, "sp|P2|TWO")
    assert "'b'" in err.reason and "column 3" in err.reason
    p = write(tmp_path, ">p\nACDEFGHIKLMNPQRSTVWYX\n", "p.faa")
    assert texts(p, PROTEIN) == {"p": "ACDEFGHIKLMNPQRSTVWYX"}


def test_protein_stop_and_gaps(tmp_path: Path) -> None:
    inner = write(tmp_path, ">p\nMK*LL\n", "a.faa")
    err = error(inner, PROTEIN)
    assert (err.line, err.record) == (2, "p") and "'*'" in err.reason and "column 3" in err.reason
    # a '*' at the end of a line that is not the end of the record
    mid = write(tmp_path, ">p\nMK*\nLL\n", "b.faa")
    err = error(mid, PROTEIN)
    assert err.line == 2 and "column 3" in err.reason
    for gap in "-.":
        err = error(write(tmp_path, f">p\nMK{gap}LL\n", "c.faa"), PROTEIN)
        assert repr(gap) in err.reason and "gap" in err.reason


# --- windows -----------------------------------------------------------------------------------


def test_windows_never_cross_records_or_gaps(tmp_path: Path) -> None:
    p = write(tmp_path, ">a\nACGTA\nCGTAC\n" + "N" * 12 + "AAA\n>b\nCCCCCCC\n")
    stats = SequenceStats()
    wins = list(iter_windows([p], DNA, window_len=4, stats=stats))
    assert [(w.text, w.record_id, w.line) for w in wins] == [
        ("ACGT", "a", 2),
        ("ACGT", "a", 2),
        ("AC", "a", 3),  # cut by the N gap
        ("AAA", "a", 4),
        ("CCCC", "b", 6),
        ("CCC", "b", 6),
    ]
    assert all(w.path == str(p) for w in wins)
    assert stats == SequenceStats(
        records=2, residues=20, windows=6, dropped_short=0, n_runs_skipped=1, n_bases_skipped=12
    )


def test_windows_min_len_drops_short_tails(tmp_path: Path) -> None:
    p = write(tmp_path, ">a\nACGTACGTAC\n>b\nAC\n")
    stats = SequenceStats()
    wins = [w.text for w in iter_windows([p, p], DNA, window_len=4, min_len=3, stats=stats)]
    assert wins == ["ACGT", "ACGT", "ACGT", "ACGT"]
    assert (stats.windows, stats.dropped_short, stats.records) == (4, 4, 4)
    assert scan_stats([p], DNA, 4, 3) == SequenceStats(2, 12, 2, 2, 0, 0)


def test_protein_windows_cut_long_proteins(tmp_path: Path) -> None:
    p = write(tmp_path, ">long\n" + "MKV" * 10 + "*\n>short\nMK\n", "p.faa")
    wins = [(w.record_id, w.text) for w in iter_windows([p], PROTEIN, window_len=12)]
    assert wins == [("long", "MKVMKVMKVMKV")] * 2 + [("long", "MKVMKV"), ("short", "MK")]
    with pytest.raises(ValueError):
        list(iter_windows([p], PROTEIN, window_len=0))


def test_streaming_large_record_round_trips(tmp_path: Path) -> None:
    rnd = random.Random(3)
    seq = "".join(rnd.choices("ACGT", k=2_000_000))
    p = tmp_path / "big.fa.gz"
    body = "\n".join(seq[i : i + 80] for i in range(0, len(seq), 80))
    with gzip.open(p, "wt") as fh:
        fh.write(">big\n" + body + "\n")
    wins = list(iter_windows([p], DNA, window_len=1000))
    assert len(wins) == 2000 and all(len(w.text) == 1000 for w in wins)
    assert "".join(w.text for w in wins) == seq
    assert wins[1].line == 2 + 1000 // 80  # window 2 starts in the 13th sequence line


# --- reverse complement ------------------------------------------------------------------------


def test_reverse_complement() -> None:
    assert reverse_complement("AACGTN") == "NACGTT"
    assert reverse_complement("RYKMSWBDHV") == "BDHVWSKMRY"
    seq = "".join(random.Random(5).choices("ACGTNRYKMSWBDHV", k=500))
    assert reverse_complement(reverse_complement(seq)) == seq
    with pytest.raises(ValueError):
        reverse_complement("ACGX")


# --- bad input ---------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    for text in ("", "\n  \n\n"):
        err = error(write(tmp_path, text))
        assert (err.line, err.record) == (None, None)
        assert str(err) == f"{tmp_path / 'x.fa'}: no sequences: the file is empty"


def test_record_without_sequence(tmp_path: Path) -> None:
    err = error(write(tmp_path, ">a\nACGT\n>empty desc\n>c\nGG\n"))
    assert (err.line, err.record) == (3, "empty")
    err = error(write(tmp_path, ">a\nACGT\n>last\n\n"))
    assert err.record == "last" and "no sequence" in str(err)


def test_not_fasta(tmp_path: Path) -> None:
    err = error(write(tmp_path, "id,sequence\nx,ACGT\n", "table.csv"))
    assert err.line == 1 and "not FASTA/FASTQ" in err.reason and "'i'" in err.reason
    assert str(err).startswith(f"{tmp_path / 'table.csv'}:1: not FASTA")


def test_sequence_before_header(tmp_path: Path) -> None:
    err = error(write(tmp_path, "\nACGT\n>a\nGG\n"))
    assert err.line == 2 and "before the first header" in err.reason


def test_invalid_character_message(tmp_path: Path) -> None:
    p = write(tmp_path, ">a\nACGT\n>chr7 x\nACGT\nAC GEGT\n")
    err = error(p)
    assert (err.path, err.line, err.record) == (str(p), 5, "chr7")
    assert str(err).startswith(f"{p}:5: record 'chr7': invalid character 'E' at column 5")
    assert "list it under protein_inputs" in str(err) and "set kind: protein" in str(err)
    assert "\n" not in str(err)
    err = error(write(tmp_path, ">a\nACéT\n"))
    assert "'é'" in err.reason and "column 3" in err.reason


def test_truncated_gzip(tmp_path: Path) -> None:
    rnd = random.Random(9)
    body = "".join(f">r{i}\n{''.join(rnd.choices('ACGT', k=200))}\n" for i in range(200))
    p = tmp_path / "cut.fa.gz"
    p.write_bytes(gzip.compress(body.encode())[:-20])
    err = error(p)
    assert err.path == str(p) and "truncated or corrupt gzip" in str(err) and str(p) in str(err)
    with pytest.raises(SequenceFormatError, match="truncated or corrupt gzip"), open_text(p) as fh:
        fh.read()


def test_fastq_errors(tmp_path: Path) -> None:
    err = error(write(tmp_path, "@r1\nACGT\n+\nIII\n", "x.fq"))
    assert (err.line, err.record) == (4, "r1") and "quality length 3 != sequence length 4" in str(
        err
    )
    err = error(write(tmp_path, "@r1\nACGT\nIIII\n@r2\n", "x.fq"))
    assert err.line == 3 and "'+'" in err.reason
    err = error(write(tmp_path, "@r1\nACGT\n+\n", "x.fq"))
    assert "truncated FASTQ" in err.reason


def test_error_pickles_and_policy_validates() -> None:
    err = SequenceFormatError("f.fa", 3, "r", "bad")
    assert str(pickle.loads(pickle.dumps(err))) == str(err) == "f.fa:3: record 'r': bad"
    assert isinstance(err, ValueError)
    with pytest.raises(ValueError):
        SequencePolicy("rna")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SequencePolicy("dna", n_run_min_length=-1)


def test_encoding_and_line_ending_problems(tmp_path: Path) -> None:
    err = error(_raw(tmp_path, b">a\nAC\xffGT\n"))
    assert err.line == 2 and "invalid UTF-8 byte 0xff at column 3" in err.reason
    err = error(_raw(tmp_path, b">a\xff\nACGT\n"))
    assert err.line == 1 and "UTF-8" in err.reason
    with pytest.raises(SequenceFormatError, match="UTF-8"), open_text(tmp_path / "x.fa") as fh:
        fh.read()
    err = error(_raw(tmp_path, b">a\rACGT\r>b\rGG\r"))
    assert "bare CR" in err.reason
    err = error(_raw(tmp_path, bz2.compress(b">a\nACGT\n")))
    assert err.line == 1 and "bzip2" in err.reason
    # a UTF-8 byte order mark is ignored; a single path may be given instead of a list
    p = _raw(tmp_path, b"\xef\xbb\xbf>a\nACGT\n")
    assert [w.text for w in iter_windows(p, DNA, 3)] == ["ACG", "T"]


def _raw(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "x.fa"
    path.write_bytes(data)
    return path
