#!/usr/bin/env bash
# Installs what cfx needs to build, test and draw on Debian 12 (bookworm).
set -euo pipefail
packages=(
    build-essential cmake pkg-config git
    libopenmpi-dev openmpi-bin
    libopenblas-dev libopenblas-openmp-dev
    libhdf5-dev hdf5-tools
    libinih-dev libcmocka-dev
    libcairo2-dev libpango1.0-dev fonts-dejavu-core chromium
    shellcheck curl ca-certificates
    valgrind clang-14 libclang-rt-14-dev
    iproute2 util-linux procps psmisc
    slurmctld slurmd slurm-client munge
)
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"

# The explorer's browser test (tests/explorer): Node.js (Debian's if the
# machine has none) and puppeteer-core at the version package-lock.json pins;
# it drives the chromium above and downloads no browser.
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
    $sudo apt-get install -y -qq --no-install-recommends nodejs npm
fi
root=$(cd "$(dirname "$0")/.." && pwd)
npm ci --prefix "$root/tests/explorer" --no-audit --no-fund --loglevel=error
