#!/usr/bin/env bash
# Valgrind memcheck of cfx-train (one rank, no mpirun) on a small subset:
# one epoch of training with validation and checkpoints, then --resume for a
# second one. Each run ends with a clean stop after its epoch (fault
# injection: SIGTERM), so the 10,000-image test pass, minutes under
# valgrind, is skipped; and the network is a narrow one with every layer
# type (the seed CNN takes a minute per epoch under valgrind). Fails on any memcheck error and on any definitely or
# indirectly lost block that tests/sanitizers/valgrind.supp does not
# attribute to Open MPI's own start-up.
#
# usage: valgrind_test.sh CFX_TRAIN CONFIG DATA_DIR WORK_DIR SUPPRESSIONS
set -euo pipefail
train=$1 config=$2 data=$3 work=$4 supp=$5
rm -rf "$work"
mkdir -p "$work"
# valgrind emulates AVX2 but not AVX-512: pin OpenBLAS to its Haswell kernels.
export OPENBLAS_CORETYPE=Haswell CFX_KEEP_BLAS_CORE=1 OPENBLAS_NUM_THREADS=1

memcheck() { # memcheck NAME FAULT_STEP ARGS...: one run, exit 3 (stopped) expected
    local name=$1 step=$2
    shift 2
    local code=0
    CFX_FAULT_STEP=$step valgrind --error-exitcode=99 --leak-check=full \
        --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
        --keep-debuginfo=yes --num-callers=40 --suppressions="$supp" \
        --log-file="$work/$name.valgrind.log" \
        "$train" --config "$config" --quiet --set data.dir="$data" \
        --set output.dir="$work/run" --set data.train_limit=128 --set data.val_limit=50 \
        --set runtime.blas_threads=1 --set train.batch_size=32 \
        --set "model.layers=conv2d out=4 kernel=3 padding=1; relu; maxpool2d kernel=2; conv2d out=8 kernel=3 stride=2 padding=1; relu; maxpool2d kernel=2; flatten; linear out=10" \
        "$@" || code=$?
    local summary
    summary=$(grep -E "ERROR SUMMARY|definitely lost:|indirectly lost:" "$work/$name.valgrind.log" |
        sed 's/^==[0-9]*== *//' | tr '\n' ';')
    if [ "$code" -ne 3 ]; then
        echo "FAIL: $name: exit code $code (99: memcheck errors), expected 3: $summary"
        grep -m1 -B2 -A30 -E "Invalid|uninitialised|Conditional jump|definitely lost in|indirectly lost in" \
            "$work/$name.valgrind.log" || true
        exit 1
    fi
    echo "ok: $name: $summary"
}

# 4 steps per epoch. The stop requested after step s takes effect at step s + 1.
memcheck train 3 --set train.epochs=3
memcheck resume 7 --set train.epochs=3 --resume "$work/run/checkpoints/last.h5"
epochs=$(tail -n +2 "$work/run/logs/metrics.csv" | cut -d, -f1 | tr '\n' ' ')
if [ "$epochs" != "1 2 " ]; then
    echo "FAIL: metrics.csv has epochs '$epochs', expected '1 2 '"
    exit 1
fi
echo "PASS: no memcheck errors and no leaks in cfx-train"
