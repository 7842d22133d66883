#!/usr/bin/env bash
# Compares FreeRADIUS 3.2 with rlm_totp against the FreeAuth agent and
# RADIUS bridge under the same RADIUS load from freeauth-radload, on
# loopback only. Both servers get the same users (TOTP, SHA-1, 6 digits,
# 30 s) and the same shared secret with Message-Authenticator required.
# Each run keeps IN_FLIGHT requests in flight for DURATION seconds and
# starts at a new 30-second step. Every setting runs ROUNDS times,
# alternating between the servers. The script prints every run, the
# medians, the ratios, the resident memory after the load, and whether each
# server accepts a code a second time. For each run it also prints how much
# of a CPU each server thread used and how long it waited for one.
#
# Run as root (apt-get and the FreeRADIUS configuration need it):
#   radload/bench-freeradius.sh
#   USERS=1000000 DURATION=10 ROUNDS=3 IN_FLIGHT="16 64" radload/bench-freeradius.sh
#
# Installing freeradius: Debian's postinst starts the packaged service
# (port 1812 on all addresses) through invoke-rc.d, which obeys
# /usr/sbin/policy-rc.d. If that file already denies the start (exit 101,
# as in Debian container images) it is left alone. Otherwise the script
# moves it aside, installs one that denies every start for the duration of
# the apt-get call only, and restores the original right after, also on
# error or Ctrl-C. If a freeradius process appears anyway, the script
# reports it and stops it by its PID. On a systemd host the package still
# enables freeradius.service for the next boot; the script prints a note
# and leaves that choice to the administrator.
#
# Every server this script starts binds 127.0.0.1 high ports or Unix
# sockets in its temporary folder, and is stopped by PID on exit. KEEP=1
# keeps the temporary folder (logs, configurations, JSON results).
set -euo pipefail

USERS=${USERS:-1000000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
IN_FLIGHT=${IN_FLIGHT:-"16 64"}
KEEP=${KEEP:-0}
# Share of the machine's CPU time that other processes, or the hypervisor
# (steal time), may take before a run counts as disturbed.
DISTURBED_SHARE=${DISTURBED_SHARE:-0.1}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
RADLOAD="$BIN/freeauth-radload"
POLICY=/usr/sbin/policy-rc.d

WORK=""
STARTED_PIDS=()
AGENT_PID=""
POLICY_BACKUP=""
POLICY_OURS=0

log() { printf '%s\n' "$*" >&2; }

# Stops a process this script started: SIGTERM, then SIGKILL after 15 s.
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "process $pid ignored SIGTERM for 15 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

restore_policy() {
    if [ "$POLICY_OURS" = 1 ]; then
        rm -f "$POLICY"
        POLICY_OURS=0
        if [ -n "$POLICY_BACKUP" ]; then
            mv "$POLICY_BACKUP" "$POLICY"
            POLICY_BACKUP=""
        fi
        log "restored the original state of $POLICY"
    fi
}

cleanup() {
    local status=$?
    restore_policy
    for pid in "${STARTED_PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "$KEEP" = 1 ]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A UDP port on 127.0.0.1 that nothing listens on now.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if [ -z "$(ss -Hlun "sport = :$port")" ]; then
            echo "$port"
            return
        fi
    done
}

# Installs Debian's freeradius without letting its postinst start the
# packaged service. See the header for the method.
install_freeradius() {
    if [ -x /usr/sbin/freeradius ] && [ -f /usr/lib/freeradius/rlm_totp.so ] && command -v radclient >/dev/null &&
        command -v oathtool >/dev/null; then
        return
    fi
    local denies=0 before after pid
    if [ -x "$POLICY" ]; then
        "$POLICY" freeradius start >/dev/null 2>&1 || [ $? -ne 101 ] || denies=1
    fi
    if [ "$denies" = 0 ]; then
        if [ -e "$POLICY" ]; then
            POLICY_BACKUP=$(mktemp /usr/sbin/policy-rc.d.radload-backup.XXXXXX)
            mv "$POLICY" "$POLICY_BACKUP"
        fi
        POLICY_OURS=1
        printf '#!/bin/sh\n# Installed by radload/bench-freeradius.sh for one apt-get call.\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        log "installed a temporary $POLICY that denies service starts"
    else
        log "$POLICY already denies service starts; leaving it as it is"
    fi

    before=$(pgrep -x freeradius || true)
    DEBIAN_FRONTEND=noninteractive apt-get install -y freeradius freeradius-utils oathtool >"$WORK/apt.log" 2>&1 || {
        tail -n 20 "$WORK/apt.log" >&2
        restore_policy
        log "apt-get install freeradius failed; its output is above"
        return 1
    }
    restore_policy

    after=$(pgrep -x freeradius || true)
    for pid in $after; do
        if ! grep -qx "$pid" <<<"$before"; then
            log "the package started a system freeradius (PID $pid) despite policy-rc.d; stopping it"
            stop_pid "$pid"
        fi
    done
    if [ -e /etc/systemd/system/multi-user.target.wants/freeradius.service ]; then
        log "note: the package enabled freeradius.service for the next boot (systemctl disable freeradius to undo)"
    fi
    [ -f /usr/lib/freeradius/rlm_totp.so ] || {
        log "/usr/lib/freeradius/rlm_totp.so is missing: this FreeRADIUS has no rlm_totp"
        return 1
    }
}

# Writes a FreeRADIUS configuration into $1 that listens on 127.0.0.1:$2,
# requires Message-Authenticator from the one client, reads TOTP-Secret per
# user from the users file $3, and checks User-Password with rlm_totp.
configure_freeradius() {
    local dir=$1 port=$2 users=$3
    mkdir -p "$dir/log" "$dir/run"
    cp -a /etc/freeradius/3.0 "$dir/raddb"
    local raddb="$dir/raddb"
    # Paths into the copy, and no switch to the freerad user: the temporary
    # folder belongs to root.
    sed -i -e "s|^raddbdir = .*|raddbdir = $raddb|" \
        -e "s|^logdir = .*|logdir = $dir/log|" \
        -e "s|^run_dir = .*|run_dir = $dir/run|" \
        -e 's|^\(\s*\)user = freerad|\1# user = freerad|' \
        -e 's|^\(\s*\)group = freerad|\1# group = freerad|' "$raddb/radiusd.conf"
    # Only the modules this site uses; the packaged thread pool, reject_delay
    # and other settings stay as shipped.
    rm -f "$raddb"/mods-enabled/* "$raddb"/sites-enabled/*
    for module in always expr totp; do
        ln -s "../mods-available/$module" "$raddb/mods-enabled/$module"
    done
    cat >"$raddb/mods-enabled/files" <<EOF
files {
	moddir = \${modconfdir}/\${.:instance}
	filename = $users
}
EOF
    cat >"$raddb/sites-enabled/bench" <<EOF
server bench {
	listen {
		type = auth
		ipaddr = 127.0.0.1
		port = $port
	}
	authorize {
		files
		if (!&control:TOTP-Secret) {
			reject
		}
		update request {
			&TOTP-Password := &User-Password
		}
		update control {
			&Auth-Type := totp
		}
	}
	authenticate {
		totp
	}
}
EOF
    cat >"$raddb/clients.conf" <<EOF
client radload {
	ipaddr = 127.0.0.1
	secret = $(cat "$WORK/secret")
	require_message_authenticator = yes
}
EOF
    chmod 600 "$raddb/clients.conf"
}

configure_freeauth() {
    local dir=$1 port=$2
    mkdir -p "$dir/agent" "$dir/bridge"
    chmod 700 "$dir/agent" "$dir/bridge"
    # Packaged defaults except the paths.
    cat >"$dir/agent/agentd.toml" <<EOF
[paths]
state_dir = "state"
seed_key = "state/seed.key"
agent_socket = "run/agent.sock"
admin_socket = "run/admin.sock"
[access]
[windows]
[lockout]
[server]
[enroll]
EOF
    cat >"$dir/bridge/radius.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
agent_socket = "$dir/agent/run/agent.sock"
state_dir = "$dir/bridge/state"

[[client]]
name = "radload"
address = "127.0.0.1"
secret_file = "$WORK/secret"
EOF
    chmod 600 "$dir/bridge/radius.toml"
}

# Starts freeauth-agentd in $WORK/freeauth/agent, waits for its admin
# socket, and sets AGENT_PID.
start_agent() {
    rm -f "$WORK/freeauth/agent/run/admin.sock"
    (cd "$WORK/freeauth/agent" && exec "$BIN/freeauth-agentd" --config agentd.toml 2>>agentd.log) &
    AGENT_PID=$!
    STARTED_PIDS+=("$AGENT_PID")
    for _ in $(seq 200); do
        [ -S "$WORK/freeauth/agent/run/admin.sock" ] && return
        sleep 0.1
    done
    log "freeauth-agentd did not open its admin socket within 20 s; end of its log:"
    tail -n 5 "$WORK/freeauth/agent/agentd.log" >&2
    exit 1
}

# CPU ticks (1/100 s) used so far by the given PIDs together.
cpu_ticks() {
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{printf "%.0f\n", $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}

# Busy CPU ticks of the whole machine (all fields but idle and iowait).
# mawk prints a sum of 2^31 or more as "2.148e+09", which bash arithmetic
# rejects, so the sums go through printf.
machine_ticks() {
    awk '/^cpu /{printf "%.0f\n", $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

# Steal ticks of the whole machine: time the hypervisor ran something else
# while this virtual machine had work to do. They count as busy above.
steal_ticks() {
    awk '/^cpu /{print $9}' /proc/stat
}

memory_kib() {
    awk -v field="$2" '$1 == field":" {print $2}' "/proc/$1/status"
}

# Prints "PID KIND TICKS COMMAND" for every process: KIND k for a kernel
# thread (PF_KTHREAD), u otherwise; TICKS is user plus system time.
process_ticks() {
    local file line rest pid command
    local -a fields
    for file in /proc/[0-9]*/stat; do
        { read -r line <"$file"; } 2>/dev/null || continue
        pid=${file#/proc/}
        pid=${pid%/stat}
        rest=${line##*) }
        command=${line#*(}
        command=${command%)*}
        read -r -a fields <<<"$rest"
        # After the command: state, ppid, ..., flags (7th), ..., utime (12th), stime (13th).
        printf '%s %s %s %s\n' "$pid" "$(((fields[6] & 0x200000) ? 1 : 0))" "$((fields[11] + fields[12]))" "${command// /_}"
    done
}

# other_load BEFORE AFTER PID...: CPU seconds that other processes (u) and
# kernel threads (k, such as block I/O workers) used between two
# process_ticks outputs, and the three busiest other processes. A process
# that both started and ended between the two is not seen.
other_load() {
    local before=$1 after=$2
    shift 2
    awk -v ours=" $* " '
        NR == FNR { start[$1] = $3; next }
        index(ours, " " $1 " ") == 0 {
            # A process that started during the run counts with all its time.
            delta = ($1 in start) ? $3 - start[$1] : $3
            if ($2 == 1) kernel += delta; else { user += delta; by[$4] += delta }
        }
        END {
            top = ""
            for (round = 0; round < 3; round++) {
                best = ""; most = 0
                for (name in by) if (by[name] > most) { best = name; most = by[name] }
                if (best == "") break
                top = top (top == "" ? "" : ", ") best " " most / 100 " s"
                delete by[best]
            }
            printf "%.2f %.2f %s\n", user / 100, kernel / 100, (top == "" ? "none" : top)
        }' "$before" "$after"
}

# Sleeps until the next 30-second TOTP step begins, so that no user of the
# run was sent in the current step by an earlier run.
sleep_to_next_step() {
    local now
    now=$(date +%s.%N)
    sleep "$(awk -v t="$now" 'BEGIN {printf "%.3f", 30 - (t % 30) + 0.05}')"
}

# The CPUs that /proc/stat counts. nproc counts only the CPUs this shell may
# run on, which is fewer under taskset or a cpuset, and would lower the
# share of other load that marks a run as disturbed.
online_cpus() {
    getconf _NPROCESSORS_ONLN
}

# thread_times PID...: one line per thread of the processes: the thread's
# name (characters that JSON or awk would need escaped become _), its id,
# and its time running and waiting for a CPU in nanoseconds, from
# /proc/PID/task/TID/schedstat.
thread_times() {
    local pid task
    for pid in "$@"; do
        for task in /proc/"$pid"/task/*; do
            [ -r "$task/schedstat" ] || continue
            printf '%s %s %s\n' "$(tr -c 'A-Za-z0-9_.:/\n-' _ <"$task/comm")" "${task##*/}" "$(cut -d' ' -f1-2 "$task/schedstat")"
        done 2>/dev/null
    done
}

# thread_split BEFORE AFTER SECONDS: JSON array of the threads' running and
# waiting time in cores, summed by thread name, without threads that ran
# less than 0.001 cores. A thread that started during the run counts from
# zero.
thread_split() {
    awk -v seconds="$3" '
        NR == FNR { run[$2] = $3; wait[$2] = $4; next }
        { by_run[$1] += $3 - run[$2]; by_wait[$1] += $4 - wait[$2] }
        END {
            printf "["
            sep = ""
            for (name in by_run) {
                if (by_run[name] / 1e9 / seconds < 0.001) continue
                printf "%s{\"name\":\"%s\",\"run_cores\":%.3f,\"wait_cores\":%.3f}", sep, name, by_run[name] / 1e9 / seconds, by_wait[name] / 1e9 / seconds
                sep = ","
            }
            printf "]\n"
        }' "$1" "$2"
}

# run_load NAME PORT IN_FLIGHT ROUND PID...: one measured run, saved as JSON
# with the server's CPU time and the machine's other load added.
run_load() {
    local name=$1 port=$2 in_flight=$3 round=$4
    shift 4
    local out="$WORK/results/$name-$in_flight-$round.json"
    local load server_before machine_before server_after machine_after others steal_before steal_after
    local started seconds

    sleep_to_next_step
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    process_ticks >"$WORK/ticks.before"
    server_before=$(cpu_ticks "$@")
    machine_before=$(machine_ticks)
    steal_before=$(steal_ticks)
    thread_times "$@" >"$WORK/threads.before"
    started=$(date +%s.%N)
    "$RADLOAD" run --users "$WORK/users.txt" --server "127.0.0.1:$port" --secret-file "$WORK/secret" \
        --in-flight "$in_flight" --duration "$DURATION" --json >"$out.raw" 2>"$WORK/results/$name-$in_flight-$round.err"
    server_after=$(cpu_ticks "$@")
    machine_after=$(machine_ticks)
    steal_after=$(steal_ticks)
    thread_times "$@" >"$WORK/threads.after"
    seconds=$(awk -v start="$started" -v end="$(date +%s.%N)" 'BEGIN {printf "%.3f", end - start}')
    process_ticks >"$WORK/ticks.after"

    others=$(other_load "$WORK/ticks.before" "$WORK/ticks.after" "$@")
    jq --arg name "$name" --argjson round "$round" --arg load "$load" \
        --argjson server_cpu "$((server_after - server_before))" \
        --argjson machine_cpu "$((machine_after - machine_before))" \
        --argjson steal_cpu "$((steal_after - steal_before))" \
        --argjson other_processes "$(cut -d' ' -f1 <<<"$others")" \
        --argjson kernel_threads "$(cut -d' ' -f2 <<<"$others")" \
        --arg busiest "$(cut -d' ' -f3- <<<"$others")" \
        --argjson cpus "$(online_cpus)" --argjson disturbed_share "$DISTURBED_SHARE" \
        --argjson threads "$(thread_split "$WORK/threads.before" "$WORK/threads.after" "$seconds")" \
        '. + {name: $name, round: $round, loadavg_before: $load,
              server_cpu_s: ($server_cpu / 100),
              server_cpu_us_per_request: (if .requests > 0 then ($server_cpu / 100) * 1e6 / .requests else null end),
              machine_busy_cpu_s: ($machine_cpu / 100),
              steal_cpu_s: ($steal_cpu / 100),
              other_processes_cpu_s: $other_processes,
              kernel_threads_cpu_s: $kernel_threads,
              busiest_other_processes: $busiest,
              server_threads: ($threads | sort_by(-.run_cores))}
        | .unaccounted_cpu_s = ([.machine_busy_cpu_s - .server_cpu_s - .client_cpu_s - .kernel_threads_cpu_s
                                 - .other_processes_cpu_s - .steal_cpu_s, 0] | max | . * 100 | round / 100)
        | .disturbed = (.other_processes_cpu_s > $disturbed_share * $cpus * .elapsed_s
                        or .steal_cpu_s > $disturbed_share * $cpus * .elapsed_s)' \
        "$out.raw" >"$out"
    rm -f "$out.raw"
    jq -r '"\(.name)\tC=\(.in_flight)\tround \(.round)\t\(.accepts_per_s|floor) accepts/s\tp99 \(.latency.p99_ms) ms\trejects \(.rejects)\ttimeouts \(.timeouts)\tinvalid \(.invalid)\tserver \(.server_cpu_s) s, client \(.client_cpu_s) s, kernel threads \(.kernel_threads_cpu_s) s, other processes \(.other_processes_cpu_s) s (\(.busiest_other_processes)), steal \(.steal_cpu_s) s, unaccounted \(.unaccounted_cpu_s) s, machine \(.machine_busy_cpu_s) s\tload \(.loadavg_before)\(if .disturbed then "\tDISTURBED" else "" end)"' "$out" >&2
    jq -r '"  \(.name) threads, cores running / waiting for a CPU: " + ([.server_threads[] | "\(.name) \(.run_cores)/\(.wait_cores)"] | join(", "))' "$out" >&2
    # Each user has one code per 30-second step, so a run that sends more
    # than USERS requests waits for users, and its rate measures USERS.
    jq -r --argjson users "$USERS" 'select(.user_limited_s > 0)
        | "warning: \(.name) at C=\(.in_flight): for \(.user_limited_s * 10 | round / 10) s every user already had its request in this 30-second step, so USERS, not the server, capped the rate near \($users / .elapsed_s | floor) requests/s; raise USERS"' "$out" >&2
}

# replay_check NAME PORT: sends one fresh code of the check user twice with
# radclient and prints both replies.
replay_check() {
    local name=$1 port=$2 user secret code first second
    user=$(awk 'NR == 2 {print $1}' "$WORK/check.txt")
    secret=$(awk 'NR == 2 {print $2}' "$WORK/check.txt")
    # Both sends must fall in one 30-second step.
    if [ $((30 - $(date +%s) % 30)) -lt 8 ]; then
        sleep $((30 - $(date +%s) % 30 + 1))
    fi
    code=$(oathtool --totp -b "$secret")
    for attempt in first second; do
        local reply
        reply=$(printf 'User-Name = "%s"\nUser-Password = "%s"\nMessage-Authenticator = 0x00\n' "$user" "$code" |
            radclient -r 1 -t 3 "127.0.0.1:$port" auth "$(cat "$WORK/secret")" 2>&1 |
            grep -o 'Received Access-[A-Za-z]*' | head -n 1 | cut -d' ' -f2 || true)
        printf -v "$attempt" '%s' "${reply:-no reply}"
    done
    printf '%s\tsame code twice: first %s, second %s\n' "$name" "$first" "$second" | tee "$WORK/results/replay-$name.txt" >&2
}

# median FILTER NAME IN_FLIGHT: the median of FILTER over the undisturbed
# rounds, or over all rounds when every one was disturbed.
median() {
    jq -s "(map(select(.disturbed | not)) | if length > 0 then . else null end) // . | map($1) | sort
           | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end" \
        "$WORK/results/$2-$3-"*.json
}

# calm_runs NAME IN_FLIGHT: "undisturbed/all" round counts.
calm_runs() {
    jq -rs '"\(map(select(.disturbed | not)) | length)/\(length)"' "$WORK/results/$1-$2-"*.json
}

main() {
    [ "$(id -u)" = 0 ] || { log "run as root: apt-get and the FreeRADIUS configuration need it"; exit 2; }
    # A run must end within the 30-second step it starts in (reading the
    # users file takes about a second per million users).
    awk -v d="$DURATION" 'BEGIN {exit !(d > 0 && d <= 25)}' || { log "DURATION must be above 0 and at most 25 seconds"; exit 2; }
    # Each user's code is accepted once per 30-second step, so no server can
    # accept more than USERS / DURATION requests per second in one run.
    local most
    most=$(awk -v u="$USERS" -v d="$DURATION" 'BEGIN {printf "%d", u / d}')
    if [ "$most" -lt 50000 ]; then
        log "note: $USERS users in $DURATION s allow at most $most accepts/s per run (one use per code); use more users to measure speed"
    fi
    WORK=$(mktemp -d /tmp/radload-bench.XXXXXX)
    chmod 700 "$WORK"
    mkdir -p "$WORK/results"
    log "temporary folder: $WORK"

    install_freeradius
    log "building the release binaries"
    (cd "$ROOT" && cargo build --release -p freeauth-agentd -p freeauth-radius -p freeauth-radload)

    log "machine: $(online_cpus) cpus, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/^MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), $WORK on $(df --output=fstype "$WORK" | tail -n 1)"
    log "FreeRADIUS: $(freeradius -v 2>/dev/null | head -n 1)"
    log "FreeAuth: commit $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"

    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/secret"
    echo >>"$WORK/secret"
    chmod 600 "$WORK/secret"
    log "generating $USERS users"
    "$RADLOAD" generate --count "$USERS" --users "$WORK/users.txt" --freeradius "$WORK/freeradius-users"
    # Two more users outside the load: the first for readiness probes, the
    # second for the replay check.
    "$RADLOAD" generate --count 2 --prefix radloadcheck --users "$WORK/check.txt" --freeradius "$WORK/check-freeradius"
    cat "$WORK/check-freeradius" >>"$WORK/freeradius-users"

    local fr_port ours_port file
    fr_port=$(free_port)
    ours_port=$(free_port)
    while [ "$ours_port" = "$fr_port" ]; do ours_port=$(free_port); done

    configure_freeradius "$WORK/freeradius" "$fr_port" "$WORK/freeradius-users"
    configure_freeauth "$WORK/freeauth" "$ours_port"

    log "starting FreeRADIUS on 127.0.0.1:$fr_port"
    freeradius -f -d "$WORK/freeradius/raddb" >"$WORK/freeradius/log/stdout.log" 2>&1 &
    local fr_pid=$!
    STARTED_PIDS+=("$fr_pid")
    head -n 1 "$WORK/check.txt" >"$WORK/probe.txt"
    "$RADLOAD" probe --users "$WORK/probe.txt" --server "127.0.0.1:$fr_port" --secret-file "$WORK/secret" --wait 300

    log "starting freeauth-agentd and importing the users"
    start_agent
    for file in users.txt check.txt; do
        "$RADLOAD" import --users "$WORK/$file" --admin-socket "$WORK/freeauth/agent/run/admin.sock" \
            2>"$WORK/freeauth/import.log" || {
            tail -n 5 "$WORK/freeauth/import.log" >&2
            exit 1
        }
    done
    # The import leaves the agent's heap grown by its 1 MiB frames. A
    # restart gives the resident memory of an agent in service, whose tokens
    # are already in its database.
    log "agentd VmRSS after the import: $(memory_kib "$AGENT_PID" VmRSS) KiB; restarting it"
    stop_pid "$AGENT_PID"
    start_agent
    local agent_pid=$AGENT_PID

    log "starting freeauth-radius on 127.0.0.1:$ours_port"
    "$BIN/freeauth-radius" --config "$WORK/freeauth/bridge/radius.toml" 2>"$WORK/freeauth/bridge/radius.log" &
    local bridge_pid=$!
    STARTED_PIDS+=("$bridge_pid")
    "$RADLOAD" probe --users "$WORK/probe.txt" --server "127.0.0.1:$ours_port" --secret-file "$WORK/secret" --wait 60

    log "VmRSS before the load: FreeRADIUS $(memory_kib "$fr_pid" VmRSS) KiB, agentd $(memory_kib "$agent_pid" VmRSS) KiB, bridge $(memory_kib "$bridge_pid" VmRSS) KiB"
    log "runs: $DURATION s each, in flight: $IN_FLIGHT, $ROUNDS rounds, each run starts at a new 30-second step"
    local round in_flight
    for round in $(seq "$ROUNDS"); do
        for in_flight in $IN_FLIGHT; do
            run_load freeradius "$fr_port" "$in_flight" "$round" "$fr_pid"
            run_load freeauth "$ours_port" "$in_flight" "$round" "$agent_pid" "$bridge_pid"
        done
    done

    local fr_rss fr_hwm agent_rss agent_hwm bridge_rss bridge_hwm
    fr_rss=$(memory_kib "$fr_pid" VmRSS)
    fr_hwm=$(memory_kib "$fr_pid" VmHWM)
    agent_rss=$(memory_kib "$agent_pid" VmRSS)
    agent_hwm=$(memory_kib "$agent_pid" VmHWM)
    bridge_rss=$(memory_kib "$bridge_pid" VmRSS)
    bridge_hwm=$(memory_kib "$bridge_pid" VmHWM)

    replay_check freeradius "$fr_port"
    replay_check freeauth "$ours_port"

    echo
    echo "## Results: median of $ROUNDS runs of $DURATION s, $USERS users"
    echo
    echo "A run counts as disturbed, and is left out of the medians while an undisturbed one exists,"
    echo "when other processes, or the hypervisor as steal time, took more than $DISTURBED_SHARE of the machine's CPU time during it."
    echo
    echo "| server | in flight | runs used | accepts/s | rejects | timeouts | invalid | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | server CPU µs/request |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for in_flight in $IN_FLIGHT; do
        for name in freeradius freeauth; do
            printf '| %s | %s | %s | %.0f | %s | %s | %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f |\n' "$name" "$in_flight" \
                "$(calm_runs "$name" "$in_flight")" \
                "$(median .accepts_per_s "$name" "$in_flight")" "$(median .rejects "$name" "$in_flight")" \
                "$(median .timeouts "$name" "$in_flight")" "$(median .invalid "$name" "$in_flight")" \
                "$(median .latency.p50_ms "$name" "$in_flight")" "$(median .latency.p90_ms "$name" "$in_flight")" \
                "$(median .latency.p99_ms "$name" "$in_flight")" "$(median .latency.p99_9_ms "$name" "$in_flight")" \
                "$(median .latency.max_ms "$name" "$in_flight")" \
                "$(median .server_cpu_us_per_request "$name" "$in_flight")"
        done
    done

    echo
    echo "## Ratios and targets"
    echo
    local ours theirs ratio verdict
    for in_flight in $IN_FLIGHT; do
        ours=$(median .accepts_per_s freeauth "$in_flight")
        theirs=$(median .accepts_per_s freeradius "$in_flight")
        ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
        verdict=$(awk -v r="$ratio" 'BEGIN {print (r >= 1.2 ? "met" : "missed")}')
        echo "- accepts/s at $in_flight in flight: FreeAuth / FreeRADIUS = $ratio (target ≥ 1.20: $verdict)"
        ours=$(median .latency.p99_ms freeauth "$in_flight")
        theirs=$(median .latency.p99_ms freeradius "$in_flight")
        verdict=$(awk -v a="$ours" -v b="$theirs" 'BEGIN {print (a <= b ? "met" : "missed")}')
        echo "- p99 at $in_flight in flight: FreeAuth $ours ms, FreeRADIUS $theirs ms (target: not higher: $verdict)"
    done
    local ours_rss=$((agent_rss + bridge_rss)) ours_hwm=$((agent_hwm + bridge_hwm))
    verdict=$(awk -v a="$ours_rss" -v b="$fr_rss" 'BEGIN {print (a * 4 < b ? "met" : "missed")}')
    echo "- VmRSS after the load: agentd $agent_rss KiB + bridge $bridge_rss KiB = $ours_rss KiB; FreeRADIUS $fr_rss KiB; ratio $(awk -v a="$ours_rss" -v b="$fr_rss" 'BEGIN {printf "%.3f", a / b}') (target < 0.25: $verdict)"
    echo "- VmHWM: agentd $agent_hwm KiB + bridge $bridge_hwm KiB = $ours_hwm KiB; FreeRADIUS $fr_hwm KiB"
    echo "- one use per code: $(cut -f2 "$WORK/results/replay-freeradius.txt") (FreeRADIUS); $(cut -f2 "$WORK/results/replay-freeauth.txt") (FreeAuth)"
    echo
    if [ "$KEEP" = 1 ]; then
        echo "Every run (JSON): $WORK/results"
    fi
}

main "$@"
