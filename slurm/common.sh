# shellcheck shell=bash
# Shared by slurm/*.sbatch (sourced, never run on its own); see slurm/README.md.
#
# A template runs in one of two places:
#   - on a login node (no SLURM_JOB_ID): `PROFILE=cpu slurm/single.sbatch [SBATCH_OPTIONS...] EXPERIMENT [OVERRIDES...]`
#     checks the experiment, the profile and the virtualenv, then submits itself with sbatch and the
#     profile's resources. A bad argument is a one-line `error: ...` (exit 2) and nothing is submitted.
#   - inside the job (sbatch started it): the same checks, then the virtualenv is activated and the
#     template runs the search.
# Needs EVOJAX_ROOT (the repository) and EVOJAX_TEMPLATE (the template's path) set by the template.

evojax_die() {
    echo "error: $*" >&2
    exit 2
}

evojax_names() { # the configs of a Hydra group: "a b c"
    local f names=()
    for f in "$EVOJAX_ROOT/conf/$1"/*.yaml; do [[ -e "$f" ]] && names+=("$(basename "$f" .yaml)"); done
    echo "${names[*]}"
}

evojax_args() { # SBATCH_OPTS (leading --options), EXPERIMENT, OVERRIDES (the rest) from "$@"
    SBATCH_OPTS=()
    while (($# > 0)) && [[ "$1" == -* ]]; do
        SBATCH_OPTS+=("$1")
        shift
    done
    EXPERIMENT="${1:-}"
    if (($# > 0)); then shift; fi
    OVERRIDES=("$@")
    local usage="usage: $(basename "$EVOJAX_TEMPLATE") [--sbatch-option=value...] EXPERIMENT [hydra overrides...]"
    [[ -n "$EXPERIMENT" ]] || evojax_die "no experiment given ($usage; experiments: $(evojax_names experiment))"
    [[ "$EXPERIMENT" != *=* ]] || evojax_die "'$EXPERIMENT' is an override, not an experiment ($usage)"
    if [[ -d "$EVOJAX_ROOT/conf/experiment" && ! -f "$EVOJAX_ROOT/conf/experiment/$EXPERIMENT.yaml" ]]; then
        evojax_die "unknown experiment '$EXPERIMENT' (conf/experiment has: $(evojax_names experiment))"
    fi
}

evojax_profile() { # PROFILE (default gpu) -> PROFILE_SBATCH, PROFILE_MULTINODE_SBATCH and its exports
    PROFILE="${PROFILE:-gpu}"
    local file="$EVOJAX_ROOT/slurm/profiles/$PROFILE.sh" have
    have="$(cd "$EVOJAX_ROOT/slurm/profiles" && ls -- *.sh 2>/dev/null | sed 's/\.sh$//' | tr '\n' ' ')"
    if [[ ! "$PROFILE" =~ ^[A-Za-z0-9_.-]+$ || ! -f "$file" ]]; then
        evojax_die "unknown profile PROFILE=$PROFILE (slurm/profiles has: ${have% })"
    fi
    PROFILE_SBATCH=()
    PROFILE_MULTINODE_SBATCH=()
    # shellcheck source=/dev/null
    source "$file"
    export PROFILE
}

evojax_venv() { # VENV, else the virtualenv active at submission (VIRTUAL_ENV), made absolute and exported
    local venv="${VENV:-${VIRTUAL_ENV:-}}" what="VENV"
    [[ -n "${VENV:-}" ]] || what="the active virtualenv (VIRTUAL_ENV)"
    [[ -n "$venv" ]] || evojax_die "no virtualenv: set VENV=/path/to/venv or activate the virtualenv before submitting"
    [[ -f "$venv/bin/activate" ]] || evojax_die "$what=$venv has no bin/activate"
    VENV="$(cd "$venv" && pwd)"
    export VENV
}

evojax_array() { # array.sbatch: SEED_LIST, METHOD_LIST (checked) and ARRAY_SIZE
    read -r -a SEED_LIST <<<"${SEEDS:-0 1 2}"
    read -r -a METHOD_LIST <<<"${METHODS:-evo lorahub ties}"
    ((${#SEED_LIST[@]} > 0)) || evojax_die "SEEDS is empty"
    ((${#METHOD_LIST[@]} > 0)) || evojax_die "METHODS is empty"
    local s m
    for s in "${SEED_LIST[@]}"; do [[ "$s" =~ ^[0-9]+$ ]] || evojax_die "SEEDS: '$s' is not a seed (a number)"; done
    for m in "${METHOD_LIST[@]}"; do
        [[ -f "$EVOJAX_ROOT/conf/method/$m.yaml" ]] ||
            evojax_die "METHODS: unknown method '$m' (conf/method has: $(evojax_names method))"
    done
    ARRAY_SIZE=$((${#SEED_LIST[@]} * ${#METHOD_LIST[@]}))
}

# evojax_main KIND "$@" (KIND: single, array or multinode). On a login node: checks, then submits the
# template and does not return. Inside the job: checks, cd to the submission directory, activates the venv.
evojax_main() {
    local kind="$1"
    shift
    evojax_args "$@"
    evojax_profile
    [[ "$kind" != array ]] || evojax_array
    if [[ -z "${SLURM_JOB_ID:-}" ]]; then
        evojax_venv
        local resources=("${PROFILE_SBATCH[@]}") opt
        [[ "$kind" != multinode ]] || resources=("${PROFILE_MULTINODE_SBATCH[@]}")
        if [[ "$kind" == array ]]; then # one task per (method, seed) unless --array is given
            local given=0
            for opt in "${SBATCH_OPTS[@]}"; do [[ "$opt" != --array=* ]] || given=1; done
            ((given)) || resources+=("--array=0-$((ARRAY_SIZE - 1))%${ARRAY_PARALLEL:-4}")
        fi
        export EVOJAX_ROOT
        command -v sbatch >/dev/null || evojax_die "sbatch not found: submit from a SLURM login node"
        exec sbatch "${resources[@]}" "${SBATCH_OPTS[@]}" "$EVOJAX_TEMPLATE" "$EXPERIMENT" "${OVERRIDES[@]}"
    fi
    ((${#SBATCH_OPTS[@]} == 0)) || evojax_die "sbatch options (${SBATCH_OPTS[*]}) inside a job: give them to sbatch"
    cd "${SLURM_SUBMIT_DIR:-$PWD}"
    evojax_venv
    # shellcheck source=/dev/null
    source "$VENV/bin/activate"
}

# evojax_finish RUN_DIR: done when the run wrote result.json; otherwise it saved a checkpoint and stopped
# (signal), so the job is requeued, keeps its id, lands in the same RUN_DIR and resumes. An array task is
# <array id>_<task id>: one task's SLURM_JOB_ID can equal the array's id, and requeueing that requeues all.
evojax_finish() {
    local job="${SLURM_JOB_ID}"
    if [[ -n "${SLURM_ARRAY_JOB_ID:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
        job="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    fi
    if [[ -f "$1/result.json" ]]; then
        echo "[$(date -Is)] finished: $1/result.json"
    else
        echo "[$(date -Is)] not finished yet: requeueing job ${job}"
        scontrol requeue "${job}"
    fi
}
