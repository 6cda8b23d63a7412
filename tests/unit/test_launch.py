"""``pipelines/cluster/launch.sh``: the exact commands and sbatch scripts it writes, its argument
errors, and (with fake ``srun``/``scontrol``/``pdsh`` and a stand-in for ``llamagene``) that the
launcher strings it builds really start the right number of ranks with torchrun and DeepSpeed."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "pipelines" / "cluster" / "launch.sh"
VENV_BIN = Path(sys.executable).parent
CLEARED_ENV = (
    "LLAMAGENE_LAUNCHER",
    "LLAMAGENE_JOB_DIR",
    "OMP_NUM_THREADS",
    "DS_ACCELERATOR",
    "CUDA_VISIBLE_DEVICES",
    "PYTHON",
    "PYTHONPATH",
)
TORCHRUN_2 = "torchrun --standalone --nnodes 1 --nproc_per_node 2"
SRUN_TORCHRUN = (
    "srun --nodes=$SLURM_NNODES --ntasks-per-node=1 torchrun --nnodes $SLURM_NNODES "
    "--nproc_per_node {procs} --rdzv_id $SLURM_JOB_ID --rdzv_backend c10d "
    "--rdzv_endpoint $HEAD:{port}"
)

FAKE_NVIDIA_SMI = """#!/bin/bash
# lists FAKE_GPUS GPUs; none and a failure when it is 0, as on a machine without a driver
n=${FAKE_GPUS:-0}
((n > 0)) || exit 9
for ((i = 0; i < n; i++)); do echo "GPU $i: Fake GPU (UUID: GPU-$i)"; done
"""
FAKE_SCONTROL = """#!/bin/bash
[[ $1 == show && $2 == hostnames ]] || exit 1
printf '%s\\n' $FAKE_NODES
"""
FAKE_SRUN = """#!/bin/bash
# runs the command once per "node", here, in parallel
nodes=1
while [[ $1 == --* ]]; do
    case $1 in --nodes=*) nodes=${1#*=} ;; esac
    shift
done
echo "srun: $nodes nodes" >&2
pids=()
for ((i = 0; i < nodes; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i "$@" &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""
FAKE_PDSH = """#!/bin/bash
# runs the command once per host, here, in parallel; %n is the host's index
hosts=
while [[ $1 == -* ]]; do
    case $1 in -w) hosts=$2; shift 2 ;; -f) shift 2 ;; *) shift ;; esac
done
IFS=, read -r -a list <<<"$hosts"
cmd="$*"
pids=()
for i in "${!list[@]}"; do bash -c "${cmd//%n/$i}" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""
FAKE_SSH = """#!/bin/bash
while [[ $1 == -* ]]; do [[ $1 == -o || $1 == -p ]] && shift; shift; done
shift
exec bash -c "$*"
"""
FAKE_SBATCH = """#!/bin/bash
[[ $1 == --parsable ]] || exit 1
cp "$2" "$FAKE_SBATCH_COPY"
echo "4242;cluster"
"""
# Records its arguments and, with FAKE_SPEC set, starts the workers as the orchestrator would:
# LAUNCHER --module probe_rank SPEC.json.
FAKE_LLAMAGENE = """#!{python}
import json, os, shlex, subprocess, sys
argv = sys.argv[1:]
keys = ("OMP_NUM_THREADS", "DS_ACCELERATOR", "LLAMAGENE_LAUNCHER", "FROM_ENV_FILE")
with open(os.environ["FAKE_RECORD"], "w") as f:
    json.dump({{"argv": argv, "env": {{k: os.environ.get(k) for k in keys}}}}, f)
if os.environ.get("FAKE_SPEC") and "--launcher" in argv:
    prefix = shlex.split(argv[argv.index("--launcher") + 1])
    sys.exit(subprocess.call(prefix + ["--module", "probe_rank", os.environ["FAKE_SPEC"]]))
"""
PROBE_RANK = """import json, os, sys
keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS", "DS_ACCELERATOR", "FROM_ENV_FILE")
out = os.path.join(os.path.dirname(sys.argv[-1]), "rank%s.json" % os.environ["RANK"])
with open(out, "w") as f:
    json.dump({"argv": sys.argv[1:], **{k: os.environ.get(k) for k in keys}}, f)
"""


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


class Env:
    """A scratch folder with a pipeline file (its path has a blank), fake tools on PATH first."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bin = tmp / "bin"
        self.bin.mkdir()
        _write_exe(self.bin / "nvidia-smi", FAKE_NVIDIA_SMI)
        _write_exe(self.bin / "llamagene", FAKE_LLAMAGENE.format(python=sys.executable))
        (tmp / "my runs").mkdir()
        self.pipeline = tmp / "my runs" / "pipeline.yaml"
        self.pipeline.write_text("run_dir: out\nstages: {}\n")
        self.record = tmp / "record.json"
        self.env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        self.env["PATH"] = f"{self.bin}:/usr/bin:/bin"
        self.env["FAKE_RECORD"] = str(self.record)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(LAUNCH), *args],
            cwd=self.tmp,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def ok(self, *args: str, **env: str) -> list[str]:
        out = self.run(*args, **env)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()


@pytest.fixture
def sandbox(tmp_path: Path) -> Env:
    return Env(tmp_path)


def _cores() -> int:
    return int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)


def _sbatch_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("#SBATCH ")]


def _line(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- this machine -------------------------------------------------------------------------------


def test_local_two_cpu_processes(sandbox: Env) -> None:
    lines = sandbox.ok("--local", "--nproc", "2", "--dry-run", "my runs/pipeline.yaml", "pretrain")
    assert lines == [
        "# 2 process(es) on this machine, 0 GPU(s) seen",
        f"export OMP_NUM_THREADS={max(1, _cores() // 2)}",
        "export DS_ACCELERATOR=cpu",
        f"llamagene run '{sandbox.pipeline}' --only pretrain --launcher '{TORCHRUN_2}'",
    ]


def test_local_overrides_force_and_env_file(sandbox: Env) -> None:
    (sandbox.tmp / "env.sh").write_text("export FROM_ENV_FILE=yes\n")
    lines = sandbox.ok(
        "--local",
        "--nproc=2",
        "--env",
        "env.sh",
        "my runs/pipeline.yaml",
        "pretrain",
        "pretrain.max_steps=10",
        "--force",
        "pretrain.note=a b",
        "--dry-run",
        OMP_NUM_THREADS="3",
        DS_ACCELERATOR="cpu",
    )
    assert lines == [
        "# 2 process(es) on this machine, 0 GPU(s) seen",
        f"source {sandbox.tmp}/env.sh",
        f"llamagene run '{sandbox.pipeline}' pretrain.max_steps=10 'pretrain.note=a b' "
        f"--only pretrain --launcher '{TORCHRUN_2}' --force",
    ]


def test_local_one_cpu_process_runs_in_the_orchestrator(sandbox: Env) -> None:
    lines = sandbox.ok("--local", "--dry-run", str(sandbox.pipeline), "merge_vocab")
    assert lines == [
        "# 1 process(es) on this machine, 0 GPU(s) seen",
        f"export OMP_NUM_THREADS={_cores()}",
        "export DS_ACCELERATOR=cpu",
        f"llamagene run '{sandbox.pipeline}' --only merge_vocab",
    ]


def test_local_defaults_to_one_process_per_gpu(sandbox: Env) -> None:
    lines = sandbox.ok("--local", "--dry-run", str(sandbox.pipeline), "pretrain", FAKE_GPUS="4")
    assert lines == [
        "# 4 process(es) on this machine, 4 GPU(s) seen",
        f"llamagene run '{sandbox.pipeline}' --only pretrain "
        "--launcher 'torchrun --standalone --nnodes 1 --nproc_per_node 4'",
    ]
    lines = sandbox.ok(
        "--local",
        "--dry-run",
        str(sandbox.pipeline),
        "pretrain",
        FAKE_GPUS="4",
        CUDA_VISIBLE_DEVICES="1,3",
    )
    assert lines[0] == "# 2 process(es) on this machine, 2 GPU(s) seen"
    assert lines[-1].endswith("--nproc_per_node 2'")


def test_local_deepspeed(sandbox: Env) -> None:
    lines = sandbox.ok(
        "--local",
        "--launcher",
        "deepspeed",
        "--nproc",
        "2",
        "--dry-run",
        str(sandbox.pipeline),
        "pretrain",
    )
    assert lines[1:] == [
        f"export OMP_NUM_THREADS={max(1, _cores() // 2)}",
        "export DS_ACCELERATOR=cpu",
        f"llamagene run '{sandbox.pipeline}' --only pretrain "
        "--launcher 'deepspeed --no_local_rank --num_gpus 2 --master_port 29500'",
    ]


def test_deepspeed_hostfile_runs_here(sandbox: Env) -> None:
    hosts = sandbox.tmp / "hosts"
    hosts.write_text("worker-1 slots=8\nworker-2 slots=8\n")
    (sandbox.tmp / "env.sh").write_text("module load cuda\n")
    lines = sandbox.ok(
        "--hostfile",
        "hosts",
        "--nodes",
        "2",
        "--env",
        "env.sh",
        "--dry-run",
        str(sandbox.pipeline),
        "pretrain",
    )
    assert lines == [
        "# 1 process(es) on this machine, 0 GPU(s) seen",
        f"source {sandbox.tmp}/env.sh",
        f"llamagene run '{sandbox.pipeline}' --only pretrain --launcher 'deepspeed --no_local_rank "
        f"--hostfile {hosts} --master_port 29500 --num_nodes 2 --venv_script {sandbox.tmp}/env.sh'",
    ]


def test_python_dash_m_when_llamagene_is_not_on_path(sandbox: Env) -> None:
    (sandbox.bin / "llamagene").unlink()
    lines = sandbox.ok("--local", "--dry-run", str(sandbox.pipeline), "pretrain")
    assert lines[-1].startswith("python3 -m llamagene run ")
    lines = sandbox.ok(
        "--local", "--dry-run", str(sandbox.pipeline), "pretrain", PYTHON="/opt/py 3/python"
    )
    assert lines[-1].startswith("'/opt/py 3/python' -m llamagene run ")


def test_local_run_execs_llamagene(sandbox: Env) -> None:
    (sandbox.tmp / "env.sh").write_text("export FROM_ENV_FILE=yes\n")
    out = sandbox.run(
        "--local", "--nproc", "2", "--env", "env.sh", str(sandbox.pipeline), "pretrain", "a.b=1",
        LLAMAGENE_LAUNCHER="stale",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    record = json.loads(sandbox.record.read_text())
    assert record["argv"] == [
        "run", str(sandbox.pipeline), "a.b=1", "--only", "pretrain", "--launcher", TORCHRUN_2
    ]  # fmt: skip
    assert record["env"] == {
        "OMP_NUM_THREADS": str(max(1, _cores() // 2)),
        "DS_ACCELERATOR": "cpu",
        "LLAMAGENE_LAUNCHER": None,
        "FROM_ENV_FILE": "yes",
    }


# --- SLURM --------------------------------------------------------------------------------------


def test_slurm_single_node_defaults(sandbox: Env) -> None:
    lines = sandbox.ok("--dry-run", str(sandbox.pipeline), "pretrain")
    job_dir = sandbox.tmp / "slurm"
    assert _sbatch_lines(lines) == [
        "#SBATCH --job-name=llamagene-pretrain",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        f"#SBATCH --output={job_dir}/%x-%j.out",
    ]
    assert lines[1] == "#!/bin/bash"
    assert re.fullmatch(
        rf"# sbatch script {job_dir}/llamagene-pretrain-\d{{8}}-\d{{6}}\.sbatch:", lines[0]
    )
    assert _line(lines, "LAUNCHER=") == f'LAUNCHER="{SRUN_TORCHRUN.format(procs=8, port=29500)}"'
    assert _line(lines, "HEAD=") == "HEAD=${NODES[0]}"
    assert _line(lines, "exec ") == (
        f"exec \"${{LLAMAGENE[@]}}\" run '{sandbox.pipeline}' --only pretrain "
        '--launcher "$LAUNCHER"'
    )
    assert lines[-2:] == [f"mkdir -p {job_dir}", f"sbatch --parsable {lines[0][16:-1]}"]
    assert not job_dir.exists()  # a dry run writes nothing


def test_slurm_multi_node_every_option(sandbox: Env) -> None:
    (sandbox.tmp / "env.sh").write_text("module load cuda/12.4\nsource /opt/venv/bin/activate")
    lines = sandbox.ok(
        "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--account", "proj",
        "--time", "24:00:00", "--job-name", "pt", "--cpus-per-task", "64", "--mem", "0",
        "--sbatch-arg=--exclusive", "--sbatch-arg", "--constraint=a100", "--master-port", "29600",
        "--env", "env.sh", "--dry-run", str(sandbox.pipeline), "pretrain", "--force", "x.y=2",
        LLAMAGENE_JOB_DIR="jobs/",
    )  # fmt: skip
    job_dir = sandbox.tmp / "jobs"
    assert _sbatch_lines(lines) == [
        "#SBATCH --job-name=pt",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=64",
        "#SBATCH --mem=0",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --time=24:00:00",
        f"#SBATCH --output={job_dir}/%x-%j.out",
        "#SBATCH --exclusive",
        "#SBATCH --constraint=a100",
    ]
    env_at = lines.index(f"# --- {sandbox.tmp}/env.sh (copied by --env) ---")
    assert lines[env_at + 1 : env_at + 4] == [
        "module load cuda/12.4",
        "source /opt/venv/bin/activate",
        f"# --- end of {sandbox.tmp}/env.sh ---",
    ]
    launcher = SRUN_TORCHRUN.format(procs=8, port=29600).replace(
        "--ntasks-per-node=1", "--ntasks-per-node=1 --cpus-per-task=64"
    )
    assert _line(lines, "LAUNCHER=") == f'LAUNCHER="{launcher}"'
    assert _line(lines, "exec ") == (
        f"exec \"${{LLAMAGENE[@]}}\" run '{sandbox.pipeline}' x.y=2 --only pretrain "
        '--launcher "$LAUNCHER" --force'
    )
    assert re.fullmatch(
        rf"sbatch --parsable {job_dir}/llamagene-pretrain-[\d-]+\.sbatch", lines[-1]
    )


def test_slurm_nproc_sets_gpus_per_node(sandbox: Env) -> None:
    lines = sandbox.ok("--nproc", "4", "--dry-run", str(sandbox.pipeline), "finetune")
    assert "#SBATCH --gpus-per-node=4" in lines
    assert _line(lines, "LAUNCHER=") == f'LAUNCHER="{SRUN_TORCHRUN.format(procs=4, port=29500)}"'


def test_slurm_cpu_nodes(sandbox: Env) -> None:
    lines = sandbox.ok(
        "--gpus-per-node", "0", "--nproc", "4", "--dry-run", str(sandbox.pipeline), "pretrain"
    )
    assert not any(line.startswith("#SBATCH --gpus") for line in lines)
    assert "export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}" in lines
    assert "    OMP_NUM_THREADS=$((${SLURM_CPUS_PER_TASK:-$(nproc)} / 4))" in lines


def test_slurm_deepspeed_multi_node(sandbox: Env) -> None:
    lines = sandbox.ok(
        "--launcher", "deepspeed", "--nodes", "2", "--dry-run", str(sandbox.pipeline), "pretrain"
    )
    job_dir = sandbox.tmp / "slurm"
    assert "#SBATCH --nodes=2" in lines
    assert _line(lines, "HOSTFILE=") == (
        f"HOSTFILE={job_dir}/llamagene-pretrain-$SLURM_JOB_ID.hostfile"
    )
    assert _line(lines, "printf ") == 'printf \'%s slots=8\\n\' "${NODES[@]}" >"$HOSTFILE"'
    assert _line(lines, "LAUNCHER=") == (
        'LAUNCHER="deepspeed --no_local_rank --num_nodes $SLURM_NNODES --num_gpus 8 '
        '--master_addr $HEAD --master_port 29500 --hostfile $HOSTFILE"'
    )


def test_slurm_deepspeed_single_node_needs_no_hostfile(sandbox: Env) -> None:
    lines = sandbox.ok("--launcher=deepspeed", "--dry-run", str(sandbox.pipeline), "pretrain")
    assert not any(line.startswith("HOSTFILE=") for line in lines)
    assert _line(lines, "LAUNCHER=") == (
        'LAUNCHER="deepspeed --no_local_rank --num_gpus 8 --master_port 29500"'
    )


def test_slurm_submit_and_the_job_script_itself(sandbox: Env) -> None:
    """Submit with a fake sbatch, then run the script it got as SLURM would, on fake nodes."""
    for name, text in (("sbatch", FAKE_SBATCH), ("scontrol", FAKE_SCONTROL)):
        _write_exe(sandbox.bin / name, text)
    copy = sandbox.tmp / "submitted.sbatch"
    out = sandbox.run("--nodes", "2", str(sandbox.pipeline), "pretrain", FAKE_SBATCH_COPY=str(copy))
    assert out.returncode == 0, out.stderr
    scripts = list((sandbox.tmp / "slurm").glob("llamagene-pretrain-*.sbatch"))
    assert len(scripts) == 1
    assert scripts[0].read_text() == copy.read_text()
    assert out.stdout.splitlines() == [
        f"submitted job 4242: {scripts[0]}",
        f"log: {sandbox.tmp}/slurm/llamagene-pretrain-4242.out",
    ]
    slurm = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242"}
    job = subprocess.run(
        ["bash", str(copy)],
        cwd="/",
        env={**sandbox.env, **slurm, "FAKE_NODES": "gpu07 gpu08", "LLAMAGENE_LAUNCHER": "stale"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, job.stderr
    record = json.loads(sandbox.record.read_text())
    assert record["argv"] == [
        "run", str(sandbox.pipeline), "--only", "pretrain", "--launcher",
        "srun --nodes=2 --ntasks-per-node=1 torchrun --nnodes 2 --nproc_per_node 8 "
        "--rdzv_id 4242 --rdzv_backend c10d --rdzv_endpoint gpu07:29500",
    ]  # fmt: skip
    assert record["env"]["LLAMAGENE_LAUNCHER"] is None


# --- the launcher strings start real workers ------------------------------------------------------


def _probe_setup(sandbox: Env) -> Path:
    """Fake SLURM/pdsh/ssh tools and the probe module; returns the folder that gets rank*.json."""
    if shutil.which("torchrun", path=str(VENV_BIN)) is None:
        pytest.skip("torchrun is not installed")
    for name, text in (
        ("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN), ("pdsh", FAKE_PDSH), ("ssh", FAKE_SSH)
    ):  # fmt: skip
        _write_exe(sandbox.bin / name, text)
    probe = sandbox.tmp / "probe"
    probe.mkdir()
    (probe / "probe_rank.py").write_text(PROBE_RANK)
    spec = probe / "spec.json"
    spec.write_text("{}")
    sandbox.env["PATH"] = f"{sandbox.bin}:{VENV_BIN}:/usr/bin:/bin"
    sandbox.env["PYTHONPATH"] = str(probe)
    sandbox.env["FAKE_SPEC"] = str(spec)
    return probe


def _ranks(probe: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(probe.glob("rank*.json"))]


def _job_script(lines: list[str]) -> str:
    return "\n".join(lines[1 : lines.index("# end of the sbatch script; submitted with:")]) + "\n"


def test_local_torchrun_starts_two_ranks(sandbox: Env) -> None:
    probe = _probe_setup(sandbox)
    out = sandbox.run("--local", "--nproc", "2", str(sandbox.pipeline), "pretrain")
    assert out.returncode == 0, out.stderr
    ranks = _ranks(probe)
    assert [(r["RANK"], r["WORLD_SIZE"]) for r in ranks] == [("0", "2"), ("1", "2")]
    assert all(r["argv"] == [sandbox.env["FAKE_SPEC"]] for r in ranks)


def test_slurm_multi_node_torchrun_rendezvous(sandbox: Env) -> None:
    """Two "nodes" (both this machine) meet at the head node's c10d endpoint: world size 2."""
    probe = _probe_setup(sandbox)
    port = str(_free_port())
    lines = sandbox.ok(
        "--nodes",
        "2",
        "--nproc",
        "1",
        "--master-port",
        port,
        "--dry-run",
        str(sandbox.pipeline),
        "pretrain",
    )
    script = sandbox.tmp / "job.sbatch"
    script.write_text(_job_script(lines))
    slurm = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "7"}
    job = subprocess.run(
        ["bash", str(script)],
        env={**sandbox.env, **slurm, "FAKE_NODES": "localhost localhost"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 0, job.stderr
    ranks = _ranks(probe)
    assert [(r["RANK"], r["WORLD_SIZE"], r["LOCAL_RANK"]) for r in ranks] == [
        ("0", "2", "0"),
        ("1", "2", "0"),
    ]


@pytest.mark.slow
def test_local_deepspeed_starts_two_ranks_without_local_rank_argument(sandbox: Env) -> None:
    probe = _probe_setup(sandbox)
    port = str(_free_port())
    out = sandbox.run(
        "--local", "--launcher", "deepspeed", "--nproc", "2", "--master-port", port,
        str(sandbox.pipeline), "pretrain",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    ranks = _ranks(probe)
    assert [(r["RANK"], r["WORLD_SIZE"], r["DS_ACCELERATOR"]) for r in ranks] == [
        ("0", "2", "cpu"),
        ("1", "2", "cpu"),
    ]
    # the worker gets exactly SPEC.json: no --local_rank=N in front of it
    assert all(r["argv"] == [sandbox.env["FAKE_SPEC"]] for r in ranks)
    assert all(r["OMP_NUM_THREADS"] == str(max(1, _cores() // 2)) for r in ranks)


@pytest.mark.slow
def test_slurm_multi_node_deepspeed_over_pdsh(sandbox: Env) -> None:
    """The generated hostfile, pdsh and --venv_script, with two "nodes" that are this machine."""
    probe = _probe_setup(sandbox)
    (sandbox.tmp / "env.sh").write_text("export FROM_ENV_FILE=yes\n")
    port = str(_free_port())
    lines = sandbox.ok(
        "--launcher", "deepspeed", "--nodes", "2", "--nproc", "1", "--master-port", port,
        "--env", "env.sh", "--dry-run", str(sandbox.pipeline), "pretrain",
    )  # fmt: skip
    script = sandbox.tmp / "job.sbatch"
    script.write_text(_job_script(lines))
    (sandbox.tmp / "slurm").mkdir()
    slurm = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "8"}
    job = subprocess.run(
        ["bash", str(script)],
        env={**sandbox.env, **slurm, "FAKE_NODES": "localhost 127.0.0.1", "DS_ACCELERATOR": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr
    hostfile = sandbox.tmp / "slurm" / "llamagene-pretrain-8.hostfile"
    assert hostfile.read_text() == "localhost slots=1\n127.0.0.1 slots=1\n"
    ranks = _ranks(probe)
    assert [(r["RANK"], r["WORLD_SIZE"], r["FROM_ENV_FILE"]) for r in ranks] == [
        ("0", "2", "yes"),
        ("1", "2", "yes"),
    ]
    assert all(r["argv"] == [sandbox.env["FAKE_SPEC"]] for r in ranks)


# --- argument errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.yaml", "pretrain"], "no pipeline file missing.yaml"),
        (["--bogus", "P", "pretrain"], "unknown option --bogus"),
        (["--nproc", "two", "P", "pretrain"], "--nproc needs a whole number, not 'two'"),
        (["--nproc", "0", "P", "pretrain"], "--nproc must be at least 1"),
        (["--nproc=-1", "P", "pretrain"], "--nproc needs a whole number"),
        (["P", ""], "STAGE is empty"),
        (["P"], "give PIPELINE.yaml and STAGE"),
        ([], "give PIPELINE.yaml and STAGE"),
        (["P", "pretrain", "stray"], "expected key=value after STAGE, not 'stray'"),
        (["P", "pre train"], "not a stage name"),
        (["--launcher", "mpirun", "P", "pretrain"], "--launcher is torchrun or deepspeed"),
        (["P", "pretrain", "--nproc"], "--nproc needs a value"),
        (["--local=yes", "P", "pretrain"], "--local takes no value"),
        (["--master-port", "70000", "P", "pretrain"], "--master-port must be at most 65535"),
        (["--env", "nope.sh", "P", "pretrain"], "no env file nope.sh"),
        (["--hostfile", "nope", "P", "pretrain"], "no hostfile nope"),
        (
            ["--hostfile", "P", "--launcher", "torchrun", "P", "pretrain"],
            "needs --launcher deepspeed",
        ),
        (["--local", "--nodes", "2", "P", "pretrain"], "--local runs on this machine only"),
        (["--job-name", "my job", "P", "pretrain"], "--job-name may not contain blanks"),
    ],
)
def test_argument_errors_exit_2(sandbox: Env, args: list[str], message: str) -> None:
    args = [str(sandbox.pipeline) if a == "P" else a for a in args]
    out = sandbox.run(*args, "--dry-run")
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""


def test_no_sbatch_without_dry_run_is_an_error(sandbox: Env) -> None:
    out = sandbox.run(str(sandbox.pipeline), "pretrain")
    assert out.returncode == 2
    assert "sbatch not found" in out.stderr
    assert not (sandbox.tmp / "slurm").exists()


def test_help(sandbox: Env) -> None:
    out = sandbox.run("--help")
    assert out.returncode == 0
    assert out.stdout.startswith("usage: launch.sh [options] PIPELINE.yaml STAGE [key=value ...]")


# --- the script itself --------------------------------------------------------------------------


def test_bash_syntax() -> None:
    subprocess.run(["bash", "-n", str(LAUNCH)], check=True)
    assert os.access(LAUNCH, os.X_OK)


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    out = subprocess.run(["shellcheck", str(LAUNCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
