#!/usr/bin/env bash
# Tests of the job scripts (jobs/) and of cfx-train's terminal output:
#  - shellcheck passes on every script of jobs/ and on this test;
#  - jobs/train.sbatch outside SLURM trains a tiny run in a run directory of
#    its own, with the effective config copied there (and valid);
#  - with the SLURM_* variables of a 1-node allocation, USR1 to the batch
#    shell during training ends in exit 3 and `scontrol requeue <job id>`
#    (scontrol is a stub on PATH), and the second start of the same job
#    resumes from last.h5 and finishes;
#  - jobs/sweep.sbatch as 2 array tasks trains one run per item and its
#    --summary ranks them by best validation accuracy;
#  - jobs/local.sh runs the same training with mpirun -np 2;
#  - cfx-train draws a progress bar with '\r' on a terminal (under `script`),
#    alone and under mpirun, and writes no '\r' when its output is a file;
#    a misspelled key suggests the right one with exit code 2.
#
# usage: jobs_test.sh CFX_TRAIN SOURCE_DIR DATA_DIR WORK_DIR MPIRUN
set -euo pipefail
train=$1 src=$2 data=$3 work=$4 mpirun=$5
rm -rf "$work"
mkdir -p "$work/bin"
# Outside SLURM unless this test says otherwise (CI may itself run in a job).
unset "${!SLURM_@}"
fail() {
    echo "FAIL: $*"
    exit 1
}
ok() { echo "ok: $*"; }

# The scripts find the binary, the launcher and the runs folder here.
export CFX_TRAIN=$train CFX_MPIRUN=$mpirun CFX_RUNS=$work/runs
tiny="--set data.dir=$data --set data.train_limit=512 --set data.val_limit=100"
epochs_of() { tail -n +2 "$1/logs/metrics.csv" | cut -d, -f1 | tr '\n' ' '; }

# --- shellcheck -------------------------------------------------------------------
command -v shellcheck > /dev/null || fail "shellcheck is not installed (tools/install-deps.sh)"
shellcheck "$src"/jobs/*.sbatch "$src"/jobs/*.sh "$src/tests/jobs_test.sh" ||
    fail "shellcheck found problems"
(cd "$src" && shellcheck -x tools/cluster/cluster tools/cluster/rsh tools/cluster/bench-allreduce tools/cluster/predict-allreduce tests/cluster/*.sh) ||
    fail "shellcheck found problems in tools/cluster or tests/cluster"
for script in train.sbatch sweep.sbatch local.sh; do
    bash "$src/jobs/$script" --help | grep -q . || fail "$script --help prints nothing"
done
# sbatch reads #SBATCH lines only before the first command of the script.
for script in "$src"/jobs/*.sbatch; do
    awk 'NR > 1 && !/^[[:space:]]*(#|$)/ { body = 1 } /^#SBATCH/ { n++; if (body) late = 1 }
         END { exit !(n > 0 && !late) }' "$script" || fail "$script: #SBATCH lines after a command"
done
ok "shellcheck clean; --help of every script; #SBATCH lines before the first command"

# --- train.sbatch outside SLURM -------------------------------------------------------
(cd "$work" && CFX_ARGS="$tiny --set train.epochs=2" bash "$src/jobs/train.sbatch" configs/seed.ini) \
    > "$work/plain.log" 2>&1 || { cat "$work/plain.log"; fail "train.sbatch outside SLURM failed"; }
run=$(find "$work/runs" -maxdepth 1 -name 'seed-local-*' | head -n 1)
[ -n "$run" ] || fail "no run directory seed-local-* in $work/runs"
[ "$(epochs_of "$run")" = "1 2 " ] || fail "$run: epochs '$(epochs_of "$run")', expected '1 2 '"
[ -f "$run/FINISHED" ] || fail "$run: no FINISHED"
[ -f "$run/checkpoints/best.h5" ] || fail "$run: no checkpoints/best.h5"
grep -q "^dir = $run\$" "$run/config.ini" || fail "$run/config.ini does not name the run directory"
"$train" --config "$run/config.ini" --print-config > "$work/reprint.ini" ||
    fail "$run/config.ini is not a valid config"
diff <(grep -v '^#' "$run/config.ini") "$work/reprint.ini" > /dev/null ||
    fail "$run/config.ini is not the effective config"
if grep -q $'\r' "$work/plain.log"; then fail "a log file got '\\r' progress output"; fi
ok "train.sbatch outside SLURM: $run, config.ini, no '\\r' in the log"

# --- train.sbatch in a (fake) SLURM allocation: USR1, requeue, resume --------------------
cat > "$work/bin/scontrol" << EOF
#!/usr/bin/env bash
echo "\$*" >> "$work/scontrol.calls"
EOF
chmod +x "$work/bin/scontrol"
host=$(hostname)
# sbatch runs a copy of the script from its spool folder, in the submit directory.
mkdir -p "$work/spool"
cp "$src/jobs/train.sbatch" "$work/spool/train_script"
cp "$src/jobs/sweep.sbatch" "$work/spool/sweep_script"
slurm_env=(PATH="$work/bin:$PATH" SLURM_SUBMIT_DIR="$src" SLURM_JOB_NAME=cfx-train
           SLURM_NNODES=1 SLURM_JOB_NUM_NODES=1 SLURM_NODELIST="$host" SLURM_JOB_NODELIST="$host")
job=4242
slurm_job() { # slurm_job RESTART_COUNT LOG: train.sbatch as job 4242, 2 tasks x 1 cpu
    # Run in a subshell: exec makes its pid the batch shell's, as in SLURM.
    cd "$src"
    exec env "${slurm_env[@]}" SLURM_JOB_ID=$job SLURM_JOBID=$job SLURM_RESTART_COUNT="$1" \
        SLURM_NTASKS=2 SLURM_NPROCS=2 SLURM_TASKS_PER_NODE=2 SLURM_CPUS_PER_TASK=1 \
        SLURM_JOB_CPUS_PER_NODE=2 SLURM_CPUS_ON_NODE=2 \
        CFX_ARGS="$tiny --set data.train_limit=2048 --set train.epochs=4" \
        bash "$work/spool/train_script" configs/seed.ini > "$2" 2>&1
}
run="$work/runs/seed-$job"
slurm_job 0 "$work/slurm1.log" &
batch=$! # the pid of the batch shell (bash train.sbatch)
for _ in $(seq 1 600); do # until epoch 1 is done: last.h5 exists
    [ -f "$run/checkpoints/last.h5" ] && break
    kill -0 "$batch" 2> /dev/null || break
    sleep 0.1
done
[ -f "$run/checkpoints/last.h5" ] || { cat "$work/slurm1.log"; fail "the SLURM job wrote no last.h5"; }
kill -USR1 "$batch"
rc=0
wait "$batch" || rc=$?
[ "$rc" -eq 3 ] || { cat "$work/slurm1.log"; fail "USR1 to the batch shell: exit $rc, expected 3"; }
[ "$(cat "$work/scontrol.calls" 2> /dev/null)" = "requeue $job" ] ||
    { cat "$work/slurm1.log"; fail "scontrol was not called as 'requeue $job'"; }
grep -q "2 ranks, 1 BLAS thread per rank" "$work/slurm1.log" ||
    fail "the job did not run 2 ranks with SLURM_CPUS_PER_TASK=1 BLAS thread"
[ ! -f "$run/FINISHED" ] || fail "a stopped run is marked FINISHED"
ok "USR1 to the SLURM batch shell: exit 3, 'scontrol requeue $job'"
(slurm_job 1 "$work/slurm2.log") || { cat "$work/slurm2.log"; fail "the requeued job failed"; }
grep -q "resumed from $run/checkpoints/last.h5" "$work/slurm2.log" ||
    { cat "$work/slurm2.log"; fail "the requeued job did not resume from last.h5"; }
[ "$(epochs_of "$run")" = "1 2 3 4 " ] || fail "after the resume: epochs '$(epochs_of "$run")'"
[ -f "$run/FINISHED" ] || fail "the resumed run is not FINISHED"
[ "$(wc -l < "$work/scontrol.calls")" -eq 1 ] || fail "a finished job called scontrol again"
if grep -q $'\r' "$work/slurm1.log" "$work/slurm2.log"; then fail "'\\r' in the SLURM log"; fi
ok "the requeued job resumed from last.h5 and finished epochs 1..4"

# --- sweep.sbatch: two array tasks and the summary ------------------------------------
for task in 0 1; do
    (cd "$src" && env "${slurm_env[@]}" SLURM_ARRAY_JOB_ID=5000 SLURM_ARRAY_TASK_ID=$task \
        SLURM_JOB_ID=$((5001 + task)) SLURM_JOBID=$((5001 + task)) SLURM_NTASKS=1 SLURM_NPROCS=1 \
        SLURM_TASKS_PER_NODE=1 SLURM_CPUS_PER_TASK=2 SLURM_JOB_CPUS_PER_NODE=2 \
        CFX_SWEEP="optim.lr=0.003 optim.lr=0.0001" CFX_ARGS="$tiny --set train.epochs=2" \
        bash "$work/spool/sweep_script" configs/seed.ini > "$work/sweep$task.log" 2>&1) ||
        { cat "$work/sweep$task.log"; fail "sweep task $task failed"; }
done
grep -q "1 rank, 2 BLAS threads per rank" "$work/sweep0.log" ||
    fail "the sweep task did not use SLURM_CPUS_PER_TASK=2 BLAS threads"
sweep="$work/runs/sweep-5000"
grep -q '^lr = 0.003$' "$sweep/00-optim.lr_0.003/config.ini" || fail "task 0 did not train lr 0.003"
grep -q '^lr = 0.0001$' "$sweep/01-optim.lr_0.0001/config.ini" || fail "task 1 did not train lr 0.0001"
bash "$src/jobs/sweep.sbatch" --summary "$sweep" > "$work/summary.txt"
cat "$work/summary.txt"
awk 'NR == 2 && $1 == 1 && $5 == "finished" { a = $2 } NR == 3 && $1 == 2 && $5 == "finished" { b = $2 }
     END { exit !(a != "" && b != "" && a + 0 >= b + 0 && NR == 3) }' "$work/summary.txt" ||
    fail "the summary does not rank the 2 finished runs by validation accuracy"
ok "sweep: 2 array tasks in $sweep, ranked by the summary"

# --- local.sh ----------------------------------------------------------------------
CFX_ARGS="$tiny --set train.epochs=1" bash "$src/jobs/local.sh" -n 2 configs/seed.ini \
    > "$work/local.log" 2>&1 || { cat "$work/local.log"; fail "local.sh failed"; }
grep -q "2 ranks" "$work/local.log" || fail "local.sh did not run 2 ranks"
find "$work/runs" -maxdepth 2 -path '*seed-local-*/FINISHED' | grep -q . || fail "local.sh: no finished run"
ok "local.sh -n 2"

# --- cfx-train on a terminal and not ---------------------------------------------------
one=(--config "$src/configs/seed.ini" --set data.dir="$data" --set data.train_limit=1024
     --set data.val_limit=100 --set train.epochs=1)
bar=$'\repoch   1/1 ['
script -qec "$(printf '%q ' "$train" "${one[@]}" --set output.dir="$work/tty1")" /dev/null \
    > "$work/tty1.txt" || fail "cfx-train under script failed"
grep -aF "$bar" "$work/tty1.txt" | grep -aq 'img/s  ETA' || fail "no '\\r' progress bar on a terminal"
script -qec "$(printf '%q ' "$mpirun" -np 2 "$train" "${one[@]}" --set output.dir="$work/tty2")" \
    /dev/null > "$work/tty2.txt" || fail "mpirun cfx-train under script failed"
grep -aF "$bar" "$work/tty2.txt" | grep -aq 'img/s  ETA' || fail "no progress bar under mpirun on a terminal"
"$mpirun" -np 2 "$train" "${one[@]}" --set output.dir="$work/file" > "$work/file.txt"
if grep -q $'\r' "$work/file.txt"; then fail "'\\r' in output to a file (under mpirun)"; fi
grep -q '^epoch   1/1  train loss' "$work/file.txt" || fail "no plain epoch line in a file"
rc=0
"$mpirun" -np 2 "$train" "${one[@]}" --set train.lr=0.1 > "$work/typo.txt" 2>&1 || rc=$?
[ "$rc" -eq 2 ] || fail "a misspelled key: exit $rc, expected 2"
[ "$(grep -c "unknown config key 'train.lr' (did you mean 'optim.lr'?)" "$work/typo.txt")" -eq 1 ] ||
    { cat "$work/typo.txt"; fail "the misspelled key is not reported once with 'optim.lr'"; }
ok "progress bar on a terminal (alone and under mpirun), plain lines in a file; typo -> optim.lr"
echo "PASS: job scripts and terminal output"
