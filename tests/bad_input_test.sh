#!/usr/bin/env bash
# Bad input to cfx-train, end to end: bad data files, bad checkpoints for
# --resume and --eval, bad configs, more ranks than images, output
# directories that are missing (created) or cannot be made, a checkpoint
# write that fails, and divergence (a non-finite loss or gradient). Each
# failing case must end with the documented exit code (2: command line or
# config, 1: data, checkpoint, I/O or divergence), exactly one line on
# stderr that names the file or key and the problem, and never a crash;
# where a run directory already holds best.h5 and last.h5, both must be
# byte-identical afterwards.
#
# usage: bad_input_test.sh CFX_TRAIN CKPT_TOOL CONFIG DATA_DIR WORK_DIR -- MPIEXEC ARGS...
set -euo pipefail
train=$1 tool=$2 config=$3 data=$4 work=$5
shift 6
mpiexec=("$@")
rm -rf "$work"
mkdir -p "$work"

passed=0 failed=0
small=(--config "$config" --quiet --set data.dir="$data" --set data.train_limit=256
       --set data.val_limit=100 --set runtime.blas_threads=1 --set train.epochs=1)

ok() {
    echo "ok: $1"
    passed=$((passed + 1))
}

bad() {
    echo "FAIL: $1"
    failed=$((failed + 1))
}

# expect NAME CODE PATTERN [-np N] -- ARGS...: runs cfx-train ARGS (under
# mpirun with N ranks if given) and checks the exit code and that stderr is
# one line "cfx-train: ..." matching the extended regex PATTERN.
expect() {
    local name=$1 want=$2 pattern=$3
    shift 3
    local cmd=("$train")
    if [ "$1" = -np ]; then
        cmd=("${mpiexec[@]}" "$2" --quiet "$train")
        shift 2
    fi
    shift # --
    local code=0
    "${cmd[@]}" "$@" > "$work/stdout" 2> "$work/stderr" || code=$?
    local lines
    lines=$(wc -l < "$work/stderr")
    if [ "$code" -ne "$want" ]; then
        bad "$name: exit code $code, expected $want; stderr:"
        sed 's/^/    /' "$work/stderr"
    elif [ "$want" -ne 0 ] && [ "$lines" -ne 1 ]; then
        bad "$name: $lines lines on stderr, expected 1:"
        sed 's/^/    /' "$work/stderr"
    elif [ "$want" -ne 0 ] && ! grep -qE "^cfx-train: .*$pattern" "$work/stderr"; then
        bad "$name: stderr does not match '$pattern': $(cat "$work/stderr")"
    elif [ "$want" -eq 0 ] && [ -s "$work/stderr" ]; then
        bad "$name: succeeded but wrote to stderr: $(cat "$work/stderr")"
    else
        ok "$name (exit $code${pattern:+: $(cat "$work/stderr")})"
    fi
}

# unchanged RUN_DIR NAME: best.h5 and last.h5 equal the saved copies.
unchanged() {
    local f
    for f in best last; do
        if cmp -s "$work/saved/$f.h5" "$1/checkpoints/$f.h5"; then
            ok "$2: $f.h5 byte-identical"
        else
            bad "$2: $f.h5 changed"
        fi
    done
}

# ---- data files ---------------------------------------------------------------
# data_with NAME: a copy of the data folder (links) in which the caller
# replaces files.
data_with() {
    local dir=$work/data-$1 f
    mkdir -p "$dir"
    for f in "$data"/data_batch_{1..5}.bin "$data"/test_batch.bin; do
        ln -sf "$f" "$dir/"
    done
    echo "$dir"
}
expect "missing data folder" 1 "$work/nodata/data_batch_1.bin: cannot open: No such file" \
    -- "${small[@]}" --set data.dir="$work/nodata" --set output.dir="$work/out-data"
touch "$work/plainfile"
expect "data folder is a file" 1 "plainfile/data_batch_1.bin: cannot open: Not a directory" \
    -- "${small[@]}" --set data.dir="$work/plainfile" --set output.dir="$work/out-data"
d=$(data_with partial)
rm "$d/data_batch_3.bin"
head -c $((3073 * 100 + 7)) "$data/data_batch_3.bin" > "$d/data_batch_3.bin"
expect "partial record" 1 "data_batch_3.bin: size 307307 bytes is not a whole number of 3073-byte records" \
    -- "${small[@]}" --set data.dir="$d" --set output.dir="$work/out-data"
d=$(data_with short)
rm "$d/data_batch_2.bin"
head -c $((3073 * 9999)) "$data/data_batch_2.bin" > "$d/data_batch_2.bin"
expect "too few records" 1 "data_batch_2.bin: holds 9999 records, expected 10000" \
    -- "${small[@]}" --set data.dir="$d" --set output.dir="$work/out-data"
d=$(data_with label)
rm "$d/data_batch_4.bin"
cp "$data/data_batch_4.bin" "$d/data_batch_4.bin"
printf '\013' | dd of="$d/data_batch_4.bin" bs=1 seek=$((3073 * 1234)) conv=notrunc status=none
expect "bad label" 1 "data_batch_4.bin: record 1234 has label 11, expected 0..9" \
    -- "${small[@]}" --set data.dir="$d" --set output.dir="$work/out-data"
d=$(data_with dir)
rm "$d/data_batch_5.bin"
mkdir "$d/data_batch_5.bin"
expect "data file is a directory" 1 "data_batch_5.bin: not a regular file" \
    -- "${small[@]}" --set data.dir="$d" --set output.dir="$work/out-data"
d=$(data_with notest)
rm "$d/test_batch.bin"
: > "$d/test_batch.bin"
expect "empty test file (found after training)" 1 "test_batch.bin: size 0 bytes" \
    -- "${small[@]}" --set data.dir="$d" --set output.dir="$work/out-data"

# ---- config and command line ----------------------------------------------------
printf '[train]\nepochs = three\n' > "$work/wrong_type.ini"
expect "config value of the wrong type" 2 "wrong_type.ini:2: train.epochs: 'three' is not an integer" \
    -- --config "$work/wrong_type.ini"
expect "--set of the wrong type" 2 "optim.lr: 'fast' is not a number" \
    -- "${small[@]}" --set optim.lr=fast
expect "zero batch" 2 "train.batch_size: 0 is out of range" -- "${small[@]}" --set train.batch_size=0
expect "negative batch" 2 "train.batch_size: -64 is out of range" \
    -- "${small[@]}" --set train.batch_size=-64
expect "missing config file" 2 "nope.ini: cannot open config: No such file" -- --config "$work/nope.ini"
expect "unknown key" 2 "unknown config key 'train.epoch'" -- "${small[@]}" --set train.epoch=3
expect "unknown option" 2 "unknown or incomplete option '--bogus'" -- "${small[@]}" --bogus

# ---- ranks and batches ------------------------------------------------------------
expect "more ranks than training images" 1 "data.train_limit: 1 training images for 2 ranks" \
    -np 2 -- "${small[@]}" --set data.train_limit=1 --set output.dir="$work/out-ranks"
# 37 images in global batches of 7 over 2 ranks: slices of 4 and 3, last batch 2.
expect "global batch 7 over 2 ranks" 0 "" \
    -np 2 -- "${small[@]}" --set data.train_limit=37 --set train.batch_size=7 \
    --set output.dir="$work/out-odd"
if [ "$(tail -n +2 "$work/out-odd/logs/metrics.csv" | wc -l)" -eq 1 ]; then
    ok "global batch 7 over 2 ranks: one epoch logged"
else
    bad "global batch 7 over 2 ranks: metrics.csv does not hold one epoch"
fi

# ---- output directories -------------------------------------------------------------
expect "missing output directory" 0 "" -- "${small[@]}" --set output.dir="$work/new/a/b"
if [ -f "$work/new/a/b/checkpoints/last.h5" ]; then
    ok "missing output directory: created, with last.h5"
else
    bad "missing output directory: $work/new/a/b/checkpoints/last.h5 was not written"
fi
expect "output directory under a regular file" 1 "plainfile: exists and is not a directory" \
    -- "${small[@]}" --set output.dir="$work/plainfile/run"

# ---- checkpoints for --resume and --eval --------------------------------------------------
run=$work/run
expect "good run" 0 "" -- "${small[@]}" --set output.dir="$run"
mkdir -p "$work/saved" "$work/ckpt"
cp "$run/checkpoints/best.h5" "$run/checkpoints/last.h5" "$work/saved/"
last=$run/checkpoints/last.h5
size=$(stat -c %s "$last")
head -c $((size / 2)) "$last" > "$work/ckpt/truncated.h5"
cp "$config" "$work/ckpt/config.h5"
: > "$work/ckpt/empty.h5"
mkdir -p "$work/ckpt/dir.h5"
cp "$last" "$work/ckpt/damaged.h5"
"$tool" damage "$work/ckpt/damaged.h5" /model/3.weight
cp "$last" "$work/ckpt/damaged_optim.h5"
"$tool" damage "$work/ckpt/damaged_optim.h5" /optimizer/10.bias/exp_avg
other=(--set "model.layers=conv2d out=16 kernel=3 padding=1; relu; maxpool2d kernel=2; conv2d out=48 kernel=3 padding=1; relu; maxpool2d kernel=4; flatten; linear out=10")

resume=("${small[@]}" --set output.dir="$run" --set train.epochs=2)
for mode in resume eval; do
    expect "--$mode truncated" 1 "truncated.h5: truncated HDF5 file \($((size / 2)) bytes\)" \
        -- "${resume[@]}" "--$mode" "$work/ckpt/truncated.h5"
    expect "--$mode not HDF5" 1 "config.h5: not an HDF5 file" \
        -- "${resume[@]}" "--$mode" "$work/ckpt/config.h5"
    expect "--$mode empty" 1 "empty.h5: empty file, not a checkpoint" \
        -- "${resume[@]}" "--$mode" "$work/ckpt/empty.h5"
    expect "--$mode directory" 1 "dir.h5: is a directory" \
        -- "${resume[@]}" "--$mode" "$work/ckpt/dir.h5"
    expect "--$mode missing" 1 "missing.h5: cannot open checkpoint: No such file" \
        -- "${resume[@]}" "--$mode" "$work/ckpt/missing.h5"
    expect "--$mode damaged" 1 "damaged.h5: damaged: checksum mismatch in /model/3.weight" \
        -- "${resume[@]}" "--$mode" "$work/ckpt/damaged.h5"
    expect "--$mode other architecture" 1 \
        "last.h5: parameter 3.weight has shape 32x16x3x3 in the file, the model expects 48x16x3x3" \
        -- "${resume[@]}" "${other[@]}" "--$mode" "$last"
    unchanged "$run" "after the failed --$mode runs"
done
expect "--resume damaged optimizer state" 1 \
    "damaged_optim.h5: damaged: checksum mismatch in /optimizer/10.bias/exp_avg" \
    -- "${resume[@]}" --resume "$work/ckpt/damaged_optim.h5"
expect "--resume with another optimizer" 1 "the checkpoint holds 'adam' optimizer state, this run uses 'sgd'" \
    -- "${resume[@]}" --set optim.name=sgd --resume "$last"
expect "--resume with another seed" 1 "last.h5: written with train.seed=1, the config has 2" \
    -- "${resume[@]}" --set train.seed=2 --resume "$last"
expect "--resume a finished run" 1 "last.h5: already trained 1 of train.epochs=1 epochs" \
    -- "${small[@]}" --set output.dir="$run" --resume "$last"
expect "--resume and --eval together" 2 "--resume and --eval cannot be combined" \
    -- "${resume[@]}" --resume "$last" --eval "$last"
unchanged "$run" "after the failed resumes"

# A checkpoint write that fails (last.h5.tmp cannot be created: a directory
# stands there, which stops root too): the previous files survive.
mkdir "$run/checkpoints/last.h5.tmp"
expect "checkpoint write fails" 1 "last.h5: cannot write checkpoint \(creating .*last.h5.tmp\): Is a directory" \
    -- "${resume[@]}" --resume "$last"
rmdir "$run/checkpoints/last.h5.tmp"
unchanged "$run" "after the failed checkpoint write"

# ---- divergence ------------------------------------------------------------------------
# Gradients that overflow while the loss stays finite: caught by the gradient check
# (with train.max_loss out of reach, which would stop it first).
"$tool" explode "$last" "$work/ckpt/exploding.h5"
expect "non-finite gradient" 1 \
    "training diverged at epoch 2, step 1: a gradient is not finite .*; the last good checkpoint is kept" \
    -- "${resume[@]}" --resume "$work/ckpt/exploding.h5" --set train.max_loss=1e300
unchanged "$run" "after the gradient divergence"
# SGD at lr 1e4 from a trained state: the loss explodes (or becomes NaN) within epoch 2.
sgd=$work/sgd
sgd_args=("${small[@]}" --set output.dir="$sgd" --set optim.name=sgd --set optim.lr=0.01)
expect "good SGD run" 0 "" -- "${sgd_args[@]}"
cp "$sgd/checkpoints/best.h5" "$sgd/checkpoints/last.h5" "$work/saved/"
expect "exploding loss (SGD, optim.lr=1e4)" 1 \
    "training diverged at epoch 2, step [0-9]+: the loss is (-?nan|[0-9.e+]+, above train.max_loss=1000); the last good checkpoint is kept" \
    -- "${sgd_args[@]}" --set optim.lr=1e4 --set train.epochs=3 --resume "$sgd/checkpoints/last.h5"
unchanged "$sgd" "after the loss divergence"
# Adam at lr 1e4: the loss grows to ~1e21 and stays finite (it would train on
# at chance accuracy); train.max_loss stops it.
expect "exploding finite loss (Adam, optim.lr=1e4)" 1 \
    "training diverged at epoch 1, step [0-9]+: the loss is [0-9.e+]+, above train.max_loss=1000; the last good checkpoint is kept" \
    -- "${small[@]}" --set output.dir="$work/adam" --set optim.lr=1e4

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
