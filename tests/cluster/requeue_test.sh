#!/usr/bin/env bash
# Preemption on the real SLURM of 2 emulated hosts: mid-training,
# `scancel --batch --signal=USR1` reaches jobs/train.sbatch, every rank stops
# after the same step, rank 0 writes last.h5, the script requeues the job,
# SLURM starts it again (same job id, restart 1), it resumes from last.h5 and
# finishes. The metrics log has every epoch once, and the final weights and
# optimizer state are bitwise those of an uninterrupted run.
#
# usage: requeue_test.sh CFX_TRAIN SOURCE_DIR DATA_DIR WORK_DIR -- MPIEXEC ARGS...
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
sets=(--set data.dir="$data" --set data.train_limit=10000 --set data.val_limit=500 --set train.epochs=4)

# The uninterrupted reference (2 ranks on one host) first: run beside the
# job it would slow it down, and the job might end before the signal.
"${mpiexec[@]}" 2 "$train" --config "$src/configs/quick.ini" --quiet "${sets[@]}" \
    --set runtime.blas_threads=1 --set output.dir="$work/reference"
job=$(submit "$work/job.out" configs/quick.ini "${sets[@]}")
run=$work/runs/quick-$job
wait_for 60 "job $job wrote last.h5" test -f "$run/checkpoints/last.h5"
sleep 0.3 # into epoch 2
signalled=$(now)
scancel --batch --signal=USR1 "$job" || { cat "$work/job.out"; fail "scancel --batch --signal=USR1 $job failed"; }
wait_for 30 "the batch shell got USR1 and requeued" grep -q "requeueing job $job" "$work/job.out"
requeued=$(since "$signalled")
wait_for 90 "job $job restarted" grep -q "job $job (restart 1)" "$work/job.out"
restarted=$(since "$signalled")
wait_for 60 "job $job finished" test -f "$run/FINISHED"
finished=$(since "$signalled")
wait_for 10 "job $job left the queue" job_gone "$job"
cat "$work/job.out"
grep -q "^stopped by signal after epoch [1-4] step [1-9][0-9]*; wrote $run/checkpoints/last.h5" "$work/job.out" ||
    fail "no mid-training stop with last.h5 in the log"
grep -q "^resumed from $run/checkpoints/last.h5" "$work/job.out" || fail "the requeued job did not resume"
ok "USR1 -> last.h5, requeue after $requeued s, restart 1 after $restarted s, finished after $finished s"
[ "$(epochs_of "$run")" = "1 2 3 4 " ] || fail "metrics.csv has epochs '$(epochs_of "$run")', expected '1 2 3 4 '"
if [ "$(grep -c 'exit 3 after SIGUSR1' "$run/jobs.log")" -ne 1 ] || [ "$(grep -c 'exit 0$' "$run/jobs.log")" -ne 1 ]; then
    fail "jobs.log is not one stop and one finish: $(cat "$run/jobs.log")"
fi
same_weights "$work/reference/checkpoints/last.h5" "$run/checkpoints/last.h5" ||
    fail "final /model or /optimizer differ from the uninterrupted run"
ok "epochs 1 2 3 4 once each; final weights and Adam state bitwise equal to the uninterrupted run"
echo "PASS: preemption and requeue on SLURM"
