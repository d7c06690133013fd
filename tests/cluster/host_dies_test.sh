#!/usr/bin/env bash
# A host of a 2-host SLURM job dies mid-epoch (every process in its network
# namespace SIGKILLed): the job ends within 30 s, with Open MPI's message
# naming the lost host, not a hang; last.h5 holds the last completed epoch
# and loads (checksums verified); after the host is back, resubmitting with
# CFX_RUN_DIR resumes and ends bitwise equal to an uninterrupted run. Then a
# link that stalls (taken down, nothing closes): the job ends within 30 s by
# the TCP keepalives train.sbatch sets (about 11 s, see jobs/train.sbatch).
#
# usage: host_dies_test.sh CFX_TRAIN SOURCE_DIR DATA_DIR WORK_DIR -- MPIEXEC ARGS...
set -euo pipefail
train=$1 src=$2 data=$3 work=$4
shift 5
mpiexec=("$@")
rm -rf "$work"
mkdir -p "$work"
# shellcheck source=tests/cluster/lib.sh
. "$src/tests/cluster/lib.sh"
cluster_up 2
export CFX_TRAIN=$train CFX_RUNS=$work/runs
sets=(--set data.dir="$data" --set data.train_limit=12000 --set data.val_limit=500 --set train.epochs=3)
lost_host='Remote daemon: .* on node cfx-node2'

# fault_run NAME ACTION...: submits a job, runs ACTION in epoch 2 and checks
# that the job ends within 30 s naming cfx-node2; sets job, run and took.
fault_run() {
    local name=$1 start
    shift
    job=$(submit "$work/$name.out" configs/quick.ini "${sets[@]}")
    run=$work/runs/quick-$job
    wait_for 60 "job $job wrote last.h5" test -f "$run/checkpoints/last.h5"
    sleep 0.3 # into epoch 2
    start=$(now)
    "$@"
    wait_for 30 "job $job ended after '$*'" not_running "$job"
    took=$(since "$start")
    cat "$work/$name.out"
    grep -q "$lost_host" "$work/$name.out" || fail "job $job: no message naming the lost host cfx-node2"
    grep -q "cfx-train failed with exit code" "$work/$name.out" || fail "job $job: no failure in its log"
}

"${mpiexec[@]}" 2 "$train" --config "$src/configs/quick.ini" --quiet "${sets[@]}" \
    --set runtime.blas_threads=1 --set output.dir="$work/reference"

# --- The host dies --------------------------------------------------------------
fault_run killed "$cluster" kill cfx-node2
ok "cfx-node2 killed mid-epoch: job $job ended after $took s naming cfx-node2"
last=$run/checkpoints/last.h5
done_epochs=$(tail -n 1 "$run/logs/metrics.csv" | cut -d, -f1)
if [ "$(attr "$last" /train_state epoch)" != "$done_epochs" ] ||
    [ "$(attr "$last" /train_state step_in_epoch)" != 0 ]; then
    fail "last.h5 is not the end of epoch $done_epochs, the last in metrics.csv"
fi
"$train" --config "$run/config.ini" --quiet --eval "$last" > /dev/null || fail "last.h5 does not load"
ok "last.h5 is epoch $done_epochs (the last completed) and loads"
"$cluster" revive cfx-node2
dead_run=$run
(export CFX_RUN_DIR=$dead_run && submit "$work/resumed.out" configs/quick.ini "${sets[@]}") > "$work/resumed.id"
wait_for 60 "the resubmitted job finished" test -f "$dead_run/FINISHED"
cat "$work/resumed.out"
grep -q "^resumed from $last" "$work/resumed.out" || fail "the resubmitted job did not resume from last.h5"
[ "$(epochs_of "$dead_run")" = "1 2 3 " ] || fail "epochs '$(epochs_of "$dead_run")' after the resume"
same_weights "$work/reference/checkpoints/last.h5" "$last" ||
    fail "the resumed run's /model or /optimizer differ from the uninterrupted run"
ok "resubmitted: resumed from epoch $done_epochs, epochs 1 2 3 once, bitwise equal to the uninterrupted run"

# --- The link stalls --------------------------------------------------------------
fault_run stalled "$cluster" link cfx-node2 down
"$cluster" link cfx-node2 up
ok "cfx-node2's link down mid-epoch: job $job ended after $took s naming cfx-node2"
echo "PASS: a dead host and a stalled link end the job; resubmitting resumes exactly"
