#!/usr/bin/env bash
# Bitwise the same model for any rank count (dist.reduction = exact):
#   ranks   4 epochs on 1,000 images (64 steps of 64, the last one of each
#           epoch partial) with 1, 2, 3 and 4 ranks end with bitwise equal
#           weights, buffers and optimizer state (/model, /optimizer), and
#           the same metrics log and test metrics (on 500 test images);
#           so do 1 rank with 3 threads and 3 and 2 ranks summing the
#           gradients in buckets during the backward pass (dist.overlap, a
#           bucket per layer and buckets of 20 KB);
#   resume  a run stopped mid-epoch on 2 ranks and resumed on 3, and one
#           resumed on 1, end bitwise equal to the uninterrupted run.
# The float reduction (dist.reduction = float) is shown to differ, so the
# comparison can fail. Run for configs/seed.ini, tests/small_resnet.ini and
# tests/small_fast.ini (whitening, trainable=bias and lookahead, whose
# fast weights a resumed run must restore).
#
# usage: exact_ranks_test.sh MODE CFX_TRAIN CONFIG DATA_DIR WORK_DIR -- MPIEXEC ARGS...
set -euo pipefail
mode=$1 train=$2 config=$3 data=$4 work=$5
shift 6
mpiexec=("$@")
rm -rf "$work"
mkdir -p "$work"

run() { # run NP OUTPUT_DIR [extra args...]
    local np=$1 out=$2
    shift 2
    "${mpiexec[@]}" "$np" "$train" --config "$config" --quiet --set data.dir="$data" \
        --set output.dir="$out" --set train.epochs=4 --set data.train_limit=1000 \
        --set data.val_limit=200 --set data.test_limit=500 --set runtime.blas_threads=1 "$@"
}

same() { # same A_DIR B_DIR WHAT: 0 if /model and /optimizer of last.h5 are bitwise equal
    h5diff "$1/checkpoints/last.h5" "$2/checkpoints/last.h5" /model /model > /dev/null &&
        h5diff "$1/checkpoints/last.h5" "$2/checkpoints/last.h5" /optimizer /optimizer > /dev/null
}

expect_same() {
    if ! same "$1" "$2"; then
        echo "FAIL: $3: the model or optimizer state differs from 1 rank's"
        h5diff -r "$1/checkpoints/last.h5" "$2/checkpoints/last.h5" /model /model | head -4
        exit 1
    fi
    echo "ok: $3: bitwise equal to 1 rank"
}

# The airbench-style config: the whitening conv's weight (trainable=bias) and
# BatchNorm's scale stay as initialised while their biases train; with
# lookahead the run ends elsewhere than without it.
check_whitening_and_lookahead() {
    local f1=$work/np1/checkpoints/last.h5 e1=$work/epoch1/checkpoints/last.h5
    run 1 "$work/epoch1" --set train.epochs=1
    h5diff "$e1" "$f1" /model/whiten.weight /model/whiten.weight > /dev/null ||
        { echo "FAIL: trainable=bias: whiten.weight changed"; exit 1; }
    ! h5diff "$e1" "$f1" /model/whiten.bias /model/whiten.bias > /dev/null ||
        { echo "FAIL: trainable=bias: whiten.bias did not train"; exit 1; }
    h5dump -d /model/norm1.weight "$f1" | grep -q '(0): 1, 1, 1' ||
        { echo "FAIL: trainable=bias: norm1.weight is not 1"; exit 1; }
    run 1 "$work/nolook" --set optim.lookahead_steps=0
    ! h5diff "$work/nolook/checkpoints/last.h5" "$f1" /model /model > /dev/null ||
        { echo "FAIL: optim.lookahead_steps changes nothing"; exit 1; }
    echo "ok: whitening weight and BatchNorm scale frozen, biases train; lookahead matters"
    # train_epochs=2: the whitening bias trains in epochs 1 and 2, then stays
    # (without lookahead, whose average would still move toward it); the run
    # stopped in epoch 2 (step 20; 16 steps an epoch) and in epoch 3 (step 37)
    local at
    for at in 20 37; do
        CFX_FAULT_STEP=$at run 1 "$work/nolook$at" --set optim.lookahead_steps=0 || true
    done
    local s20=$work/nolook20/checkpoints/last.h5 s37=$work/nolook37/checkpoints/last.h5
    local n4=$work/nolook/checkpoints/last.h5
    ! h5diff "$s20" "$s37" /model/whiten.bias /model/whiten.bias > /dev/null ||
        { echo "FAIL: train_epochs=2: whiten.bias did not train in epoch 2"; exit 1; }
    h5diff "$s37" "$n4" /model/whiten.bias /model/whiten.bias > /dev/null ||
        { echo "FAIL: train_epochs=2: whiten.bias changed after epoch 2"; exit 1; }
    ! h5diff "$s37" "$n4" /model/norm1.bias /model/norm1.bias > /dev/null ||
        { echo "FAIL: train_epochs=2: norm1.bias stopped training too"; exit 1; }
    echo "ok: train_epochs=2 freezes the whitening bias after epoch 2, the rest trains on"
}

run 1 "$work/np1"
case $mode in
ranks)
    for np in 2 3 4; do
        run "$np" "$work/np$np"
        expect_same "$work/np1" "$work/np$np" "$np ranks"
        cmp -s <(cut -d, -f1-5 "$work/np1/logs/metrics.csv") \
            <(cut -d, -f1-5 "$work/np$np/logs/metrics.csv") ||
            { echo "FAIL: $np ranks: the metrics differ"; exit 1; }
        for a in test_loss test_accuracy; do
            cmp -s <(h5dump -a "$a" "$work/np1/logs/metrics.h5" | grep '(0)') \
                <(h5dump -a "$a" "$work/np$np/logs/metrics.h5" | grep '(0)') ||
                { echo "FAIL: $np ranks: $a differs"; exit 1; }
        done
    done
    # 3 threads in one rank: the layers split their work in pieces whose sizes
    # do not depend on the thread count, so the bits are 1 thread's
    run 1 "$work/threads3" --set runtime.blas_threads=3
    expect_same "$work/np1" "$work/threads3" "1 rank with 3 threads"
    # dist.overlap: gradients summed in buckets during the backward pass, one
    # per layer or a few layers each, give the bits of one sum after it
    run 3 "$work/buckets3" --set dist.overlap=true --set dist.bucket_mb=0
    expect_same "$work/np1" "$work/buckets3" "3 ranks, a gradient bucket per layer"
    run 2 "$work/buckets2" --set dist.overlap=true --set dist.bucket_mb=0.02
    expect_same "$work/np1" "$work/buckets2" "2 ranks, gradient buckets of 20 KB"
    run 2 "$work/float2" --set dist.reduction=float
    if same "$work/np1" "$work/float2"; then
        echo "FAIL: the float reduction on 2 ranks gave 1 rank's exact bits: the check is vacuous"
        exit 1
    fi
    echo "ok: the float reduction on 2 ranks differs, as expected"
    if grep -q 'whiten=true' "$config"; then
        check_whitening_and_lookahead
    fi
    # The training features below are the same code for every network: checked
    # on the seed recipe only (they cost 6 runs each).
    [ "$(basename "$config")" = seed.ini ] || exit 0
    # train.tta: flip views for validation and test, recorded in the metrics log,
    # also bitwise the same on 1 and 3 ranks, and not the plain evaluation
    run 1 "$work/tta1" --set train.tta=flip
    run 3 "$work/tta3" --set train.tta=flip
    h5dump -a tta "$work/tta1/logs/metrics.h5" | grep -q '"flip"' ||
        { echo "FAIL: metrics.h5 does not record tta = flip"; exit 1; }
    v1=$(h5dump -a test_loss "$work/tta1/logs/metrics.h5" | grep '(0)')
    [ "$v1" = "$(h5dump -a test_loss "$work/tta3/logs/metrics.h5" | grep '(0)')" ] ||
        { echo "FAIL: the TTA test loss differs between 1 and 3 ranks"; exit 1; }
    [ "$v1" != "$(h5dump -a test_loss "$work/np1/logs/metrics.h5" | grep '(0)')" ] ||
        { echo "FAIL: the TTA test loss equals the plain one"; exit 1; }
    echo "ok: train.tta=flip recorded, the same on 1 and 3 ranks, not the plain loss"
    # trainable=false: the frozen convolution keeps its initial weights (1 epoch
    # or 4), the layers after it train
    frozen="model.layers=conv2d out=8 kernel=3 padding=1 trainable=false; relu; maxpool2d kernel=4;"
    frozen="$frozen flatten; linear out=10"
    run 1 "$work/frozen4" --set "$frozen"
    run 1 "$work/frozen1" --set "$frozen" --set train.epochs=1
    for d in 0.weight 0.bias; do
        h5diff "$work/frozen1/checkpoints/last.h5" "$work/frozen4/checkpoints/last.h5" \
            "/model/$d" "/model/$d" > /dev/null || { echo "FAIL: frozen $d changed"; exit 1; }
    done
    if h5diff "$work/frozen1/checkpoints/last.h5" "$work/frozen4/checkpoints/last.h5" \
        /model/4.weight /model/4.weight > /dev/null; then
        echo "FAIL: the linear layer after the frozen convolution did not train"
        exit 1
    fi
    echo "ok: trainable=false keeps the convolution's weights, the head trains"
    # optim.schedule: every step's learning rate in logs/learning_rate.csv,
    # the last step's of each epoch in the metrics (linear decay to 0 over 64 steps)
    run 1 "$work/linear" --set optim.schedule=linear
    lr_log=$work/linear/logs/learning_rate.csv
    [ "$(wc -l < "$lr_log")" -eq 65 ] || { echo "FAIL: $lr_log has not 64 steps"; exit 1; }
    want=$(awk -F, '$1 == 16 || $1 == 64 { printf "%s ", $3 }' "$lr_log")
    got=$(awk -F, 'NR > 1 && ($1 == 1 || $1 == 4) { printf "%s ", $6 }' "$work/linear/logs/metrics.csv")
    awk -v w="$want" -v g="$got" 'BEGIN { split(w, a, " "); split(g, b, " ");
        d = a[1] - b[1]; if (d < 0) d = -d;
        exit !(a[1] > 0 && a[2] == 0 && d < 1e-5 * a[1] && b[2] == 0) }' ||
        { echo "FAIL: linear schedule: steps 16, 64 have '$want', the metrics '$got'"; exit 1; }
    echo "ok: optim.schedule=linear: logged and applied ($want)"
    ;;
resume)
    for to in 3 1; do
        set +e
        CFX_FAULT_STEP=37 run 2 "$work/stop$to" # epoch 3, step 5 of 16
        code=$?
        set -e
        [ "$code" -eq 3 ] || { echo "FAIL: the stopped run exited with $code, expected 3"; exit 1; }
        if grep -q '^lookahead_steps = [1-9]' "$config"; then # /model: the average, 2 steps old
            ! h5diff "$work/stop$to/checkpoints/last.h5" "$work/stop$to/checkpoints/last.h5" \
                /model/conv1.weight /optimizer/conv1.weight/fast_weights > /dev/null ||
                { echo "FAIL: lookahead: /model equals the fast weights at step 37"; exit 1; }
        fi
        run "$to" "$work/stop$to" --resume "$work/stop$to/checkpoints/last.h5"
        expect_same "$work/np1" "$work/stop$to" "stopped on 2 ranks, resumed on $to"
        epochs=$(tail -n +2 "$work/stop$to/logs/metrics.csv" | cut -d, -f1 | tr '\n' ' ')
        [ "$epochs" = "1 2 3 4 " ] || { echo "FAIL: metrics epochs '$epochs'"; exit 1; }
    done
    ;;
esac
