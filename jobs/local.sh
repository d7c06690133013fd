#!/usr/bin/env bash
# Trains cfx on this machine (a laptop or a workstation) with mpirun -np N:
# the same run as jobs/train.sbatch on a cluster, which it calls outside
# SLURM: a run directory of its own under outputs/, the effective config
# copied there, and a resume from last.h5 when you name a stopped run.
#
#   jobs/local.sh [-n N] [CONFIG] [cfx-train options...]
#   jobs/local.sh configs/quick.ini                      # 2 ranks, about a minute
#   jobs/local.sh -n 4 configs/seed.ini --set optim.lr=3e-4
#
# N defaults to 2 (CFX_NP); CONFIG to configs/seed.ini. Each rank gets
# cores / N OpenBLAS threads. Ctrl-C (or kill -USR1 <this script>) stops
# every rank after the same step; rank 0 writes checkpoints/last.h5 and the
# exit code is 3. To continue, run the same command with the run directory
# it printed:  CFX_RUN_DIR=outputs/seed-local-20250101-120000 jobs/local.sh
#
# The other settings (CFX_TRAIN, CFX_RUNS, CFX_ARGS, CFX_MPIRUN_ARGS, ...) are
# those of jobs/train.sbatch (jobs/train.sbatch --help). As root, Open MPI
# also wants OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
set -euo pipefail

case "${1:-}" in -h | --help)
    sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;s/^#$//;p}' "${BASH_SOURCE[0]}"
    exit 0
    ;;
esac

np=${CFX_NP:-2}
if [ "${1:-}" = -n ] || [ "${1:-}" = -np ]; then
    [ $# -ge 2 ] || { echo "local.sh: $1 needs a number of ranks" >&2; exit 2; }
    np=$2
    shift 2
fi
case "$np" in '' | *[!0-9]* | 0)
    echo "local.sh: bad number of ranks '$np'" >&2
    exit 2
    ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# exec keeps this process (and its pid) for train.sbatch: signals sent to
# this script reach train.sbatch's trap.
CFX_LOCAL=1 CFX_NP=$np exec bash "$here/train.sbatch" "$@"
