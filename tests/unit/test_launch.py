"""``pipelines/cluster/launch.sh``: the exact commands and sbatch scripts it writes, its argument
errors, and (with fake ``srun``/``scontrol``/``sbatch``/``pdsh`` and a stand-in for ``llamagene``)
that the launcher strings it builds really start the right number of ranks with torchrun and
DeepSpeed, that a job checkpoints and requeues itself on SLURM's USR1 and resumes when rerun, and
that ``--prepare-job`` chains a CPU job running ``llamagene prepare`` before the GPU job."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
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
    "LLAMAGENE_STOP_FILE",
    "SLURM_RESTART_COUNT",
)
TORCHRUN_2 = "torchrun --standalone --nnodes 1 --nproc_per_node 2"
SRUN_TORCHRUN = (
    "srun --nodes=$SLURM_NNODES --ntasks-per-node=1 --cpus-per-task={cpus} --kill-on-bad-exit=1 "
    "torchrun --nnodes $SLURM_NNODES --nproc_per_node {procs} --rdzv_id $SLURM_JOB_ID "
    "--rdzv_backend c10d --rdzv_endpoint $HEAD:$MASTER_PORT"
)
#: What the stand-in prints for `llamagene plan` when FAKE_PLAN is unset: an older llamagene.
NO_PLAN = "llamagene: error: argument COMMAND: invalid choice: 'plan'"

FAKE_NVIDIA_SMI = """#!/bin/bash
# lists FAKE_GPUS GPUs; none and a failure when it is 0, as on a machine without a driver
n=${FAKE_GPUS:-0}
((n > 0)) || exit 9
for ((i = 0; i < n; i++)); do echo "GPU $i: Fake GPU (UUID: GPU-$i)"; done
"""
FAKE_SCONTROL = """#!/bin/bash
if [[ $1 == requeue ]]; then
    echo "$*" >>"$FAKE_SCONTROL_LOG"
    exit 0
fi
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
# job ids 4242, 4243, ... in the order of submission; the last argument is the script
[[ $1 == --parsable ]] || exit 1
n=0
[[ ! -f $FAKE_SBATCH_LOG ]] || n=$(wc -l <"$FAKE_SBATCH_LOG")
echo "$*" >>"$FAKE_SBATCH_LOG"
[[ -z ${FAKE_SBATCH_COPY:-} ]] || cp "${!#}" "$FAKE_SBATCH_COPY"
echo "$((4242 + n));cluster"
"""
# `plan`: prints FAKE_PLAN (recording its arguments in FAKE_PLAN_RECORD), or fails as an older
# llamagene without the command does. Otherwise records its arguments and environment and, with
# FAKE_SPEC set, starts the workers as the orchestrator would: LAUNCHER --module probe_rank
# SPEC.json; with FAKE_WAIT_STOP set it waits for $LLAMAGENE_STOP_FILE and then exits with 75,
# as a training stage stopped on request does.
FAKE_LLAMAGENE = """#!{python}
import json, os, shlex, subprocess, sys, time
argv = sys.argv[1:]
if argv[:1] == ["plan"]:
    if "FAKE_PLAN" not in os.environ:
        print("usage: llamagene [-h] [--debug] COMMAND ...", file=sys.stderr)
        print({no_plan!r}, file=sys.stderr)
        sys.exit(2)
    with open(os.environ["FAKE_PLAN_RECORD"], "w") as f:
        json.dump(argv, f)
    print(os.environ["FAKE_PLAN"])
    sys.exit(0)
keys = ("OMP_NUM_THREADS", "DS_ACCELERATOR", "LLAMAGENE_LAUNCHER", "FROM_ENV_FILE",
        "LLAMAGENE_STOP_FILE")
stop = os.environ.get("LLAMAGENE_STOP_FILE")
with open(os.environ["FAKE_RECORD"], "w") as f:
    json.dump({{"argv": argv, "env": {{k: os.environ.get(k) for k in keys}},
               "stop_file_at_start": bool(stop) and os.path.exists(stop)}}, f)
if os.environ.get("FAKE_WAIT_STOP"):
    open(os.environ["FAKE_WAIT_STOP"], "w").close()  # started: the traps are set
    for _ in range(1200):
        if os.path.exists(stop):
            print("error: pretrain: stopped on request at step 7; rerun resumes", file=sys.stderr)
            sys.exit(75)
        time.sleep(0.05)
    sys.exit(1)
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
        fake = FAKE_LLAMAGENE.format(python=sys.executable, no_plan=NO_PLAN)
        _write_exe(self.bin / "llamagene", fake)
        (tmp / "my runs").mkdir()
        self.pipeline = tmp / "my runs" / "pipeline.yaml"
        self.pipeline.write_text("run_dir: out\nstages: {}\n")
        self.record = tmp / "record.json"
        self.env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
        self.env["PATH"] = f"{self.bin}:/usr/bin:/bin"
        self.env["FAKE_RECORD"] = str(self.record)
        self.env["FAKE_PLAN_RECORD"] = str(tmp / "plan.json")
        self.env["FAKE_SBATCH_LOG"] = str(tmp / "sbatch.log")
        self.env["FAKE_SCONTROL_LOG"] = str(tmp / "scontrol.log")

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


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _first_free(port: int, wrap: bool = False) -> int:
    """The port launch.sh picks from ``port``: it or the next one nothing listens on."""
    while _port_in_use(port):
        port = 20000 + (port - 19999) % 10000 if wrap else port + 1
    return port


def _no_plan(lines: list[str]) -> list[str]:
    """The dry run's lines after its first, which says the stand-in had no `llamagene plan`."""
    assert lines[0] == f"# plan: unavailable (llamagene plan exited with status 2: {NO_PLAN})"
    return lines[1:]


# --- this machine -------------------------------------------------------------------------------


def test_local_two_cpu_processes(sandbox: Env) -> None:
    lines = sandbox.ok("--local", "--nproc", "2", "--dry-run", "my runs/pipeline.yaml", "pretrain")
    assert _no_plan(lines) == [
        "# 2 process(es) on this machine, 0 GPU(s) seen",
        f"export OMP_NUM_THREADS={max(1, _cores() // 2)}",
        "export DS_ACCELERATOR=cpu",
        f"llamagene run '{sandbox.pipeline}' --only pretrain --launcher '{TORCHRUN_2}' "
        "--processes 2",
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
    assert _no_plan(lines) == [
        "# 2 process(es) on this machine, 0 GPU(s) seen",
        f"source {sandbox.tmp}/env.sh",
        f"llamagene run '{sandbox.pipeline}' pretrain.max_steps=10 'pretrain.note=a b' "
        f"--only pretrain --launcher '{TORCHRUN_2}' --processes 2 --force",
    ]


def test_local_one_cpu_process_runs_in_the_orchestrator(sandbox: Env) -> None:
    lines = sandbox.ok("--local", "--dry-run", str(sandbox.pipeline), "merge_vocab")
    assert _no_plan(lines) == [
        "# 1 process(es) on this machine, 0 GPU(s) seen",
        f"export OMP_NUM_THREADS={_cores()}",
        "export DS_ACCELERATOR=cpu",
        f"llamagene run '{sandbox.pipeline}' --only merge_vocab --processes 1",
    ]


def test_local_defaults_to_one_process_per_gpu(sandbox: Env) -> None:
    lines = sandbox.ok("--local", "--dry-run", str(sandbox.pipeline), "pretrain", FAKE_GPUS="4")
    assert _no_plan(lines) == [
        "# 4 process(es) on this machine, 4 GPU(s) seen",
        f"llamagene run '{sandbox.pipeline}' --only pretrain "
        "--launcher 'torchrun --standalone --nnodes 1 --nproc_per_node 4' --processes 4",
    ]
    lines = sandbox.ok(
        "--local",
        "--dry-run",
        str(sandbox.pipeline),
        "pretrain",
        FAKE_GPUS="4",
        CUDA_VISIBLE_DEVICES="1,3",
    )
    assert lines[1] == "# 2 process(es) on this machine, 2 GPU(s) seen"
    assert lines[-1].endswith("--nproc_per_node 2' --processes 2")


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
    assert _no_plan(lines)[1:] == [
        f"export OMP_NUM_THREADS={max(1, _cores() // 2)}",
        "export DS_ACCELERATOR=cpu",
        f"llamagene run '{sandbox.pipeline}' --only pretrain --launcher 'deepspeed "
        f"--no_local_rank --num_gpus 2 --master_port {_first_free(29500)}' --processes 2",
    ]


def test_local_deepspeed_port_steps_past_one_in_use(sandbox: Env) -> None:
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 29500))
        except OSError:
            pytest.skip("port 29500 is taken here")
        busy.listen()
        lines = sandbox.ok(
            "--local", "--launcher", "deepspeed", "--dry-run", str(sandbox.pipeline), "pretrain"
        )
        port = _first_free(29501)
    assert f"--master_port {port}'" in lines[-1]
    lines = sandbox.ok(
        "--local", "--launcher", "deepspeed", "--master-port", "29500", "--dry-run",
        str(sandbox.pipeline), "pretrain",
    )  # fmt: skip
    assert "--master_port 29500'" in lines[-1]  # given: used as it is


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
    assert _no_plan(lines) == [
        "# 1 process(es) on this machine, 0 GPU(s) seen",
        f"source {sandbox.tmp}/env.sh",
        f"llamagene run '{sandbox.pipeline}' --only pretrain --launcher 'deepspeed --no_local_rank "
        f"--hostfile {hosts} --master_port 29500 --num_nodes 2 --venv_script {sandbox.tmp}/env.sh' "
        "--processes 16",
    ]


@pytest.mark.parametrize(
    ("args", "processes"),
    [
        ([], 14),
        (["--nodes", "2"], 12),
        (["--nproc", "3"], 9),
        (["--nodes", "1", "--nproc", "2"], 2),
    ],
)
def test_deepspeed_hostfile_processes(sandbox: Env, args: list[str], processes: int) -> None:
    """DeepSpeed starts each host's slots (or --num_gpus each) on the first --num_nodes hosts."""
    (sandbox.tmp / "hosts").write_text("# the cluster\na slots=8\n\nb slots=4  # half\nc slots=2")
    lines = sandbox.ok("--hostfile", "hosts", *args, "--dry-run", str(sandbox.pipeline), "pretrain")
    assert lines[-1].endswith(f" --processes {processes}")


def test_python_dash_m_when_llamagene_is_not_on_path(sandbox: Env) -> None:
    (sandbox.bin / "llamagene").unlink()
    lines = sandbox.ok("--local", "--dry-run", str(sandbox.pipeline), "pretrain")
    assert lines[0].startswith("# plan: unavailable (llamagene plan exited with status ")
    assert lines[-1].startswith("python3 -m llamagene run ")
    lines = sandbox.ok(
        "--local", "--dry-run", str(sandbox.pipeline), "pretrain", PYTHON="/opt/py 3/python"
    )
    assert lines[0].startswith("# plan: unavailable (llamagene plan exited with status 127: ")
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
        "run", str(sandbox.pipeline), "a.b=1", "--only", "pretrain", "--launcher", TORCHRUN_2,
        "--processes", "2",
    ]  # fmt: skip
    assert record["env"] == {
        "OMP_NUM_THREADS": str(max(1, _cores() // 2)),
        "DS_ACCELERATOR": "cpu",
        "LLAMAGENE_LAUNCHER": None,
        "FROM_ENV_FILE": "yes",
        "LLAMAGENE_STOP_FILE": None,
    }
    assert not (sandbox.tmp / "plan.json").exists()  # no plan without --dry-run


def test_slurm_only_options_are_ignored_here_with_a_note(sandbox: Env) -> None:
    out = sandbox.run(
        "--local", "--prepare-job", "--no-requeue", "--signal-lead", "300", "--dry-run",
        str(sandbox.pipeline), "pretrain",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for option in ("--prepare-job", "--no-requeue", "--signal-lead"):
        assert f"launch.sh: {option} is for SLURM jobs: ignored here" in out.stderr


# --- the batch plan -----------------------------------------------------------------------------


def test_dry_run_prints_the_batch_plan_as_comments(sandbox: Env) -> None:
    plan = "processes 32, micro batch 4, accumulation 2\n\nsteps 61035, tokens per step 131072"
    lines = sandbox.ok(
        "--nodes", "4", "--dry-run", str(sandbox.pipeline), "pretrain", "x.y=a b", FAKE_PLAN=plan
    )
    assert lines[:5] == [
        f"# batch plan (llamagene plan '{sandbox.pipeline}' --stage pretrain --gpus 32 'x.y=a b'):",
        "#   processes 32, micro batch 4, accumulation 2",
        "#",
        "#   steps 61035, tokens per step 131072",
        f"# sbatch script {_script_paths(lines)[0]}:",
    ]
    assert json.loads((sandbox.tmp / "plan.json").read_text()) == [
        "plan", str(sandbox.pipeline), "--stage", "pretrain", "--gpus", "32", "x.y=a b"
    ]  # fmt: skip
    lines = sandbox.ok("--local", "--nproc", "2", "--dry-run", str(sandbox.pipeline), "pretrain",
                       FAKE_PLAN="processes 2")  # fmt: skip
    assert lines[:2] == [
        f"# batch plan (llamagene plan '{sandbox.pipeline}' --stage pretrain --gpus 2):",
        "#   processes 2",
    ]


def test_dry_run_plan_runs_after_the_env_file(sandbox: Env) -> None:
    """The env file (which may activate the venv that has llamagene) is sourced first; what it
    prints does not end up in the plan."""
    (sandbox.bin / "llamagene").rename(sandbox.tmp / "llamagene")
    (sandbox.tmp / "venv" / "bin").mkdir(parents=True)
    (sandbox.tmp / "llamagene").rename(sandbox.tmp / "venv" / "bin" / "llamagene")
    (sandbox.tmp / "env.sh").write_text(
        f'echo "module loaded"\nexport PATH="{sandbox.tmp}/venv/bin:$PATH"\n'
    )
    lines = sandbox.ok(
        "--env", "env.sh", "--dry-run", str(sandbox.pipeline), "pretrain", FAKE_PLAN="steps 10"
    )
    assert lines[1] == "#   steps 10"


def test_dry_run_without_a_plan_goes_on(sandbox: Env) -> None:
    lines = sandbox.ok("--dry-run", str(sandbox.pipeline), "pretrain")
    assert lines[1].startswith("# sbatch script ")
    assert lines[-1].startswith("sbatch --parsable ")
    (sandbox.bin / "llamagene").write_text("#!/bin/bash\necho 'half a plan'\nexit 1\n")
    lines = sandbox.ok("--dry-run", str(sandbox.pipeline), "pretrain")
    assert lines[0] == "# plan: unavailable (llamagene plan exited with status 1)"


# --- SLURM --------------------------------------------------------------------------------------


def _script_paths(lines: list[str]) -> list[str]:
    return [line[16:-1] for line in lines if line.startswith("# sbatch script ")]


def _job_script(lines: list[str], which: int = -1) -> str:
    """The text of a script of a dry run: the last (the GPU job) by default."""
    starts = [i for i, line in enumerate(lines) if line.startswith("# sbatch script ")]
    start = starts[which] + 1
    return "\n".join(lines[start : lines.index("# end of the sbatch script", start)]) + "\n"


def test_slurm_single_node_defaults(sandbox: Env) -> None:
    lines = _no_plan(sandbox.ok("--dry-run", str(sandbox.pipeline), "pretrain"))
    job_dir = sandbox.tmp / "slurm"
    assert _sbatch_lines(lines) == [
        "#SBATCH --job-name=llamagene-pretrain",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=64",  # 8 per process
        "#SBATCH --mem=256G",  # 32G per process
        f"#SBATCH --output={job_dir}/%x-%j.out",
        "#SBATCH --open-mode=append",  # a requeued run adds to the log
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@600",
    ]
    assert lines[1] == "#!/bin/bash"
    assert re.fullmatch(
        rf"# sbatch script {job_dir}/llamagene-pretrain-\d{{8}}-\d{{6}}\.sbatch:", lines[0]
    )
    assert _line(lines, "LAUNCHER=") == (f'LAUNCHER="{SRUN_TORCHRUN.format(cpus=64, procs=8)}"')
    assert _line(lines, "PROCESSES=") == "PROCESSES=$((SLURM_NNODES * 8))"
    assert _line(lines, "MASTER_PORT=$") == "MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))"
    assert _line(lines, "HEAD=") == "HEAD=${NODES[0]}"
    assert _line(lines, "export LLAMAGENE_STOP_FILE=") == (
        f"export LLAMAGENE_STOP_FILE={job_dir}/llamagene-pretrain-$SLURM_JOB_ID.stop"
    )
    assert _line(lines, '"${LLAMAGENE[@]}" ') == (
        f"\"${{LLAMAGENE[@]}}\" run '{sandbox.pipeline}' --only pretrain "
        '--launcher "$LAUNCHER" --processes "$PROCESSES" &'
    )
    assert lines[-3:] == [
        "# submitted with:",
        f"mkdir -p {job_dir}",
        f"sbatch --parsable {lines[0][16:-1]}",
    ]
    assert not job_dir.exists()  # a dry run writes nothing


def test_slurm_multi_node_every_option(sandbox: Env) -> None:
    (sandbox.tmp / "env.sh").write_text("module load cuda/12.4\nsource /opt/venv/bin/activate")
    lines = sandbox.ok(
        "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu", "--account", "proj",
        "--time", "24:00:00", "--job-name", "pt", "--cpus-per-task", "48", "--mem", "0",
        "--sbatch-arg=--exclusive", "--sbatch-arg", "--constraint=a100", "--master-port", "29600",
        "--signal-lead", "900", "--env", "env.sh", "--dry-run", str(sandbox.pipeline), "pretrain",
        "--force", "x.y=2",
        LLAMAGENE_JOB_DIR="jobs/",
    )  # fmt: skip
    job_dir = sandbox.tmp / "jobs"
    assert _sbatch_lines(lines) == [
        "#SBATCH --job-name=pt",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=48",
        "#SBATCH --mem=0",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --time=24:00:00",
        f"#SBATCH --output={job_dir}/%x-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@900",
        "#SBATCH --exclusive",
        "#SBATCH --constraint=a100",
    ]
    env_at = lines.index(f"# --- {sandbox.tmp}/env.sh (copied by --env) ---")
    assert lines[env_at + 1 : env_at + 4] == [
        "module load cuda/12.4",
        "source /opt/venv/bin/activate",
        f"# --- end of {sandbox.tmp}/env.sh ---",
    ]
    assert _line(lines, "MASTER_PORT=") == "MASTER_PORT=29600"
    assert not any(line.startswith("for _ in") for line in lines)  # no search for a free port
    launcher = SRUN_TORCHRUN.format(cpus=48, procs=8)
    assert _line(lines, "LAUNCHER=") == f'LAUNCHER="{launcher}"'
    assert _line(lines, '"${LLAMAGENE[@]}" ') == (
        f"\"${{LLAMAGENE[@]}}\" run '{sandbox.pipeline}' x.y=2 --only pretrain "
        '--launcher "$LAUNCHER" --processes "$PROCESSES" --force &'
    )
    assert re.fullmatch(
        rf"sbatch --parsable {job_dir}/llamagene-pretrain-[\d-]+\.sbatch", lines[-1]
    )


@pytest.mark.parametrize(
    ("args", "cpus", "mem"),
    [
        (["--nproc", "1"], 8, "128G"),  # 32G per process, at least 128G
        (["--nproc", "6"], 48, "192G"),
        (["--gpus-per-node", "16"], 64, "512G"),  # 8 CPUs per process, at most 64
        (["--gpus-per-node", "0", "--nproc", "2"], 16, "128G"),
        (["--cpus-per-task", "12", "--mem", "100G"], 12, "100G"),
    ],
)
def test_slurm_cpu_and_memory_defaults(sandbox: Env, args: list[str], cpus: int, mem: str) -> None:
    lines = sandbox.ok(*args, "--dry-run", str(sandbox.pipeline), "pretrain")
    assert f"#SBATCH --cpus-per-task={cpus}" in lines
    assert f"#SBATCH --mem={mem}" in lines
    assert f" --cpus-per-task={cpus} --kill-on-bad-exit=1 torchrun " in _line(lines, "LAUNCHER=")


@pytest.mark.parametrize(
    "limit", ["11", "10:01", "0:10:01", "1-0", "2-12:00", "3-0:0:1", "UNLIMITED"]
)
def test_time_limits_longer_than_the_signal_lead(sandbox: Env, limit: str) -> None:
    lines = sandbox.ok("--time", limit, "--dry-run", str(sandbox.pipeline), "pretrain")
    assert f"#SBATCH --time={limit}" in lines


def test_slurm_nproc_sets_gpus_per_node(sandbox: Env) -> None:
    lines = sandbox.ok("--nproc", "4", "--dry-run", str(sandbox.pipeline), "finetune")
    assert "#SBATCH --gpus-per-node=4" in lines
    assert _line(lines, "LAUNCHER=") == f'LAUNCHER="{SRUN_TORCHRUN.format(cpus=32, procs=4)}"'


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
    assert _line(lines, "printf '%s") == 'printf \'%s slots=8\\n\' "${NODES[@]}" >"$HOSTFILE"'
    assert _line(lines, "VENV_SCRIPT=") == (
        f"VENV_SCRIPT={job_dir}/llamagene-pretrain-$SLURM_JOB_ID.env.sh"
    )
    assert _line(lines, "LAUNCHER=") == (
        'LAUNCHER="deepspeed --no_local_rank --num_nodes $SLURM_NNODES --num_gpus 8 '
        "--master_addr $HEAD --master_port $MASTER_PORT --hostfile $HOSTFILE "
        '--venv_script $VENV_SCRIPT"'
    )
    assert _line(lines, "PROCESSES=") == "PROCESSES=$((SLURM_NNODES * 8))"


def test_slurm_deepspeed_single_node_needs_no_hostfile(sandbox: Env) -> None:
    lines = sandbox.ok("--launcher=deepspeed", "--dry-run", str(sandbox.pipeline), "pretrain")
    assert not any(line.startswith("HOSTFILE=") for line in lines)
    assert _line(lines, "LAUNCHER=") == (
        'LAUNCHER="deepspeed --no_local_rank --num_gpus 8 --master_port $MASTER_PORT"'
    )
    assert _line(lines, "PROCESSES=") == "PROCESSES=8"


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
    assert (sandbox.tmp / "sbatch.log").read_text() == f"--parsable {scripts[0]}\n"
    assert not (sandbox.tmp / "plan.json").exists()  # no plan without --dry-run
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
    port = _first_free(24242, wrap=True)
    record = json.loads(sandbox.record.read_text())
    assert record["argv"] == [
        "run", str(sandbox.pipeline), "--only", "pretrain", "--launcher",
        "srun --nodes=2 --ntasks-per-node=1 --cpus-per-task=64 --kill-on-bad-exit=1 torchrun "
        "--nnodes 2 --nproc_per_node 8 --rdzv_id 4242 --rdzv_backend c10d "
        f"--rdzv_endpoint gpu07:{port}",
        "--processes", "16",
    ]  # fmt: skip
    stop_file = f"{sandbox.tmp}/slurm/llamagene-pretrain-4242.stop"
    assert record["env"]["LLAMAGENE_LAUNCHER"] is None
    assert record["env"]["LLAMAGENE_STOP_FILE"] == stop_file
    assert not (sandbox.tmp / "scontrol.log").exists()  # finished: not requeued
    assert (
        "llamagene: job 4242 (restart 0) on gpu07 gpu08; head node gpu07; 16 processes; "
        in job.stdout
    )


# --- the port -----------------------------------------------------------------------------------


def _write_job(sandbox: Env, lines: list[str]) -> Path:
    script = sandbox.tmp / "job.sbatch"
    script.write_text(_job_script(lines))
    return script


def _run_job(
    sandbox: Env, script: Path, job_id: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """The job script on one fake node, as SLURM runs it."""
    slurm = {"SLURM_JOB_NODELIST": "n1", "SLURM_NNODES": "1", "SLURM_JOB_ID": job_id}
    return subprocess.run(
        ["bash", str(script)],
        env={**sandbox.env, **slurm, "FAKE_NODES": "n1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _endpoint_port(sandbox: Env) -> int:
    launcher = json.loads(sandbox.record.read_text())["argv"][5]
    return int(launcher.rsplit(":", 1)[1])


def test_slurm_port_comes_from_the_job_id_and_skips_ports_in_use(sandbox: Env) -> None:
    _write_exe(sandbox.bin / "scontrol", FAKE_SCONTROL)
    lines = sandbox.ok("--nproc", "1", "--dry-run", str(sandbox.pipeline), "pretrain")
    assert "29500" not in "\n".join(lines)
    script = _write_job(sandbox, lines)
    with socket.socket() as busy:
        for offset in range(9000, 9990):  # a port of 29000-29989 that is free, then taken
            try:
                busy.bind(("127.0.0.1", 20000 + offset))
                break
            except OSError:
                continue
        else:
            pytest.skip("no free port in 29000-29989")
        busy.listen()
        # job ids 10000 apart share the port; the one in use is stepped past
        job = _run_job(sandbox, script, str(10000 * 7 + offset))
        assert job.returncode == 0, job.stderr
        assert _endpoint_port(sandbox) == _first_free(20000 + offset + 1, wrap=True)
    job = _run_job(sandbox, script, "19999")  # 29999 is the last of the range
    assert job.returncode == 0, job.stderr
    assert _endpoint_port(sandbox) in (29999, _first_free(20000, wrap=True))


# --- stop, requeue, resume ----------------------------------------------------------------------


def _start_job(sandbox: Env, script: Path, **env: str) -> subprocess.Popen[str]:
    """The job script, as SLURM runs it, with a llamagene that trains until it is told to stop."""
    started = sandbox.tmp / "started"
    started.unlink(missing_ok=True)
    slurm = {"SLURM_JOB_NODELIST": "n1", "SLURM_NNODES": "1", "SLURM_JOB_ID": "77"}
    job = subprocess.Popen(
        ["bash", str(script)],
        env={**sandbox.env, **slurm, "FAKE_NODES": "n1", "FAKE_WAIT_STOP": str(started), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not started.exists():
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "llamagene did not start"
        time.sleep(0.05)
    return job


def _job_from_dry_run(sandbox: Env, *args: str) -> tuple[Path, Path]:
    _write_exe(sandbox.bin / "scontrol", FAKE_SCONTROL)
    lines = sandbox.ok(*args, "--dry-run", str(sandbox.pipeline), "pretrain")
    return _write_job(sandbox, lines), sandbox.tmp / "slurm" / "llamagene-pretrain-77.stop"


def test_usr1_checkpoints_requeues_and_the_rerun_resumes(sandbox: Env) -> None:
    """SLURM's USR1 (--signal=B:USR1@600) to the batch shell: the stop file appears, llamagene
    stops at a checkpoint (status 75), the job requeues itself and ends with 0; the requeued run
    of the same script clears the stop file and runs the same command again."""
    script, stop_file = _job_from_dry_run(sandbox, "--nproc", "1")
    job = _start_job(sandbox, script)
    job.send_signal(signal.SIGUSR1)
    stdout, stderr = job.communicate(timeout=60)
    assert job.returncode == 0, stderr
    assert stop_file.exists()
    assert (sandbox.tmp / "scontrol.log").read_text() == "requeue 77\n"
    assert "llamagene: SIGUSR1: the workers checkpoint at their next step and stop" in stderr
    assert "stopped on request at step 7; rerun resumes" in stderr
    assert "job 77 requeued" in stdout
    first = json.loads(sandbox.record.read_text())

    # the requeued job: the same script, SLURM_RESTART_COUNT=1; this time training finishes
    rerun = _run_job(sandbox, script, "77", SLURM_RESTART_COUNT="1")
    assert rerun.returncode == 0, rerun.stderr
    second = json.loads(sandbox.record.read_text())
    assert second["argv"] == first["argv"]  # the same command: the stage resumes
    assert second["stop_file_at_start"] is False and not stop_file.exists()
    assert "(restart 1)" in rerun.stdout
    assert (sandbox.tmp / "scontrol.log").read_text() == "requeue 77\n"  # not again


@pytest.mark.parametrize(
    ("extra", "sig", "said"),
    [
        ((), signal.SIGTERM, "not requeued; resubmit this file to resume"),
        (("--no-requeue",), signal.SIGUSR1,
         "stopped at a checkpoint (--no-requeue); resubmit this file to resume"),
    ],
    ids=["term-never-requeues", "no-requeue"],
)  # fmt: skip
def test_a_stop_that_is_not_requeued(
    sandbox: Env, extra: tuple[str, ...], sig: signal.Signals, said: str
) -> None:
    """SIGTERM (a cancelled job) and --no-requeue stop at a checkpoint without a requeue."""
    script, stop_file = _job_from_dry_run(sandbox, "--nproc", "1", *extra)
    if extra:
        text = script.read_text()
        assert "#SBATCH --no-requeue\n" in text and "#SBATCH --requeue\n" not in text
    job = _start_job(sandbox, script)
    job.send_signal(sig)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 75
    assert stop_file.exists()
    assert not (sandbox.tmp / "scontrol.log").exists()
    assert said in stderr


def test_a_failed_run_is_not_requeued(sandbox: Env) -> None:
    _write_exe(sandbox.bin / "llamagene", "#!/bin/bash\nexit 3\n")
    script, _ = _job_from_dry_run(sandbox, "--nproc", "1")
    job = _run_job(sandbox, script, "77")
    assert job.returncode == 3
    assert not (sandbox.tmp / "scontrol.log").exists()


# --- the CPU preparation job --------------------------------------------------------------------


def test_prepare_job_dry_run(sandbox: Env) -> None:
    lines = _no_plan(
        sandbox.ok(
            "--prepare-job", "--nodes", "4", "--partition", "gpu", "--account", "proj",
            "--time", "48:00:00", "--sbatch-arg=--exclusive", "--dry-run",
            str(sandbox.pipeline), "pretrain", "x.y=2",
        )
    )  # fmt: skip
    job_dir = sandbox.tmp / "slurm"
    prepare, gpu = _script_paths(lines)
    assert re.fullmatch(rf"{job_dir}/llamagene-pretrain-prepare-[\d-]+\.sbatch", prepare)
    assert re.fullmatch(rf"{job_dir}/llamagene-pretrain-[\d-]+\.sbatch", gpu)
    prepare_lines = _job_script(lines, 0).splitlines()
    assert _sbatch_lines(prepare_lines) == [
        "#SBATCH --job-name=llamagene-pretrain-prepare",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=64G",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --time=48:00:00",
        f"#SBATCH --output={job_dir}/%x-%j.out",
    ]  # no GPUs, no requeue, not --exclusive
    assert prepare_lines[-1] == (
        f"exec \"${{LLAMAGENE[@]}}\" prepare '{sandbox.pipeline}' --stage pretrain x.y=2"
    )
    assert "#SBATCH --nodes=4" in _job_script(lines).splitlines()
    assert lines[-4:] == [
        "# submitted with:",
        f"mkdir -p {job_dir}",
        f"PREPARE_JOB=$(sbatch --parsable {prepare})",
        "sbatch --parsable --dependency=afterok:${PREPARE_JOB%%;*} --kill-on-invalid-dep=yes "
        f"{gpu}",
    ]


def test_prepare_job_options(sandbox: Env) -> None:
    lines = sandbox.ok(
        "--prepare-job", "--prepare-cpus", "32", "--prepare-mem", "120G", "--partition", "gpu",
        "--prepare-partition", "cpu", "--prepare-time", "6:00:00", "--time", "48:00:00",
        "--dry-run", str(sandbox.pipeline), "pretrain",
    )  # fmt: skip
    prepare_lines = _job_script(lines, 0).splitlines()
    for line in ("--cpus-per-task=32", "--mem=120G", "--partition=cpu", "--time=6:00:00"):
        assert f"#SBATCH {line}" in prepare_lines
    gpu_lines = _job_script(lines).splitlines()
    assert "#SBATCH --partition=gpu" in gpu_lines and "#SBATCH --time=48:00:00" in gpu_lines


def test_prepare_job_submits_two_jobs_and_its_script_runs_llamagene_prepare(
    sandbox: Env,
) -> None:
    _write_exe(sandbox.bin / "sbatch", FAKE_SBATCH)
    out = sandbox.run("--prepare-job", str(sandbox.pipeline), "finetune", "a=1")
    assert out.returncode == 0, out.stderr
    job_dir = sandbox.tmp / "slurm"
    (prepare,) = job_dir.glob("llamagene-finetune-prepare-*.sbatch")
    (gpu,) = set(job_dir.glob("llamagene-finetune-*.sbatch")) - {prepare}
    assert (sandbox.tmp / "sbatch.log").read_text().splitlines() == [
        f"--parsable {prepare}",
        f"--parsable --dependency=afterok:4242 --kill-on-invalid-dep=yes {gpu}",
    ]
    assert out.stdout.splitlines() == [
        f"submitted job 4242: {prepare}",
        f"log: {job_dir}/llamagene-finetune-prepare-4242.out",
        f"submitted job 4243: {gpu}",
        f"log: {job_dir}/llamagene-finetune-4243.out",
    ]
    job = subprocess.run(
        ["bash", str(prepare)],
        cwd="/",
        env={**sandbox.env, "SLURM_JOB_ID": "4242"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, job.stderr
    record = json.loads(sandbox.record.read_text())
    assert record["argv"] == ["prepare", str(sandbox.pipeline), "--stage", "finetune", "a=1"]


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
    assert json.loads(sandbox.record.read_text())["argv"][-2:] == ["--processes", "2"]


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
    stop_file = sandbox.tmp / "slurm" / "llamagene-pretrain-8.stop"
    assert (sandbox.tmp / "slurm" / "llamagene-pretrain-8.env.sh").read_text() == (
        f"source {sandbox.tmp}/env.sh\nexport LLAMAGENE_STOP_FILE={stop_file}\n"
    )
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
        (["--signal-lead", "0", "P", "pretrain"], "--signal-lead must be at least 1"),
        (["--signal-lead", "10m", "P", "pretrain"], "--signal-lead needs a whole number"),
        (
            ["--prepare-cpus", "8", "P", "pretrain"],
            "--prepare-cpus is for the job of --prepare-job",
        ),
        (["--prepare-job", "--prepare-cpus", "0", "P", "pretrain"], "must be at least 1"),
        (["--prepare-job", "--prepare-mem", "6 G", "P", "pretrain"], "may not contain blanks"),
        (["--no-requeue=1", "P", "pretrain"], "--no-requeue takes no value"),
        (
            ["--time", "5:00", "P", "pretrain"],
            "--time 5:00 is not longer than --signal-lead (600 s)",
        ),
        (["--time", "10", "P", "pretrain"], "--time 10 is not longer than --signal-lead (600 s)"),
        (["--time", "0-0:10", "P", "pretrain"], "--time 0-0:10 is not longer than --signal-lead"),
        (["--time", "1:00:00", "--signal-lead", "3600", "P", "pretrain"], "is not longer than"),
    ],
)
def test_argument_errors_exit_2(sandbox: Env, args: list[str], message: str) -> None:
    args = [str(sandbox.pipeline) if a == "P" else a for a in args]
    out = sandbox.run(*args, "--dry-run")
    assert out.returncode == 2
    assert message in out.stderr
    assert out.stdout == ""


def test_a_hostfile_line_without_slots_is_an_error(sandbox: Env) -> None:
    (sandbox.tmp / "hosts").write_text("a slots=8\nb\n")
    out = sandbox.run("--hostfile", "hosts", "--dry-run", str(sandbox.pipeline), "pretrain")
    assert out.returncode == 2
    assert "hosts: expected lines 'host slots=N', not 'b'" in out.stderr
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
    for option in ("--signal-lead", "--no-requeue", "--prepare-job", "--prepare-cpus"):
        assert option in out.stdout


# --- the script itself --------------------------------------------------------------------------


def test_bash_syntax() -> None:
    subprocess.run(["bash", "-n", str(LAUNCH)], check=True)
    assert os.access(LAUNCH, os.X_OK)


def test_shellcheck(sandbox: Env) -> None:
    """launch.sh and the job scripts it writes."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    out = subprocess.run(["shellcheck", str(LAUNCH)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    for args in ([], ["--launcher", "deepspeed", "--nodes", "2", "--gpus-per-node", "0"]):
        lines = sandbox.ok(*args, "--prepare-job", "--dry-run", str(sandbox.pipeline), "pretrain")
        for which in (0, -1):
            script = sandbox.tmp / "job.sbatch"
            script.write_text(_job_script(lines, which))
            out = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
            assert out.returncode == 0, out.stdout
