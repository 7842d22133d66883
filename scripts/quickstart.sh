#!/usr/bin/env bash
# Quick start: builds FreeAuth, starts the agent and the RADIUS bridge with
# the development configuration in conf/dev/ (no root; state, key and
# sockets stay in that folder; the bridge listens on 127.0.0.1 and ::1 port
# 18120, or the port set in conf/dev/radius.toml), enrols the user "demo"
# with a fresh TOTP token, and shows how to try a code. Run it again to reuse the running daemons.
set -euo pipefail
cd "$(dirname "$0")/.."
# Absolute paths, so that the commands printed below work from any folder.
root=$(pwd -P)

config=$root/conf/dev/agentd.toml
target=${CARGO_TARGET_DIR:-target}
[[ $target == /* ]] || target=$root/$target
bin=$target/debug
ctl=("$bin/freeauthctl" --config "$config")
pidfile=$root/conf/dev/run/agentd.pid
log=$root/conf/dev/agentd.log
radius_config=$root/conf/dev/radius.toml
radius_pidfile=$root/conf/dev/run/radius.pid
radius_log=$root/conf/dev/radius.log
# The port of the bridge's `listen` entry on 127.0.0.1 or 0.0.0.0, at any
# place in the list, for the hints below.
radius_port=$(sed -n -E 's/^listen *= *\[.*"(127\.0\.0\.1|0\.0\.0\.0):([0-9]+)".*/\2/p' "$radius_config" | head -n 1)
if [[ -z $radius_port ]]; then
  echo "No listen entry on 127.0.0.1 or 0.0.0.0 in $radius_config; the radclient command below assumes 127.0.0.1:18120." >&2
  radius_port=18120
fi

if ! command -v cargo >/dev/null; then
  echo "cargo not found on PATH. Install stable Rust for $(id -un) with rustup, or add its cargo to PATH." >&2
  exit 1
fi
# Also builds pam_freeauth, for the pamtester example in pam_freeauth(8).
cargo build --quiet -p freeauth-agentd -p freeauthctl -p freeauth-radius -p pam_freeauth

if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "agent already running (pid $(cat "$pidfile"))"
else
  mkdir -p "$root/conf/dev/run"
  "$bin/freeauth-agentd" --config "$config" </dev/null >>"$log" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 50); do
    [[ -S $root/conf/dev/run/admin.sock ]] && break
    sleep 0.1
  done
  if ! "${ctl[@]}" status >/dev/null 2>&1; then
    echo "the agent did not start; its log ($log) ends with:" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
  echo "agent started (pid $(cat "$pidfile")), log in $log"
fi

# The bridge refuses a configuration with a secret that other users can read.
chmod 600 "$radius_config"
if [[ -f $radius_pidfile ]] && kill -0 "$(cat "$radius_pidfile")" 2>/dev/null; then
  echo "RADIUS bridge already running (pid $(cat "$radius_pidfile"))"
else
  "$bin/freeauth-radius" --config "$radius_config" </dev/null >>"$radius_log" 2>&1 &
  echo $! >"$radius_pidfile"
  sleep 0.5
  if ! kill -0 "$(cat "$radius_pidfile")" 2>/dev/null; then
    echo "the RADIUS bridge did not start; its log ($radius_log) ends with:" >&2
    tail -n 5 "$radius_log" >&2
    echo "The agent is still running. Stop it with: kill \$(cat $pidfile)" >&2
    exit 1
  fi
  echo "RADIUS bridge started (pid $(cat "$radius_pidfile")) on 127.0.0.1 port $radius_port, log in $radius_log"
fi

if "${ctl[@]}" show demo >/dev/null 2>&1; then
  echo "user demo is already enrolled; remove it with: ${ctl[*]} remove demo"
else
  enrolled=$("${ctl[@]}" enroll demo --backup-codes 2)
  echo "$enrolled"
  secret=$(sed -n 's/.*secret=\([A-Z2-7]*\).*/\1/p' <<<"$enrolled" | head -n 1)
fi

if [[ -n ${secret:-} ]]; then
  hint="Scan the QR code with an authenticator app (or use the URI), then try a code:"
else
  hint="Try a code from the authenticator app where demo was enrolled before:"
fi
cat <<TEXT

$hint

  ${ctl[*]} verify demo CODE
TEXT
if [[ -n ${secret:-} ]] && command -v oathtool >/dev/null 2>&1; then
  echo "  ${ctl[*]} verify demo \$(oathtool --totp --base32 $secret)"
fi
cat <<TEXT

Or through RADIUS (radclient is in the freeradius-utils package):

  printf 'User-Name = demo\\nUser-Password = CODE\\nMessage-Authenticator = 0x00\\n' |
    radclient -x 127.0.0.1:$radius_port auth dev-secret-0123456789

A code is accepted once; the same code again is rejected, and counts as a
failed attempt. See the token, its drift and failures with:

  ${ctl[*]} show demo

Stop both daemons with:  kill \$(cat $pidfile) \$(cat $radius_pidfile)
TEXT
