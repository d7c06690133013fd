#!/usr/bin/env bash
# SLURM on 2 emulated hosts: `sbatch --nodes=2 --ntasks-per-node=1
# jobs/train.sbatch configs/quick.ini` (on a subset) runs one rank per host,
# over TCP between the hosts (the traffic shows on the second host's link);
# the log names both hosts; every per-epoch metric equals that of the same
# run with 2 ranks on one host (shared memory) to 1e-6 relative, and with the
# exact reduction (the default) its weights and optimizer state are bitwise
# those of 1 rank on one host.
#
# usage: two_nodes_test.sh CFX_TRAIN SOURCE_DIR DATA_DIR WORK_DIR -- MPIEXEC ARGS...
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
sets=(--set data.dir="$data" --set data.train_limit=2048 --set data.val_limit=500 --set train.epochs=3)

rx() { "$cluster" exec cfx-node2 cat /proc/net/dev | awk -F'[: ]+' '$2 == "eth0" { print $3 }'; }
rx0=$(rx)
start=$(now)
job=$(submit "$work/job.out" configs/quick.ini "${sets[@]}")
wait_for 60 "job $job finished" job_gone "$job"
cat "$work/job.out"
run=$work/runs/quick-$job
[ -f "$run/FINISHED" ] || fail "job $job did not finish"
ok "sbatch --nodes=2 job $job finished in $(since "$start") s"
grep -q '^hosts: cfx-node1 (rank 0), cfx-node2 (rank 1)$' "$work/job.out" ||
    fail "the log does not name cfx-node1 and cfx-node2 as the hosts of ranks 0 and 1"
bytes=$(($(rx) - rx0))
# 3 epochs x 32 steps x 135 KB of gradients at least reach the second host.
[ "$bytes" -gt $((3 * 32 * 135000)) ] || fail "only $bytes bytes reached cfx-node2 over its link"
ok "ranks on cfx-node1 and cfx-node2; $bytes bytes reached cfx-node2 over TCP"

"${mpiexec[@]}" 2 "$train" --config "$src/configs/quick.ini" --quiet "${sets[@]}" \
    --set runtime.blas_threads=1 --set output.dir="$work/local"
[ "$(epochs_of "$run")" = "1 2 3 " ] || fail "epochs '$(epochs_of "$run")' on the cluster"
# Columns 2-5: train loss and accuracy, validation loss and accuracy.
awk -F, 'NR == FNR { for (c = 2; c <= 5; c++) ref[FNR, c] = $c; next }
         FNR > 1 { for (c = 2; c <= 5; c++) { d = $c - ref[FNR, c]; if (d < 0) d = -d;
                   if (d > 1e-6 * (ref[FNR, c] < 0 ? -ref[FNR, c] : ref[FNR, c])) {
                       printf "epoch %s column %d: %s on one host, %s on two\n", $1, c, ref[FNR, c], $c; bad = 1 } } }
         END { exit bad }' "$work/local/logs/metrics.csv" "$run/logs/metrics.csv" ||
    fail "the 2-host run's metrics differ from 2 ranks on one host"
ok "per-epoch metrics of 2 hosts equal 2 ranks on one host (1e-6)"

"${mpiexec[@]}" 1 "$train" --config "$src/configs/quick.ini" --quiet "${sets[@]}" \
    --set runtime.blas_threads=1 --set output.dir="$work/one"
for g in /model /optimizer; do
    h5diff "$work/one/checkpoints/last.h5" "$run/checkpoints/last.h5" "$g" "$g" > /dev/null ||
        fail "$g of the 2-host run is not bitwise that of 1 rank on one host"
done
ok "/model and /optimizer of 2 hosts are bitwise those of 1 rank on one host"
echo "PASS: SLURM job on 2 emulated hosts"
