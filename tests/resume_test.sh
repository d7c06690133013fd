#!/usr/bin/env bash
# Exact resume: with the same rank count, 2 epochs + --resume for 2 more, and a
# run stopped by SIGTERM in the middle of epoch 2 and resumed, both end with
# weights and optimizer state bitwise equal to an uninterrupted 4-epoch run,
# and with a metrics log of exactly epochs 1..4.
#
# usage: resume_test.sh CFX_TRAIN CONFIG DATA_DIR WORK_DIR NPROCS -- MPIEXEC ARGS...
set -euo pipefail
train=$1 config=$2 data=$3 work=$4 np=$5
shift 6
mpiexec=("$@")
rm -rf "$work"
mkdir -p "$work"

run() { # run OUTPUT_DIR EPOCHS [extra args...]
    local out=$1 epochs=$2
    shift 2
    "${mpiexec[@]}" "$np" "$train" --config "$config" --quiet \
        --set data.dir="$data" --set output.dir="$out" --set train.epochs="$epochs" \
        --set data.train_limit=1024 --set data.val_limit=200 --set runtime.blas_threads=1 "$@"
}

same_state() { # same_state A.h5 B.h5 WHAT
    if ! h5diff "$1" "$2" /model /model > /dev/null ||
       ! h5diff "$1" "$2" /optimizer /optimizer > /dev/null; then
        echo "FAIL: $3: weights or optimizer state differ from the uninterrupted run"
        h5diff -r "$1" "$2" /model /model | head -5
        exit 1
    fi
    echo "ok: $3: weights and optimizer state bitwise equal"
}

check_log() { # check_log RUN_DIR: epochs 1..4 once each, train losses as the reference
    local epochs
    epochs=$(tail -n +2 "$1/logs/metrics.csv" | cut -d, -f1 | tr '\n' ' ')
    if [ "$epochs" != "1 2 3 4 " ]; then
        echo "FAIL: $1/logs/metrics.csv has epochs '$epochs', expected '1 2 3 4 '"
        exit 1
    fi
    if ! cmp -s <(cut -d, -f1-2 "$work/full/logs/metrics.csv") <(cut -d, -f1-2 "$1/logs/metrics.csv"); then
        echo "FAIL: $1: train losses differ from the uninterrupted run"
        paste -d' ' "$work/full/logs/metrics.csv" "$1/logs/metrics.csv"
        exit 1
    fi
    echo "ok: $1: metrics log has epochs 1..4 with the reference train losses"
}

run "$work/full" 4

# 2 epochs, then resume to 4.
run "$work/split" 2
run "$work/split" 4 --resume "$work/split/checkpoints/last.h5"
same_state "$work/full/checkpoints/last.h5" "$work/split/checkpoints/last.h5" "2 + 2 epochs"
check_log "$work/split"

# SIGTERM after global step 20 (epoch 2, step 4): exit code 3, last.h5 mid-epoch.
set +e
CFX_FAULT_STEP=20 run "$work/stopped" 4
code=$?
set -e
if [ "$code" -ne 3 ]; then
    echo "FAIL: a run stopped by SIGTERM exited with $code, expected 3"
    exit 1
fi
step=$(h5dump -a /train_state/step_in_epoch "$work/stopped/checkpoints/last.h5" | grep -A1 DATA | tail -1 | tr -dc '0-9')
if [ "$step" -eq 0 ]; then
    echo "FAIL: last.h5 of the stopped run is not inside an epoch"
    exit 1
fi
echo "ok: stopped with exit code 3 at step $step of epoch 2"
run "$work/stopped" 4 --resume "$work/stopped/checkpoints/last.h5"
same_state "$work/full/checkpoints/last.h5" "$work/stopped/checkpoints/last.h5" "mid-epoch stop + resume"
check_log "$work/stopped"
echo "PASS: exact resume with $np rank(s)"
