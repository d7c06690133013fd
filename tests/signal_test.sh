#!/usr/bin/env bash
# Real signals to a running 2-rank job. SIGTERM to the ranks (what SLURM
# sends every process of a job step on scancel or preemption) and SIGUSR1 to
# mpirun (which forwards it): every rank stops at the same step, rank 0
# writes last.h5, the job exits with code 3, and --resume from that file
# finishes the run with a complete metrics log.
#
# usage: signal_test.sh CFX_TRAIN CONFIG DATA_DIR WORK_DIR -- MPIEXEC ARGS...
set -euo pipefail
train=$1 config=$2 data=$3 work=$4
shift 5
mpiexec=("$@")
rm -rf "$work"
mkdir -p "$work"
args=(--config "$config" --quiet --set data.dir="$data"
      --set train.epochs=4 --set data.train_limit=16384 --set data.val_limit=200)
# An epoch of 16,384 images lasts ~1.5 s at 2 ranks on these machines, so the
# signal, 0.3 s into epoch 2, finds the job running (4,096 images did not:
# the job could end before the signal).

stop_and_resume() { # stop_and_resume SIGNAL TARGET(ranks|mpirun) RUN_DIR
    local sig=$1 target=$2 dir=$3
    local run_args=("${args[@]}" --set output.dir="$dir")
    "${mpiexec[@]}" 2 "$train" "${run_args[@]}" &
    local job=$!
    # Wait until training is under way (the first epoch's checkpoint exists).
    for _ in $(seq 1 600); do
        [ -f "$dir/checkpoints/last.h5" ] && break
        sleep 0.1
    done
    sleep 0.3
    if [ "$target" = ranks ]; then
        pkill -"$sig" -P "$job" -x cfx-train ||
            { echo "FAIL: SIG$sig: no cfx-train rank left to signal (the job ended first)"; exit 1; }
    else
        kill -"$sig" "$job" || { echo "FAIL: SIG$sig: mpirun already gone"; exit 1; }
    fi
    set +e
    wait "$job"
    local code=$?
    set -e
    if [ "$code" -ne 3 ]; then
        echo "FAIL: SIG$sig to $target: mpirun exited with $code, expected 3"
        exit 1
    fi
    echo "ok: SIG$sig to $target -> exit code 3"
    "${mpiexec[@]}" 2 "$train" "${run_args[@]}" --resume "$dir/checkpoints/last.h5"
    local epochs
    epochs=$(tail -n +2 "$dir/logs/metrics.csv" | cut -d, -f1 | tr '\n' ' ')
    if [ "$epochs" != "1 2 3 4 " ]; then
        echo "FAIL: metrics.csv has epochs '$epochs' after the resume, expected '1 2 3 4 '"
        exit 1
    fi
    echo "ok: resumed and finished with epochs $epochs"
}

stop_and_resume TERM ranks "$work/term"
stop_and_resume USR1 mpirun "$work/usr1"
echo "PASS: signals stop every rank cleanly and the runs resume"
