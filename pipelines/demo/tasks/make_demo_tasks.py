"""Write the demo's instruction tasks from real genes that pyhmmer ships (MIT licence).

    python pipelines/demo/tasks/make_demo_tasks.py      # rewrites the CSVs beside this file

Source: ``pyhmmer/tests/data/seqs/CP040672.1.genes_100.fna``, the first 100 annotated coding
sequences (CDS) of GenBank CP040672.1, each with its product name. Three tasks, split by gene
(every row of a gene lands in the same split, so no gene is in two splits):

- ``coding_frame`` (multiclass): a 90 bp window from inside a CDS; the label is its reading
  frame, i.e. (window start - CDS start) mod 3. Codon usage makes this learnable.
- ``translate`` (generation, sequence answer): 60 bp in frame 0 -> the 20 residues they encode.
- ``protein_name`` (generation): the CDS's protein -> its product name.

A fourth task is made of peptides that modlAMP ships (``modlamp/data/AMPvsUniProt.csv``,
BSD-3-Clause licence, its notice kept in ``amp/LICENSE.modlAMP``; ``pip install modlamp`` to
rewrite it): antimicrobial peptides against peptides cut from random UniProt proteins, the
kind of composition signal a small model can learn.

- ``amp`` (binary): a peptide of at most 60 residues -> antimicrobial or not. Duplicate peptides
  are kept once (those listed with both labels are dropped); the split is by a hash of the
  peptide, and 1,400 / 200 / 400 rows are drawn (seeded) for train / dev / test.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from pathlib import Path

from llamagene.config import resolve_package_path

HERE = Path(__file__).resolve().parent
GENES = "pkg://pyhmmer/tests/data/seqs/CP040672.1.genes_100.fna"
CODONS = {
    a + b + c: aa
    for (a, b, c), aa in zip(
        ((x, y, z) for x in "TCAG" for y in "TCAG" for z in "TCAG"),
        "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
        strict=True,
    )
}


def read_genes() -> list[tuple[str, str, str]]:
    """(locus tag, product name, CDS) of the clean CDSs: ATG/GTG/TTG start, one final stop."""
    genes, header, seq = [], "", []
    text = resolve_package_path(GENES).read_text()
    for line in [*text.splitlines(), ">"]:
        if line.startswith(">"):
            cds = "".join(seq).upper()
            tag = re.search(r"\[locus_tag=([^\]]+)\]", header)
            name = re.search(r"\[protein=([^\]]+)\]", header)
            if tag and name and len(cds) % 3 == 0 and cds[:3] in ("ATG", "GTG", "TTG"):
                protein = translate(cds)
                if protein.count("*") == 1 and protein.endswith("*"):
                    genes.append((tag.group(1), name.group(1), cds))
            header, seq = line, []
        else:
            seq.append(line.strip())
    return genes


def translate(dna: str) -> str:
    return "".join(CODONS.get(dna[i : i + 3], "X") for i in range(0, len(dna) - 2, 3))


def split_of(tag: str) -> str:
    bucket = int(hashlib.sha256(tag.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def write(task: str, header: list[str], rows: dict[str, list[list[str]]]) -> None:
    for split, lines in rows.items():
        with (HERE / task / f"{split}.csv").open("w", newline="") as handle:
            out = csv.writer(handle, lineterminator="\n")
            out.writerow(header)
            out.writerows(lines)
        print(f"{task}/{split}.csv: {len(lines)} rows")


AMP_SOURCE = "modlamp/data/AMPvsUniProt.csv"
AMP_ROWS = {"train": 1400, "dev": 200, "test": 400}
AMP_MAX_RESIDUES = 60


def amp_rows() -> dict[str, list[list[str]]]:
    """The antimicrobial-peptide task's rows (see the module doc)."""
    import importlib.util

    spec = importlib.util.find_spec("modlamp")
    if spec is None or spec.origin is None:
        raise SystemExit("the amp task is read from modlamp's data: pip install modlamp")
    path = Path(spec.origin).parent / "data" / "AMPvsUniProt.csv"
    labels: dict[str, set[str]] = {}
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader)  # "5200,1,UniProt,AMP": rows, columns, class 0 name, class 1 name
        for peptide, label in reader:
            peptide = peptide.strip().upper()
            if 5 <= len(peptide) <= AMP_MAX_RESIDUES and re.fullmatch(
                r"[ACDEFGHIKLMNPQRSTVWY]+", peptide
            ):
                labels.setdefault(peptide, set()).add(label.strip())
    pool: dict[str, list[list[str]]] = {"train": [], "dev": [], "test": []}
    for peptide in sorted(labels):
        if len(labels[peptide]) == 1:
            bucket = int(hashlib.sha256(peptide.encode()).hexdigest(), 16) % 10
            split = "test" if bucket < 2 else "dev" if bucket == 2 else "train"
            pool[split].append([peptide, labels[peptide].pop()])
    rng = random.Random(11)
    return {split: rng.sample(rows, AMP_ROWS[split]) for split, rows in pool.items()}


def main() -> None:
    rng = random.Random(7)
    frames: dict[str, list[list[str]]] = {"train": [], "dev": [], "test": []}
    codes: dict[str, list[list[str]]] = {"train": [], "dev": [], "test": []}
    names: dict[str, list[list[str]]] = {"train": [], "dev": [], "test": []}
    for tag, name, cds in read_genes():
        split = split_of(tag)
        for _ in range(6):
            start = rng.randrange(3, len(cds) - 93)
            frames[split].append([cds[start : start + 90], str(start % 3)])
        for _ in range(2):
            start = 3 * rng.randrange(1, (len(cds) - 63) // 3)
            piece = cds[start : start + 60]
            codes[split].append([piece, translate(piece)])
        names[split].append([translate(cds).rstrip("*"), name])
    for task in ("coding_frame", "translate", "protein_name"):
        (HERE / task).mkdir(exist_ok=True)
    write("coding_frame", ["sequence", "label"], frames)
    write("translate", ["dna", "protein"], codes)
    write("protein_name", ["sequence", "name"], names)
    (HERE / "amp").mkdir(exist_ok=True)
    write("amp", ["peptide", "label"], amp_rows())


if __name__ == "__main__":
    main()
