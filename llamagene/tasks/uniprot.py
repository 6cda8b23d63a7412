"""UniProt function text as a generation task, ``uniprot/function``: protein -> what it does.

Reads a Swiss-Prot / UniProtKB flat file (``uniprot_sprot.dat``, plain or gzip; parsed by
:mod:`Bio.SwissProt`) or a UniProt TSV download (plain or gzip) with the columns ``Entry``,
``Sequence`` and ``Function [CC]``, and optionally ``Protein names`` and ``Organism``. The format
is told from the first line (``ID   `` starts a flat file).

Fields: ``accession, name, organism, sequence, function`` (a TSV without ``Protein names`` or
``Organism`` has no ``name`` or ``organism`` field). ``name`` is the recommended name
(``RecName: Full=``, or the first of the TSV's protein names); ``function`` is the text of the
FUNCTION comments, cleaned: the ``FUNCTION:`` prefix, ``{ECO:...}`` evidence tags and
``(PubMed:...)`` references are removed. Entries without function text are skipped and counted
in :attr:`UniProtTask.skipped_no_function`.

UniProt has no splits, so an entry's split is fixed by a hash of its primary accession
(:func:`split_of`): the same accession lands in the same split in every release and file.
Reading a split streams the whole file (the TSV is several times faster to read than the flat
file); dev and test are kept in memory after the first complete pass.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from Bio import SwissProt

from llamagene.sequences import open_text
from llamagene.tasks import SPLITS, Example, Split, TaskDataError, TaskInfo, normalise_sequence
from llamagene.tasks.table import iter_table

TASK_ID = "uniprot/function"
FIELDS = ("accession", "name", "organism", "sequence", "function")
_TSV_REQUIRED = ("Entry", "Sequence", "Function [CC]")
_TSV_OPTIONAL = {"name": "Protein names", "organism": "Organism"}
_PREFIX = re.compile(r"(?:^|\s)FUNCTION:\s*")
_ECO = re.compile(r"\s*\{ECO:[^}]*\}")
_PUBMED = re.compile(r"\s*\(PubMed:[^)]*\)")
_REC_NAME = re.compile(r"(?:RecName|SubName): Full=([^;{]+)")
_Entry = tuple[str, dict[str, str]]  # where, fields


def clean_function(text: str) -> str:
    """Function comment text without ``FUNCTION:``, ``{ECO:...}`` tags or ``(PubMed:...)`` refs.

    ``"FUNCTION: Binds zinc (PubMed:123). {ECO:0000269|PubMed:123}."`` -> ``"Binds zinc."``
    """
    text = _PUBMED.sub("", _ECO.sub("", _PREFIX.sub(" ", text)))
    text = re.sub(r"\.(?:\s*\.)+", ".", " ".join(text.split()))
    return re.sub(r"\s+([.,;:])", r"\1", text).strip()


def split_of(accession: str, dev_fraction: float, test_fraction: float) -> Split:
    """``test`` for the first ``test_fraction`` of hash space, then ``dev``, then ``train``.

    The hash is the first 8 bytes of SHA-256 of the accession, read as a fraction in [0, 1).
    """
    digest = hashlib.sha256(accession.encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    return "dev" if u < test_fraction + dev_fraction else "train"


class UniProtTask:
    """The ``uniprot/function`` task over one file; each split is one pass over the file."""

    def __init__(self, path: Path, dev_fraction: float = 0.05, test_fraction: float = 0.05) -> None:
        if min(dev_fraction, test_fraction) < 0 or dev_fraction + test_fraction >= 1:
            raise ValueError("dev_fraction and test_fraction must be >= 0 and sum to less than 1")
        if not path.is_file():
            raise TaskDataError(str(path), "UniProt file not found")
        self.path, self.dev_fraction, self.test_fraction = path, dev_fraction, test_fraction
        self._flat = _first_line(path).startswith("ID   ")
        fields = FIELDS if self._flat else _tsv_fields(path)
        self.info = TaskInfo(
            id=TASK_ID,
            task_type="generation",
            description="describe the function of a protein from its sequence (UniProt)",
            fields=fields,
            sequence_fields={"sequence": "protein"},
            metric="rouge_l",
            answer_field="function",
            extra={"dev_fraction": dev_fraction, "test_fraction": test_fraction},
        )
        self.skipped_no_function = 0
        """Entries without function text, counted during the last pass over the file."""
        self._held: dict[Split, list[Example]] = {}

    def splits(self) -> tuple[Split, ...]:
        fractions = {"train": 1.0, "dev": self.dev_fraction, "test": self.test_fraction}
        return tuple(s for s in SPLITS if fractions[s] > 0)

    def examples(self, split: Split) -> Iterator[Example]:
        """The entries of ``split``. A complete pass also keeps the (small) dev and test splits
        in memory, so reading train, dev and test parses the file once, not three times."""
        if split in self._held:
            yield from self._held[split]
            return
        held: dict[Split, list[Example]] = {s: [] for s in self.splits() if s != "train"}
        counts = dict.fromkeys(SPLITS, 0)
        for where, fields in self._entries():
            entry_split = split_of(fields["accession"], self.dev_fraction, self.test_fraction)
            example = Example(TASK_ID, entry_split, counts[entry_split], fields, where)
            counts[entry_split] += 1
            if entry_split in held:
                held[entry_split].append(example)
            if entry_split == split:
                yield example
        self._held.update(held)

    def files(self) -> dict[str, Path]:
        return {TASK_ID: self.path}

    def _entries(self) -> Iterator[_Entry]:
        self.skipped_no_function = kept = 0
        for where, fields in _flat_entries(self.path) if self._flat else self._tsv_entries():
            if not fields["function"]:
                self.skipped_no_function += 1
                continue
            sequence = normalise_sequence(fields["sequence"], "protein", where, "sequence")
            fields["sequence"] = sequence
            kept += 1
            yield where, fields
        if not kept:
            reason = f"no entry has function text ({self.skipped_no_function} entries without)"
            raise TaskDataError(str(self.path), reason)

    def _tsv_entries(self) -> Iterator[_Entry]:
        for line, row in iter_table(self.path, _TSV_REQUIRED, fmt="tsv", quoted=False):
            fields = {
                "accession": row["Entry"].strip(),
                "sequence": row["Sequence"],
                "function": clean_function(row["Function [CC]"]),
            }
            if "name" in self.info.fields:
                fields["name"] = _first_name(row["Protein names"])
            if "organism" in self.info.fields:
                fields["organism"] = row["Organism"].strip()
            yield f"{self.path}:{line}", {f: fields[f] for f in self.info.fields}


def load_uniprot(
    path: Path, dev_fraction: float = 0.05, test_fraction: float = 0.05
) -> UniProtTask:
    """The ``uniprot/function`` task over a Swiss-Prot ``.dat`` or UniProt TSV (``.gz`` ok)."""
    return UniProtTask(path, dev_fraction, test_fraction)


def _first_line(path: Path) -> str:
    with open_text(path) as f:
        for line in f:
            if line.strip():
                return line
    raise TaskDataError(str(path), "empty file: expected a Swiss-Prot flat file or a UniProt TSV")


def _tsv_fields(path: Path) -> tuple[str, ...]:
    rows = iter_table(path, _TSV_REQUIRED, fmt="tsv", quoted=False)
    try:
        first = next(rows, None)
    finally:
        rows.close()
    if first is None:
        raise TaskDataError(str(path), "no entries after the header")
    return tuple(f for f in FIELDS if _TSV_OPTIONAL.get(f, "Entry") in first[1])


class _CountedLines:
    """A text handle for Bio.SwissProt that counts the lines it has read."""

    def __init__(self, handle: Iterator[str]) -> None:
        self.handle, self.line = handle, 0

    def __iter__(self) -> _CountedLines:
        return self

    def __next__(self) -> str:
        text = next(self.handle)
        self.line += 1
        return text

    def read(self, size: int = -1) -> str:
        return "" if size == 0 else "".join(self.handle)  # Bio probes text mode with read(0)


def _flat_entries(path: Path) -> Iterator[_Entry]:
    with open_text(path) as f:
        lines = _CountedLines(f)
        records = SwissProt.parse(lines)  # type: ignore[no-untyped-call]
        start = 1
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except (ValueError, AssertionError) as err:
                reason = f"not a valid Swiss-Prot entry: {err}"
                raise TaskDataError(f"{path}:{lines.line}", reason) from None
            where, start = f"{path}:{start}", lines.line + 1
            if not record.accessions:
                raise TaskDataError(where, "entry has no AC (accession) line")
            function = " ".join(c for c in record.comments if c.startswith("FUNCTION:"))
            name = _REC_NAME.search(str(record.description))
            yield (
                where,
                {
                    "accession": str(record.accessions[0]),
                    "name": name.group(1).strip() if name else "",
                    "organism": str(record.organism).strip().rstrip("."),
                    "sequence": str(record.sequence),
                    "function": clean_function(function),
                },
            )


def _first_name(names: str) -> str:
    """``"Kinase A (EC 2.7.11.1) (PKA)"`` -> ``"Kinase A"``: drop trailing ``(...)`` groups."""
    text = re.sub(r"\s*\[(?:Cleaved into|Includes):.*$", "", names.strip())
    while text.endswith(")"):
        depth, i = 0, len(text) - 1
        for i in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[i], 0)
            if depth == 0:
                break
        if depth or i == 0 or text[i - 1] != " ":
            break
        text = text[: i - 1].rstrip()
    return text
