#!/usr/bin/env bash
# Trains the seed CNN on a small subset with several rank counts and checks
# that every run sees the same per-epoch training losses: the math must not
# depend on how many ranks share each global batch. Only the order of float
# sums differs, and Adam amplifies such differences over many steps (1e-7 at
# step 1 can become 3e-5 after 32 steps), so keep runs short or use SGD.
#
# usage: mpi_consistency.sh CFX_TRAIN CONFIG DATA_DIR WORK_DIR TRAIN_LIMIT NPROCS... -- MPIEXEC ARGS...
# environment: CFX_CONSISTENCY_TOLERANCE (relative, default 1e-6),
#              CFX_CONSISTENCY_SETS (extra key=value settings, space-separated)
set -euo pipefail
train=$1 config=$2 data=$3 work=$4 limit=$5
shift 5
ranks=()
while [ "$1" != "--" ]; do ranks+=("$1"); shift; done
shift
mpiexec=("$@")
tolerance=${CFX_CONSISTENCY_TOLERANCE:-1e-6}
read -r -a extra_sets <<< "${CFX_CONSISTENCY_SETS:-}"
extra=()
for s in "${extra_sets[@]}"; do extra+=(--set "$s"); done

rm -rf "$work"
mkdir -p "$work"
for n in "${ranks[@]}"; do
    "${mpiexec[@]}" "$n" "$train" --config "$config" --quiet \
        --set data.dir="$data" --set output.dir="$work/np$n" \
        --set train.epochs=2 --set data.train_limit="$limit" --set data.val_limit=200 --set data.test_limit=500 \
        --set runtime.blas_threads=1 "${extra[@]}"
    lines=$(wc -l < "$work/np$n/logs/metrics.csv")
    if [ "$lines" -ne 3 ]; then
        echo "FAIL: $n ranks wrote $lines lines to metrics.csv, expected a header and 2 rows"
        exit 1
    fi
done
ref=$work/np${ranks[0]}/logs/metrics.csv
status=0
for n in "${ranks[@]:1}"; do
    if ! awk -F, -v tol="$tolerance" 'NR == FNR { if (FNR > 1) loss[$1] = $2; next }
                  FNR > 1 { d = $2 - loss[$1]; if (d < 0) d = -d;
                            rel = d / loss[$1];
                            printf "epoch %d: %s vs %s train loss, relative difference %.2e\n", $1, loss[$1], $2, rel;
                            if (rel > tol) bad = 1 }
                  END { exit bad }' "$ref" "$work/np$n/logs/metrics.csv"; then
        echo "FAIL: ${ranks[0]} and $n ranks differ by more than $tolerance"
        status=1
    fi
done
[ $status -eq 0 ] && echo "PASS: ranks ${ranks[*]} agree on $limit images"
exit $status
