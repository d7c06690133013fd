#!/usr/bin/env bash
# Runs exact_sum_mpi with each rank count given and checks that every run
# passes its own checks and that all print the same digest: the exact sums
# are bitwise the same for any number of ranks.
#
# usage: exact_sum_mpi.sh PROGRAM NPROCS... -- MPIEXEC ARGS...
set -euo pipefail
prog=$1
shift
ranks=()
while [ "$1" != "--" ]; do ranks+=("$1"); shift; done
shift
mpiexec=("$@")
first=
for n in "${ranks[@]}"; do
    line=$("${mpiexec[@]}" "$n" "$prog") || { echo "FAIL: $n ranks: ${line:-no output}"; exit 1; }
    echo "$line"
    digest=$(echo "$line" | awk '{ for (i = 1; i < NF; i++) if ($i == "digest") print $(i + 1) }')
    first=${first:-$digest}
    if [ "$digest" != "$first" ]; then
        echo "FAIL: $n ranks give digest $digest, ${ranks[0]} ranks $first"
        exit 1
    fi
done
echo "PASS: ranks ${ranks[*]} give bitwise the same sums"
