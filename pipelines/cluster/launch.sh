#!/usr/bin/env bash
# Launch one stage of a llamagene pipeline on this machine or as a SLURM batch job.
# See pipelines/cluster/README.md; `launch.sh --help` for the options.
set -euo pipefail

PROG=${0##*/}

usage() {
    cat <<EOF
usage: $PROG [options] PIPELINE.yaml STAGE [key=value ...]

Run \`llamagene run PIPELINE.yaml --only STAGE --processes N\` with a launcher for the training
workers: on this machine (--local, or --hostfile), or as a SLURM batch job (the default). The
orchestrator runs once (on the first node); the training stages (pretrain, finetune) start
their workers through the launcher; other stages ignore it.

where:
  --local                 run on this machine (no SLURM)
  --hostfile FILE         with --launcher deepspeed: run here with DeepSpeed's launcher over the
                          hosts in FILE (lines "host slots=N"; multi-node without SLURM, via ssh)
  --dry-run               print the batch plan (\`llamagene plan\`), the exact commands and the
                          sbatch scripts without running or submitting anything

how many:
  --nproc N               processes per node (default: --gpus-per-node with SLURM, else the
                          number of GPUs here, else 1)
  --nodes N               SLURM nodes (default 1); with --hostfile: DeepSpeed's --num_nodes
  --gpus-per-node N       GPUs per SLURM node (default: --nproc if given, else 8; 0: CPU nodes)
  --launcher NAME         torchrun (default) or deepspeed
  --master-port PORT      rendezvous port on the head node (default: SLURM: 20000 + job id
                          mod 10000, stepped past ports in use; here: the first free from 29500)

SLURM job:
  --partition P  --account A  --time HH:MM:SS  --job-name NAME
  --cpus-per-task N       CPUs per node (default: 8 per process, at most 64)
  --mem M                 memory per node (default: 32G per process, at least 128G; 0: the
                          whole node)
  --sbatch-arg ARG        one more #SBATCH line, e.g. --sbatch-arg=--exclusive (repeatable)
  --signal-lead SECONDS   SLURM sends USR1 this long before the time limit (default 600): the
                          workers checkpoint at their next step, stop, and the job requeues
                          itself and resumes
  --no-requeue            on USR1 checkpoint and stop, but do not requeue (resubmit yourself)
                          job scripts and logs: \${LLAMAGENE_JOB_DIR:-./slurm}

CPU preparation job (SLURM):
  --prepare-job           first submit a CPU-only job running \`llamagene prepare\` (the stale
                          upstream stages, the tokenized corpus); the GPU job waits for it
                          (--dependency=afterok)
  --prepare-cpus N        its CPUs (default 16)
  --prepare-mem M         its memory (default 64G)
  --prepare-partition P   its partition (default: --partition)
  --prepare-time T        its time limit (default: --time)

both:
  --env FILE              a bash file sourced before running (module loads, venv activation);
                          copied into the sbatch scripts
  --force                 passed to llamagene run: re-run the stage even if up to date
  -h, --help              this text

examples:
  $PROG --local --nproc 2 pipelines/demo/pipeline.yaml pretrain pretrain.max_steps=10
  $PROG --nodes 2 --partition gpu --time 24:00:00 --env env.sh PIPELINE.yaml pretrain
  $PROG --dry-run --prepare-job --nodes 4 --time 48:00:00 PIPELINE.yaml pretrain
  $PROG --launcher deepspeed --hostfile hosts.txt PIPELINE.yaml pretrain
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$1" >&2
    if [[ ${2:-} == usage ]]; then
        printf "try '%s --help'\n" "$PROG" >&2
    fi
    exit 2
}

note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# One word, quoted for bash only where needed: 'a b' stays readable where printf %q writes a\ b.
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

quote_all() {
    local out=() word
    for word in "$@"; do
        out+=("$(quote "$word")")
    done
    printf '%s' "${out[*]}"
}

int_arg() { # NAME VALUE MIN: VALUE as a decimal integer >= MIN, or exit 2
    [[ $2 =~ ^[0-9]+$ ]] || die "$1 needs a whole number, not '$2'" usage
    local n=$((10#$2))
    ((n >= $3)) || die "$1 must be at least $3, not $2" usage
    printf '%s' "$n"
}

abs_path() { # an absolute path, symlinks kept (relative paths in a pipeline file are its folder's)
    local dir
    dir=$(cd "$(dirname -- "$1")" && pwd) || die "cannot resolve $1"
    printf '%s/%s' "${dir%/}" "$(basename -- "$1")"
}

count_gpus() { # the GPUs nvidia-smi lists, narrowed by CUDA_VISIBLE_DEVICES when it is set
    local n=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        n=$(timeout 60 nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    fi
    if ((n > 0)) && [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
        local visible=()
        IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
        if [[ -z $CUDA_VISIBLE_DEVICES || ${visible[0]:-} == -* ]]; then
            n=0
        elif ((${#visible[@]} < n)); then
            n=${#visible[@]}
        fi
    fi
    printf '%s' "$n"
}

no_blanks() { # NAME VALUE: a value that goes into the launcher string, which is split on blanks
    [[ $2 =~ ^[^[:space:]\'\"\\]+$ ]] || die "$1 may not contain blanks or quotes: $2"
}

slurm_seconds() { # TIME: SLURM's time limit in seconds (nothing for a form it does not know):
    # minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]
    local d=0 h=0 m=0 s=0 r
    if [[ $1 =~ ^([0-9]+)-([0-9]+)(:([0-9]+)(:([0-9]+))?)?$ ]]; then
        r=("${BASH_REMATCH[@]}")
        d=${r[1]} h=${r[2]} m=${r[4]:-0} s=${r[6]:-0}
    elif [[ $1 =~ ^([0-9]+):([0-9]+):([0-9]+)$ ]]; then
        h=${BASH_REMATCH[1]} m=${BASH_REMATCH[2]} s=${BASH_REMATCH[3]}
    elif [[ $1 =~ ^([0-9]+)(:([0-9]+))?$ ]]; then
        m=${BASH_REMATCH[1]} s=${BASH_REMATCH[3]:-0}
    else
        return 0
    fi
    printf '%s' $((((10#$d * 24 + 10#$h) * 60 + 10#$m) * 60 + 10#$s))
}

port_in_use() { # PORT: something listens on it on this machine
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

first_free_port() { # START: START, or the first port after it that nothing here listens on
    local port=$1 tries
    for ((tries = 0; tries < 100; tries++)); do
        port_in_use "$port" || break
        port=$((port + 1))
    done
    printf '%s' "$port"
}

hostfile_processes() { # the workers DeepSpeed starts over $hostfile: the first --nodes hosts,
    # each with its slots (or --nproc each, as DeepSpeed's --num_gpus does)
    local line host slots total=0 hosts=0 _
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%%#*}
        read -r host slots _ <<<"$line"
        [[ -n ${host:-} ]] || continue
        [[ ${slots:-} =~ ^slots=([0-9]+)$ ]] ||
            die "$hostfile: expected lines 'host slots=N', not '$line'"
        if [[ -n $nodes ]] && ((hosts >= nodes)); then
            break
        fi
        hosts=$((hosts + 1))
        if ((procs_given)); then
            total=$((total + procs))
        else
            total=$((total + BASH_REMATCH[1]))
        fi
    done <"$hostfile"
    ((total > 0)) || die "$hostfile lists no hosts"
    printf '%s' "$total"
}

# The batch plan of `llamagene plan` for N processes, as comment lines (run in a subshell, after
# the --env file); a note instead when it cannot be had: a dry run never fails for want of it.
print_plan() { # N
    local err out rc=0 last
    err=$(mktemp)
    out=$(
        exec 2>"$err" </dev/null
        if [[ -n $env_file ]]; then
            set +u
            # shellcheck disable=SC1090
            source "$env_file" >&2 # what it says is not the plan
            set -u
        fi
        llamagene=(llamagene)
        command -v llamagene >/dev/null 2>&1 || llamagene=("${PYTHON:-python3}" -m llamagene)
        limit=()
        ! command -v timeout >/dev/null 2>&1 || limit=(timeout 300)
        "${limit[@]}" "${llamagene[@]}" plan "$pipeline" --stage "$stage" --gpus "$1" \
            "${overrides[@]}"
    ) || rc=$?
    if ((rc == 0)) && [[ -n $out ]]; then
        echo "# batch plan ($(quote_all llamagene plan "$pipeline" --stage "$stage" --gpus "$1" \
            "${overrides[@]}")):"
        while IFS= read -r last; do
            echo "#${last:+   $last}"
        done <<<"$out"
    else
        last=$(grep -v '^[[:space:]]*$' "$err" | tail -n 1 || true)
        echo "# plan: unavailable (llamagene plan exited with status $rc${last:+: $last})"
    fi
    rm -f -- "$err"
}

# --- arguments ---------------------------------------------------------------------------------

local_mode=0 dry_run=0 force=0 requeue=1 prepare_job=0
procs='' nodes='' gpus_per_node='' launcher_name='' hostfile='' master_port=''
partition='' account='' time_limit='' job_name='' cpus_per_task='' mem='' env_file=''
signal_lead=600 signal_lead_given=0
prepare_cpus='' prepare_mem='' prepare_partition='' prepare_time=''
sbatch_args=() positional=()

while (($#)); do
    arg=$1
    shift
    has_value=0 value=''
    if [[ $arg == --*=* ]]; then
        has_value=1 value=${arg#*=} arg=${arg%%=*}
    fi
    case $arg in
        -h | --help | --local | --dry-run | --force | --no-requeue | --prepare-job)
            ((has_value == 0)) || die "$arg takes no value" usage
            case $arg in
                -h | --help) usage; exit 0 ;;
                --local) local_mode=1 ;;
                --dry-run) dry_run=1 ;;
                --force) force=1 ;;
                --no-requeue) requeue=0 ;;
                --prepare-job) prepare_job=1 ;;
            esac
            ;;
        --nproc | --nodes | --gpus-per-node | --partition | --account | --time | --job-name | \
            --cpus-per-task | --mem | --sbatch-arg | --launcher | --hostfile | --master-port | \
            --env | --signal-lead | --prepare-cpus | --prepare-mem | --prepare-partition | \
            --prepare-time)
            if ((has_value == 0)); then
                (($#)) || die "$arg needs a value" usage
                [[ $1 != --* || $arg == --sbatch-arg ]] || die "$arg needs a value, not $1" usage
                value=$1
                shift
            fi
            [[ -n $value ]] || die "$arg needs a value" usage
            [[ $value != *$'\n'* ]] || die "$arg: the value may not contain a line break" usage
            case $arg in
                --nproc) procs=$(int_arg "$arg" "$value" 1) ;;
                --nodes) nodes=$(int_arg "$arg" "$value" 1) ;;
                --gpus-per-node) gpus_per_node=$(int_arg "$arg" "$value" 0) ;;
                --cpus-per-task) cpus_per_task=$(int_arg "$arg" "$value" 1) ;;
                --master-port)
                    master_port=$(int_arg "$arg" "$value" 1)
                    ((master_port <= 65535)) || die "--master-port must be at most 65535" usage
                    ;;
                --signal-lead)
                    signal_lead=$(int_arg "$arg" "$value" 1) signal_lead_given=1
                    ((signal_lead <= 65535)) || die "--signal-lead must be at most 65535" usage
                    ;;
                --prepare-cpus) prepare_cpus=$(int_arg "$arg" "$value" 1) ;;
                --prepare-mem) prepare_mem=$value ;;
                --prepare-partition) prepare_partition=$value ;;
                --prepare-time) prepare_time=$value ;;
                --partition) partition=$value ;;
                --account) account=$value ;;
                --time) time_limit=$value ;;
                --job-name) job_name=$value ;;
                --mem) mem=$value ;;
                --sbatch-arg) sbatch_args+=("$value") ;;
                --launcher)
                    [[ $value == torchrun || $value == deepspeed ]] ||
                        die "--launcher is torchrun or deepspeed, not '$value'" usage
                    launcher_name=$value
                    ;;
                --hostfile) hostfile=$value ;;
                --env) env_file=$value ;;
            esac
            ;;
        --)
            positional+=("$@")
            break
            ;;
        -*) die "unknown option $arg" usage ;;
        *) positional+=("$arg") ;;
    esac
done

((${#positional[@]} >= 2)) || die "give PIPELINE.yaml and STAGE" usage
pipeline=${positional[0]}
stage=${positional[1]}
overrides=("${positional[@]:2}")

[[ -n $pipeline ]] || die "the pipeline file is empty" usage
[[ -f $pipeline && -r $pipeline ]] || die "no pipeline file $pipeline"
pipeline=$(abs_path "$pipeline")
[[ -n $stage ]] || die "STAGE is empty" usage
[[ $stage =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || die "not a stage name: '$stage'" usage
for override in "${overrides[@]}"; do
    [[ $override == ?*=* ]] || die "expected key=value after STAGE, not '$override'" usage
done
if ((prepare_job == 0)); then
    for pair in "--prepare-cpus:$prepare_cpus" "--prepare-mem:$prepare_mem" \
        "--prepare-partition:$prepare_partition" "--prepare-time:$prepare_time"; do
        [[ -z ${pair#*:} ]] || die "${pair%%:*} is for the job of --prepare-job" usage
    done
fi
if [[ -n $env_file ]]; then
    [[ -f $env_file && -r $env_file ]] || die "no env file $env_file"
    env_file=$(abs_path "$env_file")
fi
if [[ -n $hostfile ]]; then
    [[ -f $hostfile && -r $hostfile ]] || die "no hostfile $hostfile"
    [[ ${launcher_name:-deepspeed} == deepspeed ]] || die "--hostfile needs --launcher deepspeed"
    launcher_name=deepspeed
    hostfile=$(abs_path "$hostfile")
    no_blanks --hostfile "$hostfile"
    [[ -z $env_file ]] || no_blanks --env "$env_file"
fi
launcher_name=${launcher_name:-torchrun}
procs_given=$((${#procs} > 0))
slurm=$((local_mode == 0 && ${#hostfile} == 0))
if ((slurm == 0)); then
    if ((${nodes:-1} > 1)) && [[ -z $hostfile ]]; then
        die "--local runs on this machine only: for --nodes $nodes leave out --local (SLURM) or give --hostfile" usage
    fi
    requeue_flag=''
    ((requeue == 1)) || requeue_flag=--no-requeue
    prepare_flag=''
    ((prepare_job == 0)) || prepare_flag=--prepare-job
    signal_flag=''
    ((signal_lead_given == 0)) || signal_flag=$signal_lead
    for pair in "--gpus-per-node:$gpus_per_node" "--partition:$partition" "--account:$account" \
        "--time:$time_limit" "--job-name:$job_name" "--cpus-per-task:$cpus_per_task" \
        "--mem:$mem" "--sbatch-arg:${sbatch_args[*]}" "--signal-lead:$signal_flag" \
        "--no-requeue:$requeue_flag" "--prepare-job:$prepare_flag"; do
        [[ -z ${pair#*:} ]] || note "${pair%%:*} is for SLURM jobs: ignored here"
    done
fi

command_line=(run "$pipeline" "${overrides[@]}" --only "$stage")

# --- this machine (--local, --hostfile) ------------------------------------------------------------

run_here() {
    local gpus cores threads launcher='' processes
    gpus=$(count_gpus)
    if [[ -z $procs ]]; then
        procs=1
        if [[ -z $hostfile ]] && ((gpus > 0)); then
            procs=$gpus
        fi
    fi
    if [[ -z $hostfile ]] && ((gpus > 0 && procs > gpus)); then
        note "$procs processes but $gpus GPUs here"
    fi

    local exports=()
    # No GPU: gloo, the cores this process may use (nproc honours its CPU affinity) shared out
    # among the processes, DeepSpeed's CPU accelerator. (With --hostfile the workers run on the
    # hosts it names, which may differ from this one.)
    if ((gpus == 0)) && [[ -z $hostfile ]]; then
        cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
        threads=$((cores / procs))
        ((threads >= 1)) || threads=1
        [[ -n ${OMP_NUM_THREADS:-} ]] || exports+=("OMP_NUM_THREADS=$threads")
        [[ -n ${DS_ACCELERATOR:-} ]] || exports+=("DS_ACCELERATOR=cpu")
    fi

    processes=$procs
    if [[ $launcher_name == torchrun ]]; then
        if ((procs > 1)); then # torchrun --standalone finds a free port by itself
            launcher="torchrun --standalone --nnodes 1 --nproc_per_node $procs"
        fi
    elif [[ -n $hostfile ]]; then # the head is the file's first host: its ports are unknown here
        processes=$(hostfile_processes)
        launcher="deepspeed --no_local_rank --hostfile $hostfile --master_port ${master_port:-29500}"
        [[ -z $nodes ]] || launcher+=" --num_nodes $nodes"
        ((procs_given == 0)) || launcher+=" --num_gpus $procs"
        [[ -z $env_file ]] || launcher+=" --venv_script $env_file"
    else
        [[ -n $master_port ]] || master_port=$(first_free_port 29500)
        launcher="deepspeed --no_local_rank --num_gpus $procs --master_port $master_port"
    fi

    local cmd=("${command_line[@]}")
    [[ -z $launcher ]] || cmd+=(--launcher "$launcher")
    cmd+=(--processes "$processes")
    ((force == 0)) || cmd+=(--force)

    local llamagene=(llamagene)
    if ((dry_run)); then
        print_plan "$processes"
        command -v llamagene >/dev/null 2>&1 || llamagene=("${PYTHON:-python3}" -m llamagene)
        echo "# $procs process(es) on this machine, $gpus GPU(s) seen"
        [[ -z $env_file ]] || echo "source $(quote "$env_file")"
        [[ -z ${LLAMAGENE_LAUNCHER+set} ]] || echo "unset LLAMAGENE_LAUNCHER"
        local kv
        for kv in "${exports[@]}"; do
            echo "export $kv"
        done
        quote_all "${llamagene[@]}" "${cmd[@]}"
        echo
        exit 0
    fi

    if [[ -n $env_file ]]; then
        set +u # module and conda scripts read unset variables
        # shellcheck disable=SC1090
        source "$env_file"
        set -u
    fi
    command -v llamagene >/dev/null 2>&1 || llamagene=("${PYTHON:-python3}" -m llamagene)
    unset LLAMAGENE_LAUNCHER # the launcher is the one given here, or none
    local kv
    for kv in "${exports[@]}"; do
        export "${kv?}"
    done
    note "running: $(quote_all "${llamagene[@]}" "${cmd[@]}")"
    exec "${llamagene[@]}" "${cmd[@]}"
}

if ((slurm == 0)); then
    run_here
fi

# --- SLURM -------------------------------------------------------------------------------------

nodes=${nodes:-1}
if [[ -z $gpus_per_node ]]; then
    gpus_per_node=${procs:-8}
fi
if [[ -z $procs ]]; then
    procs=$gpus_per_node
    ((procs >= 1)) || procs=1
fi
# Defaults a node's workers can live with (README: "The job's defaults"): 8 CPUs per process
# for its data loader and the orchestrator's tokenizing (64 at most, what 8-GPU nodes offer);
# 32G per process, at least 128G: every worker loads the base on the host before moving it to
# its GPU (a 7B base in bf16 is 13.5 GB), and the export at the end builds it in fp32 (27 GB)
# next to the merged copy it checks.
if [[ -z $cpus_per_task ]]; then
    cpus_per_task=$((8 * procs))
    ((cpus_per_task <= 64)) || cpus_per_task=64
fi
if [[ -z $mem ]]; then
    mem=$((32 * procs))
    ((mem >= 128)) || mem=128
    mem+=G
fi
job_name=${job_name:-llamagene-$stage}
prepare_partition=${prepare_partition:-$partition}
prepare_time=${prepare_time:-$time_limit}
for pair in "--job-name:$job_name" "--partition:$partition" "--account:$account" \
    "--time:$time_limit" "--mem:$mem" "--prepare-mem:$prepare_mem" \
    "--prepare-partition:$prepare_partition" "--prepare-time:$prepare_time"; do
    [[ -z ${pair#*:} ]] || no_blanks "${pair%%:*}" "${pair#*:}"
done
time_s=$(slurm_seconds "$time_limit")
if [[ -n $time_s ]] && ((time_s <= signal_lead)); then # USR1 at once: stop, requeue, and again
    die "--time $time_limit is not longer than --signal-lead ($signal_lead s): the job would stop as soon as it starts" usage
fi
prepare_cpus=${prepare_cpus:-16}
prepare_mem=${prepare_mem:-64G}
job_dir=${LLAMAGENE_JOB_DIR:-./slurm}
[[ $job_dir != *$'\n'* ]] || die "LLAMAGENE_JOB_DIR may not contain a line break"
while [[ $job_dir == ./* ]]; do job_dir=${job_dir#./}; done
[[ $job_dir == /* ]] || job_dir=$PWD/$job_dir
while [[ $job_dir == */ && $job_dir != / ]]; do job_dir=${job_dir%/}; done

new_script_path() { # NAME: a job script path in the job folder that does not exist yet
    local path="$job_dir/$1-$stamp.sbatch" suffix=1
    while [[ -e $path || $path == "${script:-}" ]]; do
        path="$job_dir/$1-$stamp-$suffix.sbatch"
        suffix=$((suffix + 1))
    done
    printf '%s' "$path"
}
stamp=$(date +%Y%m%d-%H%M%S)
script=''
script=$(new_script_path "llamagene-$stage")
prepare_script=''
((prepare_job == 0)) || prepare_script=$(new_script_path "llamagene-$stage-prepare")

if ((gpus_per_node > 0 && procs > gpus_per_node)); then
    note "$procs processes per node but $gpus_per_node GPUs per node"
fi

# The port is the job's: 20000 + job id mod 10000 (below Linux's ephemeral ports, 32768 on, and
# different for jobs that share a node), stepped past ports in use on the head node.
port_ref=\$MASTER_PORT
ds_hostfile=0
srun_prefix="srun --nodes=\$SLURM_NNODES --ntasks-per-node=1 --cpus-per-task=$cpus_per_task"
srun_prefix+=" --kill-on-bad-exit=1"
processes_expr="\$((SLURM_NNODES * $procs))"
if [[ $launcher_name == torchrun ]]; then
    launcher="$srun_prefix torchrun --nnodes \$SLURM_NNODES --nproc_per_node $procs"
    launcher+=" --rdzv_id \$SLURM_JOB_ID --rdzv_backend c10d --rdzv_endpoint \$HEAD:$port_ref"
elif ((nodes == 1)); then # one node: DeepSpeed's local launch, no hostfile and no ssh
    launcher="deepspeed --no_local_rank --num_gpus $procs --master_port $port_ref"
    processes_expr=$procs
else
    no_blanks LLAMAGENE_JOB_DIR "$job_dir"
    [[ -z $env_file ]] || no_blanks --env "$env_file"
    ds_hostfile=1
    launcher="deepspeed --no_local_rank --num_nodes \$SLURM_NNODES --num_gpus $procs"
    launcher+=" --master_addr \$HEAD"
    launcher+=" --master_port $port_ref --hostfile \$HOSTFILE --venv_script \$VENV_SCRIPT"
fi

sbatch_common() { # NAME CPUS MEM PARTITION TIME: the #SBATCH lines both jobs have
    echo "#!/bin/bash"
    echo "#SBATCH --job-name=$1"
    echo "#SBATCH --nodes=${6:-1}"
    echo "#SBATCH --ntasks-per-node=1"
    ((${7:-0} == 0)) || echo "#SBATCH --gpus-per-node=$7"
    echo "#SBATCH --cpus-per-task=$2"
    echo "#SBATCH --mem=$3"
    [[ -z $4 ]] || echo "#SBATCH --partition=$4"
    [[ -z $account ]] || echo "#SBATCH --account=$account"
    [[ -z $5 ]] || echo "#SBATCH --time=$5"
    echo "#SBATCH --output=$job_dir/%x-%j.out"
}

script_prologue() { # the environment: set -e, the --env file, set -u, the folder
    echo "set -eo pipefail"
    if [[ -n $env_file ]]; then
        echo "# --- $env_file (copied by --env) ---"
        cat -- "$env_file"
        [[ -z $(tail -c 1 -- "$env_file") ]] || echo
        echo "# --- end of $env_file ---"
    fi
    echo "set -u"
    echo "cd $(quote "$PWD")"
    cat <<'EOF'
unset LLAMAGENE_LAUNCHER
if command -v llamagene >/dev/null 2>&1; then
    LLAMAGENE=(llamagene)
else
    LLAMAGENE=("${PYTHON:-python3}" -m llamagene)
fi
EOF
}

write_prepare_script() {
    sbatch_common "$job_name-prepare" "$prepare_cpus" "$prepare_mem" "$prepare_partition" \
        "$prepare_time"
    echo "# llamagene prepare: $stage's stale upstream stages and its data, on CPUs, ahead of the"
    echo "# GPU job that waits for this one; written by $PROG for $pipeline."
    script_prologue
    cat <<EOF
echo "llamagene: job \$SLURM_JOB_ID prepares $stage on \$(hostname) with \$(nproc) CPUs"
exec "\${LLAMAGENE[@]}" $(quote_all prepare "$pipeline" --stage "$stage" "${overrides[@]}")
EOF
}

write_script() {
    sbatch_common "$job_name" "$cpus_per_task" "$mem" "$partition" "$time_limit" "$nodes" \
        "$gpus_per_node"
    echo "#SBATCH --open-mode=append"
    if ((requeue)); then
        echo "#SBATCH --requeue"
    else
        echo "#SBATCH --no-requeue"
    fi
    echo "#SBATCH --signal=B:USR1@$signal_lead"
    local extra
    for extra in "${sbatch_args[@]}"; do
        echo "#SBATCH $extra"
    done
    echo "# llamagene $stage of $pipeline, written by $PROG; resubmit this file to resume the stage."
    script_prologue
    if ((gpus_per_node == 0)); then
        cat <<EOF
# CPU nodes: gloo, and the task's cores (nproc: the CPUs this job may use) shared out among
# its $procs workers
if [[ -z \${OMP_NUM_THREADS:-} ]]; then
    OMP_NUM_THREADS=\$((\${SLURM_CPUS_PER_TASK:-\$(nproc)} / $procs))
    ((OMP_NUM_THREADS > 0)) || OMP_NUM_THREADS=1
    export OMP_NUM_THREADS
fi
export DS_ACCELERATOR=\${DS_ACCELERATOR:-cpu}
EOF
    fi
    cat <<EOF
# Stop on a signal: SLURM sends USR1 to this shell $signal_lead s before the time limit, TERM
# when it cancels the job. Either way the stop file tells the training workers to save a
# checkpoint at their next optimizer step and stop (llamagene then exits with status 75).
EOF
    if ((requeue)); then
        cat <<EOF
# After USR1 the job requeues itself; the requeued run (this script again) resumes there.
EOF
    fi
    cat <<EOF
export LLAMAGENE_STOP_FILE=$(quote "$job_dir/llamagene-$stage-")\$SLURM_JOB_ID.stop
mkdir -p -- "\${LLAMAGENE_STOP_FILE%/*}"
rm -f -- "\$LLAMAGENE_STOP_FILE"
STOP_SIGNALS=''
# shellcheck disable=SC2329 # called by the traps
llamagene_stop() {
    STOP_SIGNALS+=" \$1"
    echo "llamagene: SIG\$1: the workers checkpoint at their next step and stop" >&2
    touch -- "\$LLAMAGENE_STOP_FILE" || true
}
trap 'llamagene_stop USR1' USR1
trap 'llamagene_stop TERM' TERM
EOF
    cat <<EOF
mapfile -t NODES < <(scontrol show hostnames "\$SLURM_JOB_NODELIST")
((\${#NODES[@]} > 0)) || { echo "llamagene: scontrol listed no nodes" >&2; exit 1; }
HEAD=\${NODES[0]}
EOF
    if [[ -n $master_port ]]; then
        echo "MASTER_PORT=$master_port"
    else
        cat <<'EOF'
# A port of this job's own (this script runs on the head node): from the job id, below the
# ephemeral ports, stepped past any that something here listens on
MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))
for _ in {1..100}; do
    (: <"/dev/tcp/127.0.0.1/$MASTER_PORT") 2>/dev/null || break
    MASTER_PORT=$((20000 + (MASTER_PORT - 19999) % 10000))
done
EOF
    fi
    if ((ds_hostfile)); then
        cat <<EOF
HOSTFILE=$job_dir/llamagene-$stage-\$SLURM_JOB_ID.hostfile
printf '%s slots=$procs\n' "\${NODES[@]}" >"\$HOSTFILE"
# DeepSpeed starts the other nodes over pdsh, which passes on few variables: this file, sourced
# there, sets up the environment and the stop file
VENV_SCRIPT=$job_dir/llamagene-$stage-\$SLURM_JOB_ID.env.sh
{
EOF
        [[ -z $env_file ]] || echo "    echo $(quote "source $env_file")"
        cat <<EOF
    printf 'export LLAMAGENE_STOP_FILE=%q\n' "\$LLAMAGENE_STOP_FILE"
} >"\$VENV_SCRIPT"
EOF
    fi
    local tail=''
    ((force == 0)) || tail=' --force'
    cat <<EOF
LAUNCHER="$launcher"
PROCESSES=$processes_expr
echo "llamagene: job \$SLURM_JOB_ID (restart \${SLURM_RESTART_COUNT:-0}) on \${NODES[*]}; head node \$HEAD; \$PROCESSES processes; launcher: \$LAUNCHER"
# in the background, so that this shell takes the signals while it waits
"\${LLAMAGENE[@]}" $(quote_all "${command_line[@]}") --launcher "\$LAUNCHER" --processes "\$PROCESSES"$tail &
LLAMAGENE_PID=\$!
while :; do
    RC=0
    wait "\$LLAMAGENE_PID" || RC=\$?
    # a signal ends \`wait\` early (status > 128) while llamagene runs on: wait again
    if ((RC > 128)) && kill -0 "\$LLAMAGENE_PID" 2>/dev/null; then continue; fi
    break
done
if [[ \$STOP_SIGNALS == *TERM* ]]; then # cancelled: never undone by a requeue
    echo "llamagene: ended by SIGTERM (status \$RC), not requeued; resubmit this file to resume" >&2
    exit "\$RC"
fi
if ((RC == 75)) || [[ \$STOP_SIGNALS == *USR1* && \$RC != 0 ]]; then
EOF
    if ((requeue)); then
        cat <<'EOF'
    if scontrol requeue "$SLURM_JOB_ID"; then
        echo "llamagene: stopped at a checkpoint before the time limit; job $SLURM_JOB_ID requeued: it resumes from there"
        exit 0
    fi
    echo "llamagene: scontrol requeue failed; resubmit this file to resume" >&2
EOF
    else
        cat <<'EOF'
    echo "llamagene: stopped at a checkpoint (--no-requeue); resubmit this file to resume" >&2
EOF
    fi
    cat <<'EOF'
fi
exit "$RC"
EOF
}

submitted_with() { # the sbatch commands, as a runnable snippet
    [[ -d $job_dir ]] || echo "mkdir -p $(quote "$job_dir")"
    if ((prepare_job)); then
        echo "PREPARE_JOB=\$(sbatch --parsable $(quote "$prepare_script"))"
        echo "sbatch --parsable --dependency=afterok:\${PREPARE_JOB%%;*} --kill-on-invalid-dep=yes $(quote "$script")"
    else
        echo "sbatch --parsable $(quote "$script")"
    fi
}

if ((dry_run)); then
    print_plan $((nodes * procs))
    if ((prepare_job)); then
        echo "# sbatch script $prepare_script:"
        write_prepare_script
        echo "# end of the sbatch script"
    fi
    echo "# sbatch script $script:"
    write_script
    echo "# end of the sbatch script"
    echo "# submitted with:"
    submitted_with
    exit 0
fi

command -v sbatch >/dev/null 2>&1 ||
    die "sbatch not found: run on a SLURM login node, or use --local or --dry-run"
mkdir -p -- "$job_dir"
dependency=()
if ((prepare_job)); then
    write_prepare_script >"$prepare_script"
    prepare_id=$(sbatch --parsable "$prepare_script")
    prepare_id=${prepare_id%%;*}
    echo "submitted job $prepare_id: $prepare_script"
    echo "log: $job_dir/$job_name-prepare-$prepare_id.out"
    dependency=(--dependency="afterok:$prepare_id" --kill-on-invalid-dep=yes)
fi
write_script >"$script"
job_id=$(sbatch --parsable "${dependency[@]}" "$script")
job_id=${job_id%%;*}
echo "submitted job $job_id: $script"
echo "log: $job_dir/$job_name-$job_id.out"
