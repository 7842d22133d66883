#!/bin/sh
# Builds the release agent and benchmark, prints the machine, then runs
# freeauth-bench-agent with this script's arguments (see --help).
# Example: bench/run-agent-bench.sh --tokens 1000,100000 --duration 5
set -eu

cd "$(dirname "$0")/.."

cargo build --release -p freeauth-agentd -p freeauth-bench

echo "cpus: $(getconf _NPROCESSORS_ONLN) online, $(nproc) usable by this shell"
echo "cpu model: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(grep -m1 '^MemTotal' /proc/meminfo | awk '{printf "%.1f GiB", $2 / 1048576}')"
echo "temporary folder: ${TMPDIR:-/tmp} on $(df --output=fstype "${TMPDIR:-/tmp}" | tail -n 1) ($(df --output=source "${TMPDIR:-/tmp}" | tail -n 1))"
echo "kernel: $(uname -r)"

exec target/release/freeauth-bench-agent "$@"
