#!/bin/sh
# Builds the release agent, PAM module and benchmark, prints the machine,
# installs libpam0g-dev (to build the module) and libpam-oath when they are
# missing and this script runs as root, then runs freeauth-bench-pam with
# this script's arguments (see --help).
# Example: bench-pam/run.sh --users 100,10000,1000000 --duration 5
set -eu

cd "$(dirname "$0")/.."

if ! ls /usr/lib/*/libpam.so >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get install -y libpam0g-dev
    else
        echo "error: libpam.so is missing; run apt-get install -y libpam0g-dev as root" >&2
        exit 2
    fi
fi

cargo build --release -p freeauth-agentd -p pam_freeauth -p freeauth-bench-pam

oath_module=/usr/lib/x86_64-linux-gnu/security/pam_oath.so
if [ ! -e "$oath_module" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get install -y libpam-oath
    else
        echo "warning: $oath_module is missing; install libpam-oath as root or pass --skip-oath" >&2
    fi
fi

tmp="${TMPDIR:-/tmp}"
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpus: $(nproc)"
echo "cpu model: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
echo "temporary folder: $tmp on $(df --output=fstype "$tmp" | tail -n 1) ($(df --output=source "$tmp" | tail -n 1))"
echo "kernel: $(uname -r)"
echo "libpam: $(dpkg-query -W -f '${Version}' libpam0g 2>/dev/null || echo unknown), libpam-oath: $(dpkg-query -W -f '${Version}' libpam-oath 2>/dev/null || echo not installed)"
echo "load: $(uptime)"

exec target/release/freeauth-bench-pam "$@"
