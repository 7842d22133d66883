#!/usr/bin/env bash
# Quick start: builds FreeAuth, starts the agent with the development
# configuration in conf/dev/ (no root; state, key and sockets stay in that
# folder), enrols the user "demo" with a fresh TOTP token, and shows how to
# try a code. Run it again to reuse the running agent.
set -euo pipefail
cd "$(dirname "$0")/.."

config=conf/dev/agentd.toml
ctl=(target/debug/freeauthctl --config "$config")
pidfile=conf/dev/run/agentd.pid
log=conf/dev/agentd.log

cargo build --quiet -p freeauth-agentd -p freeauthctl

if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "agent already running (pid $(cat "$pidfile"))"
else
  mkdir -p conf/dev/run
  target/debug/freeauth-agentd --config "$config" 2>>"$log" &
  echo $! >"$pidfile"
  for _ in $(seq 50); do
    [[ -S conf/dev/run/admin.sock ]] && break
    sleep 0.1
  done
  if ! "${ctl[@]}" status >/dev/null 2>&1; then
    echo "the agent did not start; its log ($log) ends with:" >&2
    tail -n 5 "$log" >&2
    exit 1
  fi
  echo "agent started (pid $(cat "$pidfile")), log in $log"
fi

if "${ctl[@]}" show demo >/dev/null 2>&1; then
  echo "user demo is already enrolled; remove it with: ${ctl[*]} remove demo"
else
  enrolled=$("${ctl[@]}" enroll demo --backup-codes 2)
  echo "$enrolled"
  secret=$(sed -n 's/.*secret=\([A-Z2-7]*\).*/\1/p' <<<"$enrolled" | head -n 1)
fi

cat <<TEXT

Scan the QR code with an authenticator app (or use the URI), then try a code:

  ${ctl[*]} verify demo CODE
TEXT
if [[ -n ${secret:-} ]] && command -v oathtool >/dev/null 2>&1; then
  echo "  ${ctl[*]} verify demo \$(oathtool --totp --base32 $secret)"
fi
cat <<TEXT

A code is accepted once; the same code again is rejected. See the token,
its drift and failures with:

  ${ctl[*]} show demo

Stop the agent with:  kill \$(cat $pidfile)
TEXT
