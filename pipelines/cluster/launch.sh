#!/usr/bin/env bash
# Launch one stage of a llamagene pipeline on this machine or as a SLURM batch job.
# See pipelines/cluster/README.md; `launch.sh --help` for the options.
set -euo pipefail

PROG=${0##*/}

usage() {
    cat <<EOF
usage: $PROG [options] PIPELINE.yaml STAGE [key=value ...]

Run \`llamagene run PIPELINE.yaml --only STAGE\` with a launcher for the training workers:
on this machine (--local, or --hostfile), or as a SLURM batch job (the default). The
orchestrator runs once (on the first node); the training stages (pretrain, finetune) start
their workers through the launcher; other stages ignore it.

where:
  --local                 run on this machine (no SLURM)
  --hostfile FILE         with --launcher deepspeed: run here with DeepSpeed's launcher over the
                          hosts in FILE (lines "host slots=N"; multi-node without SLURM, via ssh)
  --dry-run               print the exact commands (and the sbatch script) without running or
                          submitting anything

how many:
  --nproc N               processes per node (default: --gpus-per-node with SLURM, else the
                          number of GPUs here, else 1)
  --nodes N               SLURM nodes (default 1); with --hostfile: DeepSpeed's --num_nodes
  --gpus-per-node N       GPUs per SLURM node (default: --nproc if given, else 8; 0: CPU nodes)
  --launcher NAME         torchrun (default) or deepspeed
  --master-port PORT      rendezvous port on the head node (default 29500)

SLURM job:
  --partition P  --account A  --time HH:MM:SS  --job-name NAME  --cpus-per-task N  --mem M
  --sbatch-arg ARG        one more #SBATCH line, e.g. --sbatch-arg=--exclusive (repeatable)
                          job script and log folder: \${LLAMAGENE_JOB_DIR:-./slurm}

both:
  --env FILE              a bash file sourced before running (module loads, venv activation);
                          copied into the sbatch script
  --force                 passed to llamagene run: re-run the stage even if up to date
  -h, --help              this text

examples:
  $PROG --local --nproc 2 pipelines/demo/pipeline.yaml pretrain pretrain.max_steps=10
  $PROG --nodes 2 --partition gpu --time 24:00:00 --env env.sh PIPELINE.yaml pretrain
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

# --- arguments ---------------------------------------------------------------------------------

local_mode=0 dry_run=0 force=0
procs='' nodes='' gpus_per_node='' launcher_name='' hostfile='' master_port=29500
partition='' account='' time_limit='' job_name='' cpus_per_task='' mem='' env_file=''
sbatch_args=() positional=()

while (($#)); do
    arg=$1
    shift
    has_value=0 value=''
    if [[ $arg == --*=* ]]; then
        has_value=1 value=${arg#*=} arg=${arg%%=*}
    fi
    case $arg in
        -h | --help | --local | --dry-run | --force)
            ((has_value == 0)) || die "$arg takes no value" usage
            case $arg in
                -h | --help) usage; exit 0 ;;
                --local) local_mode=1 ;;
                --dry-run) dry_run=1 ;;
                --force) force=1 ;;
            esac
            ;;
        --nproc | --nodes | --gpus-per-node | --partition | --account | --time | --job-name | \
            --cpus-per-task | --mem | --sbatch-arg | --launcher | --hostfile | --master-port | --env)
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
    for pair in "--gpus-per-node:$gpus_per_node" "--partition:$partition" "--account:$account" \
        "--time:$time_limit" "--job-name:$job_name" "--cpus-per-task:$cpus_per_task" \
        "--mem:$mem" "--sbatch-arg:${sbatch_args[*]}"; do
        [[ -z ${pair#*:} ]] || note "${pair%%:*} is for SLURM jobs: ignored here"
    done
fi

command_line=(run "$pipeline" "${overrides[@]}" --only "$stage")

# --- this machine (--local, --hostfile) ------------------------------------------------------------

run_here() {
    local gpus cores threads launcher=''
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
    # No GPU: gloo, the cores shared out among the processes, DeepSpeed's CPU accelerator.
    # (With --hostfile the workers run on the hosts it names, which may differ from this one.)
    if ((gpus == 0)) && [[ -z $hostfile ]]; then
        cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
        threads=$((cores / procs))
        ((threads >= 1)) || threads=1
        [[ -n ${OMP_NUM_THREADS:-} ]] || exports+=("OMP_NUM_THREADS=$threads")
        [[ -n ${DS_ACCELERATOR:-} ]] || exports+=("DS_ACCELERATOR=cpu")
    fi

    if [[ $launcher_name == torchrun ]]; then
        if ((procs > 1)); then
            launcher="torchrun --standalone --nnodes 1 --nproc_per_node $procs"
        fi
    elif [[ -n $hostfile ]]; then
        launcher="deepspeed --no_local_rank --hostfile $hostfile --master_port $master_port"
        [[ -z $nodes ]] || launcher+=" --num_nodes $nodes"
        ((procs_given == 0)) || launcher+=" --num_gpus $procs"
        [[ -z $env_file ]] || launcher+=" --venv_script $env_file"
    else
        launcher="deepspeed --no_local_rank --num_gpus $procs --master_port $master_port"
    fi

    local cmd=("${command_line[@]}")
    [[ -z $launcher ]] || cmd+=(--launcher "$launcher")
    ((force == 0)) || cmd+=(--force)

    local llamagene=(llamagene)
    if ((dry_run)); then
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
job_name=${job_name:-llamagene-$stage}
for pair in "--job-name:$job_name" "--partition:$partition" "--account:$account" \
    "--time:$time_limit" "--mem:$mem"; do
    [[ -z ${pair#*:} ]] || no_blanks "${pair%%:*}" "${pair#*:}"
done
job_dir=${LLAMAGENE_JOB_DIR:-./slurm}
[[ $job_dir != *$'\n'* ]] || die "LLAMAGENE_JOB_DIR may not contain a line break"
while [[ $job_dir == ./* ]]; do job_dir=${job_dir#./}; done
[[ $job_dir == /* ]] || job_dir=$PWD/$job_dir
while [[ $job_dir == */ && $job_dir != / ]]; do job_dir=${job_dir%/}; done
stamp=$(date +%Y%m%d-%H%M%S)
script="$job_dir/llamagene-$stage-$stamp.sbatch"
suffix=1
while [[ -e $script ]]; do
    script="$job_dir/llamagene-$stage-$stamp-$suffix.sbatch"
    suffix=$((suffix + 1))
done

if ((gpus_per_node > 0 && procs > gpus_per_node)); then
    note "$procs processes per node but $gpus_per_node GPUs per node"
fi
if [[ -z $cpus_per_task ]]; then
    note "no --cpus-per-task: each node's $procs workers share the CPUs SLURM gives one task by" \
        "default (often 1)"
fi

ds_hostfile=0
srun_prefix="srun --nodes=\$SLURM_NNODES --ntasks-per-node=1"
[[ -z $cpus_per_task ]] || srun_prefix+=" --cpus-per-task=$cpus_per_task"
if [[ $launcher_name == torchrun ]]; then
    launcher="$srun_prefix torchrun --nnodes \$SLURM_NNODES --nproc_per_node $procs"
    launcher+=" --rdzv_id \$SLURM_JOB_ID --rdzv_backend c10d --rdzv_endpoint \$HEAD:$master_port"
elif ((nodes == 1)); then # one node: DeepSpeed's local launch, no hostfile and no ssh
    launcher="deepspeed --no_local_rank --num_gpus $procs --master_port $master_port"
else
    no_blanks LLAMAGENE_JOB_DIR "$job_dir"
    [[ -z $env_file ]] || no_blanks --env "$env_file"
    ds_hostfile=1
    launcher="deepspeed --no_local_rank --num_nodes \$SLURM_NNODES --num_gpus $procs"
    launcher+=" --master_addr \$HEAD"
    launcher+=" --master_port $master_port --hostfile \$HOSTFILE"
    [[ -z $env_file ]] || launcher+=" --venv_script $env_file"
fi

write_script() {
    echo "#!/bin/bash"
    echo "#SBATCH --job-name=$job_name"
    echo "#SBATCH --nodes=$nodes"
    echo "#SBATCH --ntasks-per-node=1"
    ((gpus_per_node == 0)) || echo "#SBATCH --gpus-per-node=$gpus_per_node"
    [[ -z $cpus_per_task ]] || echo "#SBATCH --cpus-per-task=$cpus_per_task"
    [[ -z $mem ]] || echo "#SBATCH --mem=$mem"
    [[ -z $partition ]] || echo "#SBATCH --partition=$partition"
    [[ -z $account ]] || echo "#SBATCH --account=$account"
    [[ -z $time_limit ]] || echo "#SBATCH --time=$time_limit"
    echo "#SBATCH --output=$job_dir/%x-%j.out"
    local extra
    for extra in "${sbatch_args[@]}"; do
        echo "#SBATCH $extra"
    done
    echo "# llamagene $stage of $pipeline, written by $PROG; resubmit this file to resume the stage."
    echo "set -eo pipefail"
    if [[ -n $env_file ]]; then
        echo "# --- $env_file (copied by --env) ---"
        cat -- "$env_file"
        [[ -z $(tail -c 1 -- "$env_file") ]] || echo
        echo "# --- end of $env_file ---"
    fi
    echo "set -u"
    echo "cd $(quote "$PWD")"
    if ((gpus_per_node == 0)); then
        cat <<EOF
# CPU nodes: gloo, and the task's cores shared out among its $procs workers
if [[ -z \${OMP_NUM_THREADS:-} ]]; then
    OMP_NUM_THREADS=\$((\${SLURM_CPUS_PER_TASK:-\$(nproc)} / $procs))
    ((OMP_NUM_THREADS > 0)) || OMP_NUM_THREADS=1
    export OMP_NUM_THREADS
fi
export DS_ACCELERATOR=\${DS_ACCELERATOR:-cpu}
EOF
    fi
    cat <<EOF
unset LLAMAGENE_LAUNCHER
mapfile -t NODES < <(scontrol show hostnames "\$SLURM_JOB_NODELIST")
((\${#NODES[@]} > 0)) || { echo "llamagene: scontrol listed no nodes" >&2; exit 1; }
HEAD=\${NODES[0]}
EOF
    if ((ds_hostfile)); then
        cat <<EOF
HOSTFILE=$job_dir/llamagene-$stage-\$SLURM_JOB_ID.hostfile
printf '%s slots=$procs\n' "\${NODES[@]}" >"\$HOSTFILE"
EOF
    fi
    local tail=''
    ((force == 0)) || tail=' --force'
    cat <<EOF
LAUNCHER="$launcher"
echo "llamagene: job \$SLURM_JOB_ID on \${NODES[*]}; head node \$HEAD; launcher: \$LAUNCHER"
if command -v llamagene >/dev/null 2>&1; then
    LLAMAGENE=(llamagene)
else
    LLAMAGENE=("\${PYTHON:-python3}" -m llamagene)
fi
exec "\${LLAMAGENE[@]}" $(quote_all "${command_line[@]}") --launcher "\$LAUNCHER"$tail
EOF
}

if ((dry_run)); then
    echo "# sbatch script $script:"
    write_script
    echo "# end of the sbatch script; submitted with:"
    [[ -d $job_dir ]] || echo "mkdir -p $(quote "$job_dir")"
    echo "sbatch --parsable $(quote "$script")"
    exit 0
fi

command -v sbatch >/dev/null 2>&1 ||
    die "sbatch not found: run on a SLURM login node, or use --local or --dry-run"
mkdir -p -- "$job_dir"
write_script >"$script"
job_id=$(sbatch --parsable "$script")
job_id=${job_id%%;*}
echo "submitted job $job_id: $script"
echo "log: $job_dir/$job_name-$job_id.out"
