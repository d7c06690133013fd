# shellcheck shell=bash disable=SC2154 # (src, work: set by the caller)
# Shared by the tests of tests/cluster/ (sourced): an emulated cluster of
# tools/cluster/cluster with SLURM, brought up for one test and torn down on
# any exit. The caller sets src, work and data first.
cluster=$src/tools/cluster/cluster
export CFX_CLUSTER_KEEP=$work/cluster-logs
fail() {
    echo "FAIL: $*"
    exit 1
}
ok() { echo "ok: $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# cluster_up N: skips the test (exit 77, CTest SKIP_RETURN_CODE) when this
# machine cannot make namespaces or has no SLURM; tears down on exit.
cluster_up() {
    local rc=0
    "$cluster" check || rc=$?
    if [ "$rc" -eq 77 ]; then
        echo "SKIP: no emulated cluster on this machine (see the line above)"
        exit 77
    fi
    [ "$rc" -eq 0 ] || fail "cluster check failed"
    trap '"$cluster" down' EXIT
    "$cluster" down # leftovers of an interrupted run
    rc=0
    "$cluster" up "$1" --slurm || rc=$?
    [ "$rc" -ne 77 ] || { echo "SKIP: cannot start SLURM here (see above)"; exit 77; }
    [ "$rc" -eq 0 ] || fail "cluster up $1 --slurm failed (logs in $CFX_CLUSTER_KEEP)"
    export SLURM_CONF
    SLURM_CONF=$(sed -n 's/^export SLURM_CONF=//p' <("$cluster" env))
}

# in_cluster CMD...: CMD with the cluster's Open MPI settings (TCP on the
# test subnet only, no binding, yield when idle, 1 BLAS thread).
in_cluster() { (eval "$("$cluster" env)" && "$@"); }

# submit OUT ARGS...: sbatch of jobs/train.sbatch from the repository on 2
# nodes x 1 task x 1 CPU; prints the job id. CFX_RUNS, CFX_RUN_DIR pass on.
submit() {
    local out=$1
    shift
    (cd "$src" && in_cluster sbatch --parsable --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 \
        --output="$out" jobs/train.sbatch "$@")
}
job_state() { squeue -h -j "$1" -o %T 2> /dev/null || true; }
# wait_for SECONDS WHAT CMD...: polls CMD every 0.1 s; fails after SECONDS.
wait_for() {
    local limit=$1 what=$2 start
    shift 2
    start=$(now)
    until "$@"; do
        if awk -v a="$start" -v b="$(now)" -v l="$limit" 'BEGIN { exit !(b - a > l) }'; then
            fail "$what: not within $limit s"
        fi
        sleep 0.1
    done
}
job_gone() { [ -z "$(job_state "$1")" ] || [ "$(job_state "$1")" = COMPLETED ]; }
not_running() { [ "$(job_state "$1")" != RUNNING ]; }
epochs_of() { tail -n +2 "$1/logs/metrics.csv" | cut -d, -f1 | tr '\n' ' '; }
# attr FILE OBJECT NAME: an integer attribute of an HDF5 object
attr() { h5dump -a "$2/$3" "$1" | sed -n 's/^ *(0): *\([-0-9]*\).*/\1/p'; }
# same_weights A B: /model and /optimizer bitwise equal
same_weights() {
    h5diff "$1" "$2" /model /model > /dev/null && h5diff "$1" "$2" /optimizer /optimizer > /dev/null
}
