"""Task loaders: GUE, LucaOne folders, UniProt function text, task YAMLs, English instructions,
and the registry that picks them; every bad input names its file and line."""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from llamagene.errors import ConfigError
from llamagene.tasks import Split, Task, TaskDataError, normalise_sequence
from llamagene.tasks.gue import GUE_DATASETS, gue_files, load_gue, select_gue
from llamagene.tasks.instructions import instruction_task_id, load_instructions
from llamagene.tasks.lucaone import load_lucaone, lucaone_files
from llamagene.tasks.registry import TaskSource, load_tasks, source_files
from llamagene.tasks.table import load_table
from llamagene.tasks.uniprot import clean_function, load_uniprot, split_of

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tasks"
GUE = FIXTURES / "GUE"
SOURCES = TypeAdapter(list[TaskSource])


def rows(task: Task, split: Split = "train") -> list[dict[str, Any]]:
    return [dict(e.fields) for e in task.examples(split)]


def data_error(match: str) -> Any:
    return pytest.raises(TaskDataError, match=match)


# --- sequences -----------------------------------------------------------------------------------


def test_normalise_sequence_rules() -> None:
    assert normalise_sequence(" acguryn\n", "dna", "f:1", "s") == "ACGTNNN"
    assert normalise_sequence("mkv*", "protein", "f:1", "s") == "MKV"
    assert normalise_sequence("MKUO", "protein", "f:1", "s") == "MKUO"
    with data_error(r"^f:2: field 's': invalid character 'E' at position 3 of a dna sequence"):
        normalise_sequence("ACEGT", "dna", "f:2", "s")
    with data_error("invalid character '-' at position 2"):
        normalise_sequence("M-K", "protein", "f:3", "s")
    with data_error("empty dna sequence"):
        normalise_sequence("  ", "dna", "f:4", "s")


# --- GUE -----------------------------------------------------------------------------------------


def test_gue_datasets_are_the_28_with_metrics_and_strands() -> None:
    assert len(GUE_DATASETS) == 28
    assert Counter(i.extra["group"] for i in GUE_DATASETS.values()) == {
        "EMP": 10, "prom": 6, "tf": 5, "mouse": 5, "splice": 1, "virus": 1
    }  # fmt: skip
    for name, info in GUE_DATASETS.items():
        assert info.id == f"gue/{name}"
        assert info.fields == ("sequence", "label") and info.sequence_fields == {"sequence": "dna"}
        assert info.metric == ("f1_macro" if name == "virus/covid" else "mcc")
        assert info.strand_symmetric == (info.extra["group"] in ("EMP", "tf", "mouse"))
    assert GUE_DATASETS["EMP/H3K4me3"].classes[1].meaning == "high H3K4me3 enrichment"
    assert [c.meaning for c in GUE_DATASETS["prom/prom_core_tata"].classes] == [
        "non-promoter", "promoter"
    ]  # fmt: skip


def test_gue_splice_labels_are_acceptor_donor_neither() -> None:
    info = GUE_DATASETS["splice/reconstructed"]
    assert info.task_type == "multiclass"
    assert [(c.label, c.meaning) for c in info.classes] == [
        ("0", "splice acceptor site"), ("1", "splice donor site"), ("2", "not a splice site")
    ]  # fmt: skip


def test_gue_covid_has_nine_unnamed_variant_classes() -> None:
    info = GUE_DATASETS["virus/covid"]
    assert info.task_type == "multiclass" and info.class_labels() == tuple("012345678")
    assert info.classes[4].meaning == "variant class 4 (GUE label 4)"
    (task,) = load_gue(GUE, ["virus/covid"])
    assert {r["label"] for s in task.splits() for r in rows(task, s)} == set("012345678")


def test_load_gue_reads_all_28_fixture_datasets() -> None:
    tasks = load_gue(GUE, "all")
    assert [t.info.id for t in tasks] == [f"gue/{n}" for n in GUE_DATASETS]
    for task in tasks:
        assert task.splits() == ("train", "dev", "test")
        for split in task.splits():
            assert len(rows(task, split)) == 3
    first = next(tasks[0].examples("train"))
    assert first.fields["sequence"].isupper()  # the fixture row is lower case
    assert first.where == f"{GUE}/EMP/H3/train.csv:2" and first.index == 0
    assert tasks[0].files()["gue/EMP/H3/dev"] == GUE / "EMP/H3/dev.csv"
    assert len(gue_files(GUE, ["EMP", "gue/tf/0"])) == 33


def test_select_gue_names_groups_and_typos() -> None:
    assert select_gue(["EMP", "EMP/H3"]) == [n for n in GUE_DATASETS if n.startswith("EMP/")]
    assert select_gue(["gue/splice/reconstructed", "virus"]) == [
        "splice/reconstructed", "virus/covid"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown GUE dataset 'EMP/H3K4me9'; did you mean"):
        select_gue(["EMP/H3K4me9"])
    with data_error("unknown GUE dataset 'prom/300'"):
        load_gue(GUE, ["prom/300"])


def _gue_copy(tmp_path: Path, name: str = "prom/prom_300_all") -> Path:
    shutil.copytree(GUE / name, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("column", ["label", "sequence"])
def test_gue_csv_missing_a_column(tmp_path: Path, column: str) -> None:
    folder = _gue_copy(tmp_path)
    other = "sequence" if column == "label" else "label"
    (folder / "test.csv").write_text(f"{other},extra\nACGT,1\n")
    with data_error(rf"test.csv:1: missing column\(s\) '{column}'; the header has: {other}, extra"):
        load_gue(tmp_path, ["prom/prom_300_all"])


def test_gue_label_outside_the_classes_names_file_line_and_labels(tmp_path: Path) -> None:
    folder = _gue_copy(tmp_path, "splice/reconstructed")
    (folder / "dev.csv").write_text("sequence,label\nACGT,0\nACGT,2\nACGT,3\n")
    (task,) = load_gue(tmp_path, ["splice/reconstructed"])  # the first row is fine
    with pytest.raises(TaskDataError) as info:
        rows(task, "dev")
    assert str(info.value) == (
        f"{folder}/dev.csv:4: field 'label': label '3' is not one of "
        "gue/splice/reconstructed's labels (0, 1, 2)"
    )


@pytest.mark.parametrize("text", ["", "sequence,label\n", "sequence,label\n\n\n"])
def test_gue_empty_split_file(tmp_path: Path, text: str) -> None:
    folder = _gue_copy(tmp_path)
    (folder / "train.csv").write_text(text)
    with data_error(f"^{folder}/train.csv: .*(empty|header)"):
        load_gue(tmp_path, ["prom/prom_300_all"])


def test_gue_bad_base_names_file_line_and_character(tmp_path: Path) -> None:
    folder = _gue_copy(tmp_path)
    (folder / "test.csv").write_text("sequence,label\nACGT,1\nACGXT,0\n")
    (task,) = load_gue(tmp_path, ["prom/prom_300_all"])
    with data_error(
        rf"^{folder}/test.csv:3: field 'sequence': invalid character 'X' at position 4"
    ):
        rows(task, "test")


def test_gue_missing_folders_and_files(tmp_path: Path) -> None:
    with data_error("GUE folder not found"):
        load_gue(tmp_path / "nowhere", ["EMP/H3"])
    folder = _gue_copy(tmp_path)
    with data_error(f"^{tmp_path}/EMP/H4: GUE dataset folder EMP/H4 not found"):
        load_gue(tmp_path, ["prom/prom_300_all", "EMP/H4"])
    (folder / "dev.csv").unlink()  # allowed: the task has no dev split
    (task,) = load_gue(tmp_path, ["prom/prom_300_all"])
    assert task.splits() == ("train", "test")
    with data_error("no dev split"):
        next(task.examples("dev"))
    (folder / "test.csv").unlink()
    with data_error(r"test.csv not found; a GUE dataset needs train.csv and test.csv \(dev.csv"):
        load_gue(tmp_path, ["prom/prom_300_all"])


# --- LucaOne -------------------------------------------------------------------------------------


def test_lucaone_single_rows_and_label_txt() -> None:
    task = load_lucaone(FIXTURES / "lucaone/localization", "localization", "multiclass")
    info = task.info
    assert info.id == "lucaone/localization" and info.metric == "mcc"
    assert info.fields == ("seq_id", "seq_type", "sequence", "label")
    assert info.sequence_fields == {"sequence": "protein"}
    assert [(c.label, c.meaning) for c in info.classes] == [
        ("0", "cytoplasm"), ("1", "membrane"), ("2", "secreted")
    ]  # fmt: skip
    first = rows(task)[0]
    assert first["seq_type"] == "protein" and first["label"] == "0" and first["seq_id"] == "train_0"
    assert task.splits() == ("train", "dev", "test")


def test_lucaone_pairs_in_split_subfolders() -> None:
    folder = FIXTURES / "lucaone/central_dogma"
    task = load_lucaone(folder, "central_dogma", "binary", metric="f1_macro")
    assert task.info.metric == "f1_macro"
    assert task.info.sequence_fields == {"sequence_a": "dna", "sequence_b": "protein"}
    assert set(rows(task)[0]) == {
        "seq_id_a", "seq_id_b", "sequence_a", "sequence_b", "seq_type_a", "seq_type_b", "label"
    }  # fmt: skip
    assert lucaone_files(folder, "cd") == {
        "lucaone/cd/train": folder / "train/train.csv", "lucaone/cd/dev": folder / "dev/dev.csv",
        "lucaone/cd/test": folder / "test/test.csv", "lucaone/cd/label.txt": folder / "label.txt",
    }  # fmt: skip


def _lucaone(tmp_path: Path, rows_text: str, labels: str | None = "0\n1\n2\n") -> Path:
    for split in ("train", "test"):
        (tmp_path / f"{split}.csv").write_text("seq_id,seq_type,seq,label\n" + rows_text)
    if labels is not None:
        (tmp_path / "label.txt").write_text(labels)
    return tmp_path


def test_lucaone_seq_type_is_honoured_per_row(tmp_path: Path) -> None:
    folder = _lucaone(tmp_path, "a,prot,MKLV,0\nb,GENE,acgu,1\nc,dna,ACGT,2\n")
    task = load_lucaone(folder, "mixed", "multiclass")
    assert [(r["seq_type"], r["sequence"]) for r in rows(task)] == [
        ("protein", "MKLV"), ("dna", "ACGT"), ("dna", "ACGT")
    ]  # fmt: skip
    _lucaone(tmp_path, "a,prot,MEKV,0\nb,gene,MEKV,1\n")  # M and K are IUPAC codes in DNA
    with data_error(r"train.csv:3: field 'seq': invalid character 'E' at position 2 of a dna"):
        rows(load_lucaone(folder, "mixed", "multiclass"))
    _lucaone(tmp_path, "a,rna?,ACGU,0\n")
    with data_error(r"train.csv:2: field 'seq_type': 'rna\?' is not a sequence type"):
        load_lucaone(folder, "mixed", "multiclass")


def test_lucaone_multilabel_and_regression_labels(tmp_path: Path) -> None:
    folder = _lucaone(tmp_path, 'a,prot,MK,"[0,2]"\nb,prot,MK,1;2\nc,prot,MK,[]\n')
    task = load_lucaone(folder, "ml", "multilabel")
    assert [r["label"] for r in rows(task)] == [("0", "2"), ("1", "2"), ()]
    assert task.info.metric == "f1_macro"
    _lucaone(tmp_path, "a,prot,MK,0;5\n")
    with data_error(r"train.csv:2: field 'label': label '5' is not one of lucaone/ml's"):
        load_lucaone(folder, "ml", "multilabel")
    _lucaone(tmp_path, "a,prot,MK,0.25\nb,prot,MK,-3e2\n", labels=None)
    task = load_lucaone(folder, "reg", "regression")
    assert [r["label"] for r in rows(task)] == [0.25, -300.0] and task.info.classes == ()
    _lucaone(tmp_path, "a,prot,MK,0.25\nb,prot,MK,high\n", labels=None)
    with data_error(r"train.csv:3: field 'label': 'high' is not a \(finite\) number"):
        rows(load_lucaone(folder, "reg", "regression"))


def test_lucaone_bad_folders(tmp_path: Path) -> None:
    folder = _lucaone(tmp_path, "a,prot,MK,0\n", labels=None)
    with data_error("label.txt: not found: a classification task names its classes"):
        load_lucaone(folder, "x", "binary")
    (folder / "label.txt").write_text("label\nno\nmaybe\nyes\n")
    with data_error("3 class names; a binary task has 2"):
        load_lucaone(folder, "x", "binary")
    with data_error("a LucaOne task is binary, multiclass, multilabel or regression"):
        load_lucaone(folder, "x", "token")
    (folder / "test.csv").unlink()
    with data_error("no test file"):
        load_lucaone(folder, "x", "multiclass")
    (folder / "test.csv").write_text("id,sequence,label\nx,ACGT,1\n")
    with data_error(r"test.csv:1: missing column\(s\) 'seq_id', 'seq_type', 'seq'; the header has"):
        load_lucaone(folder, "x", "multiclass")
    (folder / "train.csv").write_text("id,sequence,label\nx,ACGT,1\n")
    with data_error("train.csv: not a LucaOne task file: expected columns seq_id,seq_type,seq"):
        load_lucaone(folder, "x", "multiclass")


# --- UniProt -------------------------------------------------------------------------------------


def test_clean_function_drops_prefix_evidence_and_pubmed() -> None:
    text = "FUNCTION: Binds zinc (PubMed:1, PubMed:22). {ECO:0000269|PubMed:1}. FUNCTION: Dimer."
    assert clean_function(text) == "Binds zinc. Dimer."
    assert clean_function("FUNCTION: Acts (By similarity). {ECO:0000250}.") == (
        "Acts (By similarity)."
    )


def test_uniprot_flat_file_and_tsv_give_the_same_entries(tmp_path: Path) -> None:
    dat = load_uniprot(FIXTURES / "uniprot/sprot_tiny.dat", dev_fraction=0, test_fraction=0)
    assert dat.info.id == "uniprot/function" and dat.info.task_type == "generation"
    assert dat.info.answer_field == "function" and dat.splits() == ("train",)
    entries = rows(dat)
    assert dat.skipped_no_function == 1
    assert entries[0] == {
        "accession": "P0SYN1",
        "name": "Zinc-binding assembly protein 1",
        "organism": "Synthetica exemplaris (Synthetic bacterium)",
        "sequence": entries[0]["sequence"],
        "function": "Binds zinc and holds the synthetic assembly complex together. "
        "Required for growth at high temperature.",
    }
    assert entries[1]["name"] == "Synthetic kinase A"
    assert entries[1]["function"] == (
        "Phosphorylates the assembly protein on serine residues. "
        "[Isoform 2]: Lacks kinase activity (By similarity)."
    )
    tsv = load_uniprot(FIXTURES / "uniprot/uniprot_tiny.tsv", dev_fraction=0, test_fraction=0)
    assert rows(tsv) == entries and tsv.skipped_no_function == 1
    gz = tmp_path / "sprot.dat.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "uniprot/sprot_tiny.dat").read_bytes()))
    examples = list(load_uniprot(gz, 0, 0).examples("train"))
    assert [e.fields for e in examples] == entries
    assert [e.where for e in examples] == [f"{gz}:1", f"{gz}:20"]


def test_uniprot_split_is_deterministic_by_accession() -> None:
    assert split_of("P0SYN1", 0.3, 0.3) == split_of("P0SYN1", 0.3, 0.3)
    counts = Counter(split_of(f"Q{i:05d}", 0.1, 0.2) for i in range(4000))
    assert abs(counts["dev"] / 4000 - 0.1) < 0.02 and abs(counts["test"] / 4000 - 0.2) < 0.02
    task = load_uniprot(FIXTURES / "uniprot/sprot_tiny.dat", dev_fraction=0.3, test_fraction=0.3)
    by_split = {s: [r["accession"] for r in rows(task, s)] for s in task.splits()}
    assert sorted(a for accessions in by_split.values() for a in accessions) == ["P0SYN1", "P0SYN2"]
    for split, accessions in by_split.items():
        assert all(split_of(a, 0.3, 0.3) == split for a in accessions)


def test_uniprot_one_pass_keeps_dev_and_test(tmp_path: Path) -> None:
    path = tmp_path / "u.dat"
    shutil.copy(FIXTURES / "uniprot/sprot_tiny.dat", path)
    task = load_uniprot(path, dev_fraction=0.3, test_fraction=0.3)
    train = rows(task, "train")
    path.unlink()  # dev and test now come from memory
    assert len(train) + len(rows(task, "dev")) + len(rows(task, "test")) == 2


def test_uniprot_bad_inputs(tmp_path: Path) -> None:
    tsv = tmp_path / "u.tsv"
    tsv.write_text("Entry\tSequence\nP1\tMK\n")
    with data_error(r"u.tsv:1: missing column\(s\) 'Function \[CC\]'; the header has"):
        load_uniprot(tsv)
    tsv.write_text(
        "Entry\tSequence\tFunction [CC]\nP1\tMK\tFUNCTION: Binds.\nP2\tM1K\tFUNCTION: X.\n"
    )
    task = load_uniprot(tsv, 0, 0)
    assert task.info.fields == ("accession", "sequence", "function")  # no name, no organism
    with data_error(r"u.tsv:3: field 'sequence': invalid character '1' at position 2"):
        rows(task)
    tsv.write_text("Entry\tSequence\tFunction [CC]\nP1\tMK\t\n")
    with data_error("no entry has function text"):
        rows(load_uniprot(tsv, 0, 0))
    dat = tmp_path / "bad.dat"
    dat.write_text((FIXTURES / "uniprot/sprot_tiny.dat").read_text().replace("KW   ", "ZZ   ", 2))
    with data_error(r"bad.dat:\d+: not a valid Swiss-Prot entry: Unknown keyword 'ZZ'"):
        rows(load_uniprot(dat, 0, 0))
    with data_error("UniProt file not found"):
        load_uniprot(tmp_path / "none.dat")


# --- task YAMLs ----------------------------------------------------------------------------------


def test_table_fixtures_one_per_task_type() -> None:
    binary = load_table(FIXTURES / "table/promoter.yaml")
    assert binary.info.id == "table/promoter"
    assert binary.info.fields == ("id", "seq", "label", "species")
    assert [c.meaning for c in binary.info.classes] == ["not a promoter", "promoter"]
    assert rows(binary, "test")[1]["label"] == "1"  # read from test.csv.gz
    regression = load_table(FIXTURES / "table/stability.yaml")
    assert regression.info.id == "table/stability" and regression.info.metric == "spearman"
    assert all(isinstance(r["score"], float) for r in rows(regression))
    token = load_table(FIXTURES / "table/secondary_structure.yaml")
    assert all(len(r["states"]) == len(r["sequence"]) for r in rows(token))
    multilabel = load_table(FIXTURES / "table/go_terms.yaml")
    assert [r["terms"] for r in rows(multilabel)] == [("GO1", "GO3"), ("GO2", "GO3"), ("GO1",)]
    generation = load_table(FIXTURES / "table/describe.yaml")
    assert generation.info.answer_field == "text" and rows(generation)[0]["text"]


def _spec(tmp_path: Path, spec: dict[str, Any], data: str, name: str = "train.csv") -> Path:
    (tmp_path / name).write_text(data)
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps({"files": {"train": name}, **spec}))
    return path


def test_table_multiclass_and_data_errors(tmp_path: Path) -> None:
    spec = {"task_type": "multiclass", "sequences": {"s": "dna"}, "label": "y",
            "classes": {"a": "A", "b": "B", "c": "C"}}  # fmt: skip
    task = load_table(_spec(tmp_path, spec, "\ufeffs,y\r\nACGT,c\r\n\r\nAC,a\r\n"))  # BOM, CRLF
    assert [r["y"] for r in rows(task)] == ["c", "a"] and task.info.metric == "mcc"
    load_table(_spec(tmp_path, spec, "s,y\nACGT,c\nAC,d\n"))
    with data_error(
        r"train.csv:3: field 'y': label 'd' is not one of table/task's labels \(a, b, c\)"
    ):
        rows(load_table(tmp_path / "task.yaml"))
    with data_error(r"train.csv:1: missing column\(s\) 'y'; the header has: s, z"):
        load_table(_spec(tmp_path, spec, "s,z\nACGT,c\n"))
    token = {"task_type": "token", "sequences": {"s": "protein"}, "label": "t",
             "classes": {"H": "helix", "C": "coil"}}  # fmt: skip
    with data_error(r"train.csv:2: field 't': 3 characters for a sequence of 4"):
        load_table(_spec(tmp_path, token, "s,t\nMKLV,HHC\n"))
    with data_error(r"field 't': 'E' is not one of H, C"):
        load_table(_spec(tmp_path, token, "s,t\nMKLV,HHEC\n"))
    multi = {"task_type": "multilabel", "label": "y", "classes": {"x": "X", "z": "Z"},
             "multilabel_separator": "+"}  # fmt: skip
    assert rows(load_table(_spec(tmp_path, multi, "y\nx+z\nz\n")))[0]["y"] == ("x", "z")
    with data_error("label 'x;z' is not one of"):
        load_table(_spec(tmp_path, multi, "y\nx;z\n"))
    regression = {"task_type": "regression", "label": "y"}
    with data_error(r"train.jsonl:1: field 'y': 'n/a' is not a \(finite\) number"):
        load_table(_spec(tmp_path, regression, '{"y": "n/a"}\n', "train.jsonl"))


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"task_type": "binary", "label": "y", "classes": {"0": "a", "1": "b"}, "colour": 1},
         "colour: unknown key"),
        ({"task_type": "binary", "label": "y", "classes": {"0": "a", "1": "b", "2": "c"}},
         "a binary task needs 2 classes"),
        ({"task_type": "generation", "label": "y"}, "names its answer column as 'answer'"),
        ({"task_type": "token", "label": "y", "sequences": {"a": "dna", "b": "dna"}},
         "exactly one sequence column"),
        ({"task_type": "regression", "label": "y", "sequences": {"a": "rna"}},
         "sequences.a: Input should be 'dna' or 'protein'"),
        ({"task_type": "regression", "label": "y", "files": {"train": "x.parquet"}},
         "x.parquet: use .csv, .tsv or .jsonl"),
        ({"task_type": "regression", "label": "y", "files": {"train": "gone.csv"}},
         "files.train: file not found"),
        ({"task_type": "regression", "label": "y", "strand_symmetric": True},
         "strand_symmetric needs a DNA sequence column"),
    ],
)  # fmt: skip
def test_table_schema_errors_name_the_yaml(
    tmp_path: Path, spec: dict[str, Any], problem: str
) -> None:
    path = _spec(tmp_path, spec, "y\n1\n")
    with pytest.raises(ConfigError) as info:
        load_table(path)
    assert info.value.source == str(path) and problem in str(info.value)


# --- English instructions ------------------------------------------------------------------------


def test_instructions_alpaca_and_chat() -> None:
    alpaca = list(load_instructions(FIXTURES / "instructions/alpaca.jsonl", "alpaca"))
    assert [e.fields["prompt"] for e in alpaca] == [
        "Name the four DNA bases.", "Give the reverse complement.\n\nACCGT", "Say what a codon is."
    ]  # fmt: skip
    assert alpaca[1].fields["answer"] == "ACGGT" and alpaca[1].task == "english/alpaca"
    assert alpaca[1].split == "train" and alpaca[1].where.endswith("alpaca.jsonl:2")
    chat = list(load_instructions(FIXTURES / "instructions/chat.jsonl", "chat"))
    assert chat[0].fields == {
        "prompt": "What is a gene?",
        "answer": "A stretch of DNA that is transcribed.",
        "messages": [
            {"role": "user", "content": "What is a gene?"},
            {"role": "assistant", "content": "A stretch of DNA that is transcribed."},
        ],
    }
    assert chat[1].fields["messages"] == [  # every turn is kept, for training every answer
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Is ATG a start codon?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "And TAA?"},
        {"role": "assistant", "content": "No, TAA is a stop codon."},
    ]
    assert chat[1].fields["prompt"] == "And TAA?"
    assert chat[1].fields["answer"] == "No, TAA is a stop codon."
    assert instruction_task_id(Path("x/dolly_15k.jsonl.gz")) == "english/dolly_15k"


@pytest.mark.parametrize(
    ("fmt", "line", "problem"),
    [
        ("alpaca", {"instruction": "Hi"},
         r"'output' must be a string \(missing\); keys here: instruction"),
        ("alpaca", {"instruction": " ", "output": "x"}, "'instruction' is empty"),
        ("chat", {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
         "its role must be 'assistant', not 'user'"),
        ("chat", {"messages": [{"role": "bot", "content": "a"},
                               {"role": "assistant", "content": "b"}]},
         r"messages\[0\]: role 'bot' is not one of system, user, assistant"),
        ("chat", {"messages": "hello"}, "'messages' must be a list"),
        ("chat", {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                               {"role": "assistant", "content": "c"}]},
         "turns must alternate user, assistant"),
    ],
)  # fmt: skip
def test_instruction_errors_name_file_and_line(
    tmp_path: Path, fmt: Any, line: dict[str, Any], problem: str
) -> None:
    path = tmp_path / "data.jsonl"
    good = {"instruction": "a", "output": "b"} if fmt == "alpaca" else {
        "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    }  # fmt: skip
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(line) + "\n")
    with data_error(rf"data.jsonl:3.*{problem}"):
        list(load_instructions(path, fmt))
    path.write_text("{not json\n")
    with data_error("data.jsonl:1: not valid JSON"):
        list(load_instructions(path, fmt))


# --- registry ------------------------------------------------------------------------------------


def test_registry_loads_every_source_kind() -> None:
    sources = SOURCES.validate_python(
        [
            {"source": "gue", "root": "GUE", "datasets": ["EMP/H3", "virus"]},
            {"source": "lucaone", "dir": "lucaone/localization", "name": "loc",
             "task_type": "multiclass"},
            {"source": "uniprot", "path": "uniprot/sprot_tiny.dat", "test_fraction": 0.5},
            {"source": "table", "spec": "table/promoter.yaml"},
        ],
        context={"base_dir": FIXTURES},
    )  # fmt: skip
    tasks = load_tasks(sources)
    assert [t.info.id for t in tasks] == [
        "gue/EMP/H3", "gue/virus/covid", "lucaone/loc", "uniprot/function", "table/promoter"
    ]  # fmt: skip
    files = {k: p for s in sources for k, p in source_files(s).items()}
    assert files["uniprot/function"] == FIXTURES / "uniprot/sprot_tiny.dat"
    assert files["table/promoter/spec"] == FIXTURES / "table/promoter.yaml"
    assert files["table/promoter/test"] == FIXTURES / "table/promoter/test.csv.gz"
    assert files["lucaone/loc/label.txt"] == FIXTURES / "lucaone/localization/label.txt"
    assert len(files) == 6 + 4 + 1 + 4 and all(p.is_file() for p in files.values())
    with pytest.raises(ConfigError, match="task gue/EMP/H3 is listed more than once"):
        load_tasks([sources[0], sources[0]])


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"source": "gues", "root": "x"},
         "does not match any of the expected tags: 'gue', 'lucaone'"),
        ({"root": "x"}, "Unable to extract tag using discriminator 'source'"),
        ({"source": "gue", "root": "x", "path": "y"}, "gue.path"),
        ({"source": "gue", "root": "x", "datasets": ["EMP/H5"]}, "unknown GUE dataset 'EMP/H5'"),
        ({"source": "gue", "root": "x", "datasets": []}, "name at least one dataset"),
        ({"source": "lucaone", "dir": "x", "name": "n", "task_type": "ranking"},
         "lucaone.task_type"),
        ({"source": "uniprot", "path": "x", "dev_fraction": 0.5, "test_fraction": 0.5},
         "dev_fraction + test_fraction must be below 1"),
        ({"source": "table"}, "table.spec"),
    ],
)  # fmt: skip
def test_registry_discriminator_errors(entry: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        SOURCES.validate_python([entry])
    assert problem in str(info.value)
