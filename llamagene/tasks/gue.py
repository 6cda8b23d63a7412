"""GUE, DNABERT-2's Genome Understanding Evaluation: 28 DNA classification datasets.

Layout (unzipped ``GUE.zip``): ``<root>/<group>/<name>/{train,dev,test}.csv``, header
``sequence,label``, one of::

    EMP/{H3,H3K14ac,H3K36me3,H3K4me1,H3K4me2,H3K4me3,H3K79me3,H3K9ac,H4,H4ac}   yeast, ~500 bp
    prom/prom_{300,core}_{all,notata,tata}    human promoters, 300 bp or the 70 bp core
    tf/{0..4}  mouse/{0..4}                   human / mouse TF ChIP-seq binding sites, ~100 bp
    splice/reconstructed                      human splice sites, ~400 bp (3 classes)
    virus/covid                               SARS-CoV-2 variants, ~1000 bp (9 classes)

Task ids are ``gue/<group>/<name>``; datasets are named ``<group>/<name>`` (``EMP/H3``) or by
group (``EMP`` = all ten). The metric is MCC, macro F1 for covid (as in the DNABERT-2 paper).

Labels: binary datasets are 1 = the mark / promoter / binding site, 0 = not. Splice is
0 = acceptor, 1 = donor, 2 = neither (llama-gene had this wrong). Covid's labels are 0-8; the
paper names the nine variants (Alpha, Beta, Delta, Eta, Gamma, Iota, Kappa, Lambda, Omicron) but
the data do not say which label is which variant, so the meanings here are "variant class k (GUE
label k)" rather than a guess.

Where the signal lies (:class:`~llamagene.tasks.Signal`: what trimming a too-long row keeps),
following how GUE built each dataset:

- ``prom_300_*``: windows run from 249 bp upstream to 50 bp downstream of the transcription start
  site (EPDnew), so the TSS is base 249: trimming keeps a window centred on it;
- ``prom_core_*``: 34 bp upstream to 35 bp downstream, TSS at base 34: centred on it;
- ``splice/reconstructed``: windows centred on the splice site: the centre;
- ``tf/*``, ``mouse/*``: windows centred on the ChIP-seq peak: the centre;
- ``EMP/*``: ~500 bp regions scored as a whole (enrichment over the region): the centre;
- ``virus/covid``: ~1000 bp genome fragments whose variant-defining mutations may lie anywhere,
  with no one position to centre on: the start is kept.

A dataset folder must hold ``train.csv`` and ``test.csv``; a missing ``dev.csv`` is allowed (the
task then has no dev split). Rows are streamed with :mod:`csv`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from llamagene.tasks import (
    SPLITS,
    ClassInfo,
    Signal,
    Split,
    Task,
    TaskDataError,
    TaskInfo,
    normalise_sequence,
    parse_label,
)
from llamagene.tasks.table import FileTask, RowConverter

_EMP_MARKS = {
    "H3": "histone H3",
    "H3K14ac": "H3K14ac (histone H3 acetylated at lysine 14)",
    "H3K36me3": "H3K36me3 (histone H3 trimethylated at lysine 36)",
    "H3K4me1": "H3K4me1 (histone H3 monomethylated at lysine 4)",
    "H3K4me2": "H3K4me2 (histone H3 dimethylated at lysine 4)",
    "H3K4me3": "H3K4me3 (histone H3 trimethylated at lysine 4)",
    "H3K79me3": "H3K79me3 (histone H3 trimethylated at lysine 79)",
    "H3K9ac": "H3K9ac (histone H3 acetylated at lysine 9)",
    "H4": "histone H4",
    "H4ac": "H4ac (acetylated histone H4)",
}
_PROMOTERS = {
    "300": "249 bp upstream to 50 bp downstream of the transcription start site",
    "core": "the core promoter, 34 bp upstream to 35 bp downstream of the transcription start site",
}
#: The transcription start site's 0-based position in a promoter window (see the docstring).
_TSS = {"300": 249, "core": 34}
_SUBSETS = {
    "all": "TATA-box and non-TATA promoters",
    "notata": "promoters without a TATA box",
    "tata": "promoters with a TATA box",
}
_COVID_CLASSES = 9


def _binary(no: str, yes: str) -> tuple[ClassInfo, ...]:
    return (ClassInfo("0", no), ClassInfo("1", yes))


def _info(
    name: str,
    description: str,
    classes: tuple[ClassInfo, ...],
    strand_symmetric: bool,
    signal: Signal | None = None,
) -> TaskInfo:
    group = name.split("/")[0]
    return TaskInfo(
        id=f"gue/{name}",
        task_type="binary" if len(classes) == 2 else "multiclass",
        description=description,
        fields=("sequence", "label"),
        sequence_fields={"sequence": "dna"},
        metric="f1_macro" if name == "virus/covid" else "mcc",
        classes=classes,
        strand_symmetric=strand_symmetric,
        signal=signal or Signal(),
        extra={"benchmark": "GUE", "group": group, "dataset": name},
    )


def _datasets() -> dict[str, TaskInfo]:
    infos: dict[str, TaskInfo] = {}
    for mark, what in _EMP_MARKS.items():
        if mark in ("H3", "H4"):  # occupancy by the histone itself, not a modification
            question = f"is {what} occupancy over the region high or low?"
            classes = _binary(f"low {what} occupancy", f"high {what} occupancy")
        else:
            question = f"is the region's {what} enrichment high or low?"
            classes = _binary(f"low {mark} enrichment", f"high {mark} enrichment")
        text = f"yeast (S. cerevisiae) histone occupancy and marks: {question}"
        infos[f"EMP/{mark}"] = _info(f"EMP/{mark}", text, classes, strand_symmetric=True)
    for size, where in _PROMOTERS.items():
        for subset, which in _SUBSETS.items():
            name = f"prom/prom_{size}_{subset}"
            text = f"human promoter detection ({which}; promoter windows span {where}): is the "
            text += "sequence a promoter?"
            signal = Signal("position", _TSS[size])
            infos[name] = _info(name, text, _binary("non-promoter", "promoter"), False, signal)
    for group, species in (("tf", "human"), ("mouse", "mouse")):
        for k in range(5):
            text = (
                f"{species} transcription factor binding: is the sequence a binding site (a "
                f"ChIP-seq peak) of the profiled factor, or background?"
            )
            classes = _binary("no binding site", "transcription factor binding site")
            infos[f"{group}/{k}"] = _info(f"{group}/{k}", text, classes, strand_symmetric=True)
    splice = (
        ClassInfo("0", "splice acceptor site"),
        ClassInfo("1", "splice donor site"),
        ClassInfo("2", "not a splice site"),
    )
    text = "human splice site prediction: acceptor, donor or neither"
    infos["splice/reconstructed"] = _info("splice/reconstructed", text, splice, False)
    covid = tuple(
        ClassInfo(str(k), f"variant class {k} (GUE label {k})") for k in range(_COVID_CLASSES)
    )
    text = "SARS-CoV-2 variant classification of genome fragments (9 variants)"
    infos["virus/covid"] = _info("virus/covid", text, covid, False, Signal("start"))
    return infos


#: The 28 GUE datasets by name (``EMP/H3`` ... ``virus/covid``), in the paper's order; no data.
GUE_DATASETS: Mapping[str, TaskInfo] = MappingProxyType(_datasets())
GUE_GROUPS = ("EMP", "prom", "tf", "mouse", "splice", "virus")
_REQUIRED_SPLITS: tuple[Split, ...] = ("train", "test")


def select_gue(names: Sequence[str] | Literal["all"]) -> list[str]:
    """Dataset names from names, ``gue/``-prefixed ids or group names; ValueError if unknown."""
    if names == "all":
        return list(GUE_DATASETS)
    chosen: list[str] = []
    for raw in names:
        name = raw.strip().strip("/").removeprefix("gue/")
        if name in GUE_DATASETS:
            found = [name]
        elif name in GUE_GROUPS:
            found = [n for n in GUE_DATASETS if n.split("/")[0] == name]
        else:
            close = difflib.get_close_matches(name, [*GUE_DATASETS, *GUE_GROUPS], n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"unknown GUE dataset {raw!r}; {hint}datasets are named like EMP/H3, "
                f"prom/prom_300_all, tf/0, mouse/0, splice/reconstructed, virus/covid, or by "
                f"group ({', '.join(GUE_GROUPS)})"
            )
        chosen += [n for n in found if n not in chosen]
    return chosen


def load_gue(root: Path, names: Sequence[str] | Literal["all"] = "all") -> list[Task]:
    """The chosen GUE datasets under ``root``; headers and first rows are checked now.

    Raises :class:`TaskDataError` for a missing root or dataset folder, a missing train or test
    file, an empty file, a missing ``sequence`` or ``label`` column; and, while rows are read,
    for a label outside the dataset's classes or a character that is not DNA.
    """
    try:
        chosen = select_gue(names)
    except ValueError as err:
        raise TaskDataError(str(root), str(err)) from None
    if not root.is_dir():
        raise TaskDataError(
            str(root),
            "GUE folder not found: unzip GUE.zip (DNABERT-2) and give the folder that holds "
            f"{', '.join(f'{g}/' for g in GUE_GROUPS)}",
        )
    tasks: list[Task] = []
    for name in chosen:
        task = _task(root, name)
        task.check()
        tasks.append(task)
    return tasks


def gue_files(root: Path, names: Sequence[str] | Literal["all"] = "all") -> dict[str, Path]:
    """The split files that exist for the chosen datasets, by ``<task id>/<split>`` (no reading)."""
    files: dict[str, Path] = {}
    for name in select_gue(names):
        for split in SPLITS:
            path = root / name / f"{split}.csv"
            if path.is_file():
                files[f"gue/{name}/{split}"] = path
    return files


def _task(root: Path, name: str) -> FileTask:
    folder = root / name
    if not folder.is_dir():
        raise TaskDataError(
            str(folder),
            f"GUE dataset folder {name} not found under {root} (is root the unzipped GUE folder?)",
        )
    split_files = {s: folder / f"{s}.csv" for s in SPLITS if (folder / f"{s}.csv").is_file()}
    missing = [s for s in _REQUIRED_SPLITS if s not in split_files]
    if missing:
        raise TaskDataError(
            str(folder),
            f"{', '.join(f'{s}.csv' for s in missing)} not found; a GUE dataset needs train.csv "
            "and test.csv (dev.csv may be missing)",
        )
    info = GUE_DATASETS[name]
    return FileTask(info, split_files, _converter(info), ("sequence", "label"))


def _converter(info: TaskInfo) -> RowConverter:
    def convert(row: Mapping[str, Any], where: str) -> dict[str, Any]:
        return {
            "sequence": normalise_sequence(row["sequence"], "dna", where, "sequence"),
            "label": parse_label(row["label"], info, where),
        }

    return convert
