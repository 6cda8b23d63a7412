"""Write the demo's instruction tasks from real genes that pyhmmer ships (MIT licence).

    python pipelines/demo/tasks/make_demo_tasks.py      # rewrites the CSVs beside this file

Source: ``pyhmmer/tests/data/seqs/CP040672.1.genes_100.fna``, the first 100 annotated coding
sequences (CDS) of GenBank CP040672.1, each with its product name. Three tasks, split by gene
(every row of a gene lands in the same split, so no gene is in two splits):

- ``coding_frame`` (multiclass): a 90 bp window from inside a CDS; the label is its reading
  frame, i.e. (window start - CDS start) mod 3. Codon usage makes this learnable.
- ``translate`` (generation, sequence answer): 60 bp in frame 0 -> the 20 residues they encode.
- ``protein_name`` (generation): the CDS's protein -> its product name.
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


if __name__ == "__main__":
    main()
