"""``pipelines/llama_gene_7b/``: the two paper-scale pipelines (DNA only, DNA + protein) validate
with nothing wrong but their local inputs, validate completely once those exist (tiny stand-ins
here), keep llama-gene's settings, have a batch that divides on 1 x 8 and 4 x 8 GPUs, and
``launch.sh --dry-run`` prints the whole SLURM job for both node counts."""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llamagene.pipeline import load_pipeline
from llamagene.tasks.gue import GUE_DATASETS
from llamagene.training.data_recipe import load_recipe
from llamagene.training.model import LLAMA_PROJECTIONS

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "pipelines" / "llama_gene_7b"
LAUNCH = ROOT / "pipelines" / "cluster" / "launch.sh"
VARIANTS = ("dna", "dna_protein")
BASE = ROOT / "models" / "Llama-2-7b-hf"
DATA = ROOT / "data"

#: Every local input each variant needs, as `llamagene validate` names the missing ones.
MISSING = {
    "dna": {
        DATA / "genomes" / "GCF_000001405.40_GRCh38.p14_genomic.fna.gz",
        BASE / "tokenizer.model",
        BASE,
        DATA / "genomes",
        DATA / "english",
        DATA / "english_sft" / "alpaca_data.jsonl",
    },
    "dna_protein": {
        DATA / "genomes" / "GCF_000001405.40_GRCh38.p14_genomic.fna.gz",
        DATA / "uniprot" / "uniprot_sprot.fasta.gz",
        BASE / "tokenizer.model",
        BASE,
        DATA / "genomes",
        DATA / "uniprot" / "uniprot_trembl.fasta.gz",
        DATA / "english",
        DATA / "english_sft" / "alpaca_data.jsonl",
    },
}
#: How `check()` words a missing input: "<path> does not exist" or a base without config.json.
MISSING_PATTERNS = (
    re.compile(r".*: (?P<path>/\S+) does not exist"),
    re.compile(r"stages\.pretrain: base_model: (?P<path>/\S+) is not a HF model folder "
               r"\(no config\.json\)"),
    re.compile(r"stages\.evaluate: base_model (?P<path>/\S+): not a model folder "
               r"\(no config\.json\)"),
)  # fmt: skip


def _configs(variant: str) -> dict[str, Any]:
    return {stage.name: cfg for stage, cfg in load_pipeline(FOLDER / f"{variant}.yaml").stages()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_validate_reports_only_the_missing_local_inputs(variant: str) -> None:
    if BASE.exists() or DATA.exists():
        pytest.skip("the local model or data are here: nothing is missing")
    problems = load_pipeline(FOLDER / f"{variant}.yaml").check()
    missing = set()
    for problem in problems:
        match = next((m for p in MISSING_PATTERNS if (m := p.fullmatch(problem))), None)
        assert match, f"not about a missing input: {problem}"
        missing.add(Path(match["path"]))
    assert missing == MISSING[variant]
    # `llamagene validate` says the same, and fails
    out = subprocess.run(
        [sys.executable, "-m", "llamagene", "validate", str(FOLDER / f"{variant}.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert out.stderr.splitlines()[1:] == [f"  - {p}" for p in problems]


def _fasta(path: Path, letters: str, chars: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = [">stand-in"]
    lines += ["".join(rng.choice(letters) for _ in range(80)) for _ in range(chars // 80)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")


def _local_tree(tmp: Path, base_tokenizer: Path) -> Path:
    """The checkout's layout with tiny stand-ins for the model and the data; returns its root."""
    for rel in (
        "pipelines/llama_gene_7b",
        "pipelines/deepspeed/zero2.json",
        "data_recipes/llama_gene_7b_dna.yaml",
        "data_recipes/llama_gene_7b_dna_protein.yaml",
        "data_recipes/english/heldout.txt",
    ):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (ROOT / rel).is_dir() else shutil.copy
        copy(ROOT / rel, tmp / rel)
    base = tmp / "models" / "Llama-2-7b-hf"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    shutil.copy(base_tokenizer, base / "tokenizer.model")
    data = tmp / "data"
    # train_bpe's check wants enough characters for 30,000 pieces: 5 per merged piece
    _fasta(data / "genomes" / "GCF_000001405.40_GRCh38.p14_genomic.fna.gz", "ACGT", 160_000, 1)
    _fasta(data / "uniprot" / "uniprot_sprot.fasta.gz", "ACDEFGHIKLMNPQRSTVWY", 160_000, 2)
    _fasta(data / "uniprot" / "uniprot_trembl.fasta.gz", "ACDEFGHIKLMNPQRSTVWY", 800, 3)
    (data / "english").mkdir()
    (data / "english" / "part-0000.jsonl").write_text(json.dumps({"text": "A document."}) + "\n")
    (data / "english_sft").mkdir()
    row = {"instruction": "Say hello.", "input": "", "output": "Hello."}
    (data / "english_sft" / "alpaca_data.jsonl").write_text(json.dumps(row) + "\n")
    for name in GUE_DATASETS:  # validate reads each dataset's header and first row
        (data / "GUE" / name).mkdir(parents=True)
        for split in ("train", "dev", "test"):
            (data / "GUE" / name / f"{split}.csv").write_text("sequence,label\nACGTACGTAC,0\n")
    with gzip.open(data / "uniprot" / "uniprot_sprot.dat.gz", "wt") as f:
        f.write("Entry\tSequence\tFunction [CC]\nP00001\tMKV\tFUNCTION: Binds DNA.\n")
    return tmp


@pytest.mark.parametrize("variant", VARIANTS)
def test_validates_once_the_local_inputs_exist(
    variant: str, tmp_path: Path, base_tokenizer_path: Path
) -> None:
    tree = _local_tree(tmp_path, base_tokenizer_path)
    assert load_pipeline(tree / "pipelines" / "llama_gene_7b" / f"{variant}.yaml").check() == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_llama_gene_settings(variant: str) -> None:
    cfgs = _configs(variant)
    assert list(cfgs) == ["train_bpe", "merge_vocab", "pretrain", "build_sft", "finetune",
                          "evaluate"]  # fmt: skip
    bpe = cfgs["train_bpe"]
    assert bpe.dna_vocab_size == 30000 and bpe.dna_inputs
    if variant == "dna":
        assert bpe.protein_inputs == []
    else:
        assert bpe.protein_vocab_size == 30000 and bpe.protein_inputs
    pretrain = cfgs["pretrain"]
    assert pretrain.base_model == BASE
    assert cfgs["merge_vocab"].base_tokenizer == BASE / "tokenizer.model"
    assert cfgs["evaluate"].base_model == BASE
    assert pretrain.data_recipe == ROOT / "data_recipes" / f"llama_gene_7b_{variant}.yaml"
    assert pretrain.block_size == 512
    for stage in ("pretrain", "finetune"):
        cfg = cfgs[stage]
        assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (8, 32, 0.05)
        assert cfg.lora.target_modules == list(LLAMA_PROJECTIONS)
        assert cfg.deepspeed == ROOT / "pipelines" / "deepspeed" / "zero2.json"
        assert cfg.training.precision == "bf16"
        train = cfg.training
        for processes in (8, 32):  # 1 node x 8 GPUs, 4 nodes x 8: the same optimizer steps
            assert train.global_batch_size % (train.micro_batch_size * processes) == 0, processes


@pytest.mark.parametrize("variant", VARIANTS)
def test_data_recipe_is_llama_gene_scale(variant: str) -> None:
    recipe = load_recipe(ROOT / "data_recipes" / f"llama_gene_7b_{variant}.yaml", check_files=False)
    kinds = {s.name: s.kind for s in recipe.sources}
    expected = {"genomes": "dna", "english": "jsonl"}
    if variant == "dna_protein":
        expected["uniprot"] = "protein"
    assert kinds == expected
    assert all(s.max_chars == 16_000_000_000 for s in recipe.sources)  # ~16 GB of each kind
    assert all(s.paths[0].is_relative_to(DATA) for s in recipe.sources)
    # the comments' numbers: one pass over the DNA's ~2.7 G tokens, the other kinds as much;
    # at 131,072 tokens per optimizer step ~41,200 steps (DNA) and ~61,000 (DNA + protein)
    total = {"dna": 5_400_000_000, "dna_protein": 8_000_000_000}[variant]
    assert recipe.total_tokens == total
    assert round(total / (256 * 512), -2) == {"dna": 41_200, "dna_protein": 61_000}[variant]


def _dry_run(*args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMAGENE_", "SLURM_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # the real llamagene plan
    out = subprocess.run(
        ["bash", str(LAUNCH), "--dry-run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("nodes", [1, 4])
@pytest.mark.parametrize("variant", VARIANTS)
def test_launch_dry_run_prints_the_whole_job(variant: str, nodes: int) -> None:
    pipeline = FOLDER / f"{variant}.yaml"
    lines = _dry_run("--nodes", str(nodes), "--gpus-per-node", "8", "--time", "72:00:00",
                     str(pipeline), "pretrain")  # fmt: skip
    plan_lines = lines[: next(i for i, x in enumerate(lines) if x.startswith("# sbatch script "))]
    assert plan_lines[0].startswith(("# batch plan (", "# plan: unavailable ("))
    if plan_lines[0].startswith("# batch plan ("):  # `llamagene plan` for all the processes
        assert f" --stage pretrain --gpus {8 * nodes}):" in plan_lines[0]
    assert all(line.startswith("#") for line in plan_lines)
    for wanted in (f"--nodes={nodes}", "--gpus-per-node=8", "--cpus-per-task=64", "--mem=256G",
                   "--time=72:00:00", "--requeue", "--signal=B:USR1@600"):  # fmt: skip
        assert f"#SBATCH {wanted}" in lines
    assert "PROCESSES=$((SLURM_NNODES * 8))" in lines
    run = next(line for line in lines if line.startswith('"${LLAMAGENE[@]}" run '))
    assert run == (
        f'"${{LLAMAGENE[@]}}" run {pipeline} --only pretrain --launcher "$LAUNCHER" '
        '--processes "$PROCESSES" &'
    )
    assert lines[-1].startswith("sbatch --parsable ")
    assert lines[-1].endswith(".sbatch")


def test_launch_dry_run_with_a_prepare_job() -> None:
    pipeline = FOLDER / "dna_protein.yaml"
    lines = _dry_run("--prepare-job", "--nodes", "4", str(pipeline), "pretrain")
    prepare = next(line for line in lines if line.startswith('exec "${LLAMAGENE[@]}" prepare '))
    assert prepare == f'exec "${{LLAMAGENE[@]}}" prepare {pipeline} --stage pretrain'
    assert lines[-1].startswith("sbatch --parsable --dependency=afterok:${PREPARE_JOB%%;*} ")
