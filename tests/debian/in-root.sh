#!/usr/bin/env bash
# Checks the installed packages inside the fresh Debian 12 root that
# tests/debian/install-test.sh prepares. It runs as root, in private mount,
# PID and network namespaces, next to the three .deb files. There is no
# systemd, so it starts each daemon the way its installed unit describes
# (user, groups, capabilities, folders, umask, ExecStartPre, ExecStart) and
# stops it by PID.
set -euo pipefail
debs=/root/freeauth-test
cd "$debs"
export DEBIAN_FRONTEND=noninteractive

step() { printf '  - %s\n' "$*"; }
fail() {
  printf 'in-root: FAILED: %s\n' "$*" >&2
  local log
  for log in freeauth-agentd.log freeauth-radius.log; do
    [[ -s $log ]] || continue
    printf '  last lines of %s:\n' "$log" >&2
    tail -n 15 "$log" | sed 's/^/    /' >&2
  done
  exit 1
}
expect_eq() { [[ $1 == "$2" ]] || fail "$3: expected \"$2\", got \"$1\""; }
mode_of() { stat -c '%a %U %G' "$1"; }
# Runs pamtester on service freeauth-login with the given responses, one per
# line, and prints its verdict line.
pam_login() {
  local user=$1
  shift
  # The prompts end without a newline, so the verdict shares their line.
  printf '%s\n' "$@" | pamtester freeauth-login "$user" authenticate 2>&1 | tail -n 1 | sed 's/.*\(pamtester: \)/\1/'
}
PAM_OK="pamtester: successfully authenticated"
PAM_FAILED="pamtester: Authentication failure"

# --- Daemons, started as their units describe --------------------------------------
declare -A pids=()

# Prints the last value of KEY in the installed unit NAME.
unit_get() { sed -n "s/^$2=//p" "/lib/systemd/system/$1.service" | tail -n 1; }

# Mounts what ProtectSystem=strict and PrivateTmp=yes describe, inside the
# mount namespace that `unshare` made: the system read-only except the
# folders given in $1, and an empty /tmp. Then runs the remaining arguments.
# shellcheck disable=SC2016 # expanded by the inner bash
SANDBOX='
  set -e
  for dir in $1; do mount --bind "$dir" "$dir"; done
  mount -o remount,bind,ro /
  mount -o remount,bind,ro /run
  mount -t tmpfs -o mode=1777 tmpfs /tmp
  shift
  exec "$@"
'

# Starts the daemon of unit NAME: the unit's user, groups, capabilities,
# folders, umask, ProtectSystem=strict, PrivateTmp, PrivateNetwork,
# NoNewPrivileges, ExecStartPre and ExecStart. Other settings (the system
# call filter, ProtectKernel* and the like) need systemd.
start_unit() {
  local unit=$1 user group groups umask caps command kind dir mode writable=""
  user=$(unit_get "$unit" User)
  group=$(unit_get "$unit" Group)
  groups=$(unit_get "$unit" SupplementaryGroups)
  umask=$(unit_get "$unit" UMask)
  caps=$(unit_get "$unit" AmbientCapabilities)
  for kind in Runtime State; do
    dir=$(unit_get "$unit" "${kind}Directory")
    mode=$(unit_get "$unit" "${kind}DirectoryMode")
    [[ -n $dir ]] || continue
    case $kind in
      Runtime) dir=/run/$dir ;;
      State) dir=/var/lib/$dir ;;
    esac
    install -d -m "${mode:-0755}" -o "$user" -g "$group" "$dir"
    writable+=" $dir"
  done
  [[ $(unit_get "$unit" ProtectSystem) == strict ]] || fail "$unit.service does not set ProtectSystem=strict"
  [[ $(unit_get "$unit" PrivateTmp) == yes ]] || fail "$unit.service does not set PrivateTmp=yes"
  [[ $(unit_get "$unit" NoNewPrivileges) == yes ]] || fail "$unit.service does not set NoNewPrivileges=yes"
  local namespaces=(unshare --mount --propagation private)
  if [[ $(unit_get "$unit" PrivateNetwork) == yes ]]; then
    namespaces+=(--net)
  fi
  namespaces+=(bash -c "$SANDBOX" _ "$writable")

  local as_unit=(setpriv --reuid "$user" --regid "$group" --no-new-privs)
  if [[ -n $groups ]]; then
    as_unit+=(--groups "${groups// /,}")
  else
    as_unit+=(--clear-groups)
  fi
  if [[ -n $caps ]]; then
    caps=$(tr 'A-Z' 'a-z' <<<"${caps// /,}")
    caps=${caps//cap_/+}
    as_unit+=(--inh-caps "$caps" --ambient-caps "$caps" --bounding-set "-all,$caps")
  else
    as_unit+=(--inh-caps -all --bounding-set -all)
  fi

  command=$(unit_get "$unit" ExecStartPre)
  if [[ -n $command ]]; then
    # shellcheck disable=SC2086 # the unit's command line, split as systemd does
    (umask "$umask" && "${namespaces[@]}" "${as_unit[@]}" -- $command) >"$unit.check.log" 2>&1 ||
      {
        cat "$unit.check.log" >&2
        fail "ExecStartPre of $unit failed"
      }
  fi
  command=$(unit_get "$unit" ExecStart)
  # shellcheck disable=SC2086
  # unshare and bash exec, so the PID is the daemon's.
  (umask "$umask" && exec "${namespaces[@]}" "${as_unit[@]}" -- $command) >"$unit.log" 2>&1 &
  pids[$unit]=$!
}

stop_unit() {
  local unit=$1 pid=${pids[$1]:-}
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || true
  unset "pids[$unit]"
}

# Waits up to 10 s for LINE in the unit's log.
wait_for_log() {
  local unit=$1 line=$2
  for _ in $(seq 100); do
    grep -q -- "$line" "$unit.log" && return 0
    kill -0 "${pids[$unit]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$unit.log" >&2
  fail "$unit did not log \"$line\""
}

start_agent() {
  start_unit freeauth-agentd
  for _ in $(seq 100); do
    [[ -S /run/freeauth/admin.sock ]] && return 0
    kill -0 "${pids[freeauth-agentd]}" 2>/dev/null || break
    sleep 0.1
  done
  cat freeauth-agentd.log >&2
  fail "the agent did not create its sockets"
}

start_bridge() {
  start_unit freeauth-radius
  wait_for_log freeauth-radius "RADIUS bridge started"
}

trap 'for unit in "${!pids[@]}"; do stop_unit "$unit"; done' EXIT

# Sends one Access-Request for USER with CODE to the bridge and prints the
# reply's type.
radius_request() {
  printf 'User-Name = "%s"\nUser-Password = "%s"\nMessage-Authenticator = 0x00\n' "$1" "$2" |
    radclient -r 1 -t 5 -S /etc/freeauth/secrets/test 127.0.0.1:1812 auth 2>&1 |
    sed -n 's/^Received \(Access-[A-Za-z]*\) .*/\1/p'
}

# --- Install ------------------------------------------------------------------
step "apt-get install of freeauth, freeauth-radius and libpam-freeauth"
apt-get install -y "$debs"/freeauth_*.deb "$debs"/freeauth-radius_*.deb "$debs"/libpam-freeauth_*.deb >apt.log 2>&1 ||
  {
    cat apt.log >&2
    fail "apt-get install"
  }

step "system accounts"
for user in freeauth freeauth-radius; do
  entry=$(getent passwd "$user") || fail "user $user was not created"
  IFS=: read -r _ _ uid _ _ _ shell <<<"$entry"
  ((uid < 1000)) || fail "user $user is not a system user (uid $uid)"
  expect_eq "$shell" /usr/sbin/nologin "login shell of $user"
done
getent group freeauth-admin >/dev/null || fail "group freeauth-admin was not created"

step "owners and modes"
expect_eq "$(mode_of /etc/freeauth)" "755 root root" /etc/freeauth
expect_eq "$(mode_of /etc/freeauth/agentd.toml)" "644 root root" /etc/freeauth/agentd.toml
expect_eq "$(mode_of /etc/freeauth/radius.toml)" "640 root freeauth-radius" /etc/freeauth/radius.toml
expect_eq "$(mode_of /etc/freeauth/seed.key)" "600 freeauth freeauth" /etc/freeauth/seed.key
expect_eq "$(mode_of /var/lib/freeauth)" "700 freeauth freeauth" /var/lib/freeauth
expect_eq "$(mode_of /var/lib/freeauth-radius)" "700 freeauth-radius freeauth-radius" /var/lib/freeauth-radius
key_sum=$(sha256sum /etc/freeauth/seed.key)

step "conffiles, units, man pages and the PAM module"
grep -q '^ /etc/freeauth/agentd.toml ' <<<"$(dpkg-query -W -f='${Conffiles}\n' freeauth)" ||
  fail "agentd.toml is not a conffile of freeauth"
grep -q '^ /etc/freeauth/radius.toml ' <<<"$(dpkg-query -W -f='${Conffiles}\n' freeauth-radius)" ||
  fail "radius.toml is not a conffile of freeauth-radius"
for unit in freeauth-agentd freeauth-radius; do
  [[ -f /lib/systemd/system/$unit.service ]] || fail "$unit.service is not installed"
  [[ -L /etc/systemd/system/multi-user.target.wants/$unit.service ]] || fail "$unit.service is not enabled"
done
for unit in freeauth-agentd freeauth-radius; do
  package=${unit%-agentd}
  grep -q "try-restart $unit.service" "/var/lib/dpkg/info/$package.postinst" ||
    fail "$package.postinst does not restart $unit after an upgrade"
done
for page in man8/freeauth-agentd.8 man5/freeauth-agentd.toml.5 man8/freeauthctl.8 \
  man8/freeauth-radius.8 man5/freeauth-radius.toml.5 man8/pam_freeauth.8; do
  [[ -f /usr/share/man/$page.gz ]] || fail "man page $page is not installed"
done
compgen -G '/lib/*-linux-gnu*/security/pam_freeauth.so' >/dev/null || fail "pam_freeauth.so is not installed"
for package in freeauth freeauth-radius libpam-freeauth; do
  notices=/usr/share/doc/$package/crate-notices.txt.gz
  [[ -f $notices ]] || fail "$notices is not installed"
  grep -q '^zeroize ' <<<"$(zcat "$notices")" || fail "$notices does not list the crate zeroize"
done

step "the PAM profiles are registered but not enabled"
[[ -f /usr/share/pam-configs/freeauth && -f /usr/share/pam-configs/freeauth-required ]] ||
  fail "the pam-auth-update profiles are missing"
grep -qx freeauth /var/lib/pam/seen || fail "pam-auth-update did not register the profile"
! grep -q pam_freeauth /etc/pam.d/common-auth || fail "installing enabled pam_freeauth in common-auth"

# --- The agent and freeauthctl -----------------------------------------------
step "the agent starts in its unit's sandbox (user, groups, read-only system) and enrols tokens"
start_agent
expect_eq "$(mode_of /run/freeauth/admin.sock)" "660 freeauth freeauth-admin" "admin socket"
expect_eq "$(mode_of /run/freeauth/agent.sock)" "666 freeauth freeauth" "agent socket"
alice_key=3132333435363738393031323334353637383930
carol_key=4142434445464748494a4b4c4d4e4f5051525354
freeauthctl enroll alice --type hotp --secret-hex - <<<"$alice_key" >/dev/null
freeauthctl enroll carol --type hotp --secret-hex - <<<"$carol_key" >/dev/null
useradd --no-create-home --groups freeauth-admin ops
useradd --no-create-home visitor
grep -q '^alice' <<<"$(setpriv --reuid ops --regid ops --init-groups freeauthctl list)" ||
  fail "a member of freeauth-admin cannot list tokens"
! setpriv --reuid visitor --regid visitor --init-groups freeauthctl list >/dev/null 2>&1 ||
  fail "a user outside freeauth-admin can list tokens"

step "freeauthctl backup copies the database of the running agent and leaves its files alone"
freeauthctl backup /root/freeauth-copy.db | grep -q 'copied 2 users and 2 tokens' || fail "freeauthctl backup"
expect_eq "$(mode_of /root/freeauth-copy.db)" "600 root root" "backup copy"
for file in /var/lib/freeauth/freeauth.db*; do
  expect_eq "$(stat -c '%U' "$file")" "freeauth" "owner of $file after the backup"
done
rm /root/freeauth-copy.db

step "freeauthctl rekey replaces the seed key in /etc/freeauth, which the agent cannot write"
freeauthctl rekey | grep -q 'sealed 2 tokens under a new seed key' || fail "freeauthctl rekey"
[[ $(sha256sum /etc/freeauth/seed.key) != "$key_sum" ]] || fail "rekey kept the old seed key"
[[ ! -e /etc/freeauth/seed.key.new ]] || fail "rekey left /etc/freeauth/seed.key.new"
expect_eq "$(mode_of /etc/freeauth/seed.key)" "600 freeauth freeauth" "seed key after rekey"
key_sum=$(sha256sum /etc/freeauth/seed.key)

# --- PAM through the installed stack -----------------------------------------
step "pam-auth-update --enable freeauth: a code after the password; no token, no code"
useradd --create-home alice
useradd --create-home bob
chpasswd <<<$'alice:alice-password\nbob:bob-password'
printf '@include common-auth\naccount required pam_permit.so\n' >/etc/pam.d/freeauth-login
pam-auth-update --enable freeauth
grep -q 'pam_freeauth.so nullok' /etc/pam.d/common-auth || fail "the freeauth profile is not in common-auth"
code=$(oathtool --hotp -c 0 "$alice_key")
expect_eq "$(pam_login alice alice-password "$code")" "$PAM_OK" "alice with a fresh code"
expect_eq "$(pam_login alice alice-password "$code")" "$PAM_FAILED" "alice with the same code again"
expect_eq "$(pam_login alice wrong-password "$(oathtool --hotp -c 1 "$alice_key")")" "$PAM_FAILED" "alice with a wrong password"
expect_eq "$(pam_login bob bob-password)" "$PAM_OK" "bob, who has no token"

step "the switch to freeauth-required: users without a token are refused"
pam-auth-update --disable freeauth --enable freeauth-required
grep -q -E 'pam_freeauth[.]so\s*$' /etc/pam.d/common-auth || fail "the freeauth-required profile is not in common-auth"
[[ $(grep -c pam_freeauth /etc/pam.d/common-auth) -eq 1 ]] || fail "both profiles are in common-auth"
expect_eq "$(pam_login bob bob-password)" "pamtester: User not known to the underlying authentication module" \
  "bob, who has no token, under freeauth-required"
expect_eq "$(pam_login alice alice-password "$(oathtool --hotp -c 2 "$alice_key")")" "$PAM_OK" "alice under freeauth-required"

step "with the agent stopped, every login through common-auth fails closed"
stop_unit freeauth-agentd
unavailable="pamtester: Authentication service cannot retrieve authentication info"
expect_eq "$(pam_login alice alice-password "$(oathtool --hotp -c 3 "$alice_key")")" "$unavailable" "alice with the agent stopped"
expect_eq "$(pam_login bob bob-password)" "$unavailable" "bob with the agent stopped"
start_agent

# --- RADIUS through the bridge -------------------------------------------------
step "the bridge starts in its unit's sandbox and answers radclient"
install -d -m 0750 -o root -g freeauth-radius /etc/freeauth/secrets
install -m 0640 -o root -g freeauth-radius /dev/null /etc/freeauth/secrets/test
echo "install-test-secret" >/etc/freeauth/secrets/test
cat >>/etc/freeauth/radius.toml <<'EOF'

[[client]]
name = "install-test"
address = "127.0.0.1"
secret_file = "/etc/freeauth/secrets/test"
EOF
grep -q '^install-test .* file /etc/freeauth/secrets/test$' <<<"$(freeauthctl clients)" ||
  fail "freeauthctl clients does not list the client install-test"
start_bridge
code=$(oathtool --hotp -c 0 "$carol_key")
expect_eq "$(radius_request carol "$code")" Access-Accept "carol with a fresh code"
expect_eq "$(radius_request carol "$code")" Access-Reject "carol with the same code again"

# --- Upgrade -------------------------------------------------------------------
# upgrade/ contains the same packages as version VERSION+upgrade, whose
# agentd.toml gained a comment line (see install-test.sh).
step "an upgrade keeps the key, the tokens and changed conffiles, and updates the others"
apt-get install -y "$debs"/upgrade/*.deb >apt.log 2>&1 ||
  {
    cat apt.log >&2
    fail "apt-get install of the upgrade"
  }
grep -q '+upgrade$' <<<"$(dpkg-query -W -f='${Version}\n' freeauth)" || fail "freeauth was not upgraded"
expect_eq "$(sha256sum /etc/freeauth/seed.key)" "$key_sum" "seed key after the upgrade"
grep -q '^# upgrade test$' /etc/freeauth/agentd.toml || fail "the unchanged agentd.toml was not updated"
grep -q 'name = "install-test"' /etc/freeauth/radius.toml || fail "the upgrade replaced the changed radius.toml"
expect_eq "$(mode_of /etc/freeauth/radius.toml)" "640 root freeauth-radius" "radius.toml after the upgrade"
expect_eq "$(mode_of /etc/freeauth/seed.key)" "600 freeauth freeauth" "seed key after the upgrade"
grep -q -E 'pam_freeauth[.]so\s*$' /etc/pam.d/common-auth || fail "the upgrade changed the PAM profile choice"
stop_unit freeauth-radius
stop_unit freeauth-agentd
start_agent
start_bridge
grep -q -i hotp <<<"$(freeauthctl show alice)" || fail "alice's token is gone after the upgrade"
expect_eq "$(radius_request carol "$code")" Access-Reject "carol's used code after the upgrade"
expect_eq "$(radius_request carol "$(oathtool --hotp -c 1 "$carol_key")")" Access-Accept "carol's next code after the upgrade"

# Reinstalls the upgraded freeauth package with a bad agentd.toml and checks
# that postinst warns and does not restart the agent. $1 describes the problem.
reinstall_keeps_agent() {
  apt-get install -y --reinstall "$debs"/upgrade/freeauth_*.deb >apt.log 2>&1 ||
    {
      cat apt.log >&2
      fail "the upgrade failed on $1"
    }
  grep -q 'freeauth-agentd was not restarted and still runs the old version' apt.log ||
    {
      cat apt.log >&2
      fail "postinst did not warn about $1"
    }
  ! grep -q 'try-restart' apt.log || fail "postinst tried to restart the agent with $1"
  kill -0 "${pids[freeauth-agentd]}" || fail "the agent stopped during the upgrade with $1"
}

step "an upgrade with an invalid agentd.toml leaves the running agent alone"
cp /etc/freeauth/agentd.toml agentd.toml.good
echo 'unknown_setting = 1' >>/etc/freeauth/agentd.toml
# postinst restarts daemons only where systemd runs; systemctl itself is
# absent here, and the check must keep postinst from calling it at all.
mkdir -p /run/systemd/system
reinstall_keeps_agent "an invalid agentd.toml"
cp agentd.toml.good /etc/freeauth/agentd.toml

step "an upgrade with an agentd.toml that root can read and the agent cannot leaves the agent alone"
# The unit runs the agent as freeauth: a check as root would pass, and the
# restart would stop the agent for good.
chmod 0640 /etc/freeauth/agentd.toml
reinstall_keeps_agent "an agentd.toml that the agent's user cannot read"
chmod 0644 /etc/freeauth/agentd.toml
rmdir /run/systemd/system /run/systemd 2>/dev/null || true

step "a deleted radius.toml stays deleted and does not break the configure step"
mv /etc/freeauth/radius.toml radius.toml.kept
apt-get install -y --reinstall "$debs"/upgrade/freeauth-radius_*.deb >apt.log 2>&1 ||
  {
    cat apt.log >&2
    fail "freeauth-radius did not configure with radius.toml deleted"
  }
[[ ! -e /etc/freeauth/radius.toml ]] || fail "the reinstall brought back the deleted radius.toml"
mv radius.toml.kept /etc/freeauth/radius.toml

# --- Removal and purge -----------------------------------------------------------
step "libpam-freeauth refuses removal while a PAM file written by hand uses it"
stop_unit freeauth-radius
printf 'auth required pam_freeauth.so\n' >/etc/pam.d/freeauth-direct
apt-get remove -y libpam-freeauth >apt.log 2>&1 && fail "libpam-freeauth was removed while freeauth-direct uses it"
grep -q '/etc/pam.d/freeauth-direct' apt.log || {
  cat apt.log >&2
  fail "prerm did not name the PAM file that uses the module"
}
compgen -G '/lib/*-linux-gnu*/security/pam_freeauth.so' >/dev/null || fail "the refused removal deleted the module"
grep -q -E 'pam_freeauth[.]so\s*$' /etc/pam.d/common-auth || fail "the refused removal changed common-auth"
rm /etc/pam.d/freeauth-direct

step "libpam-freeauth refuses removal while a PAM file includes a backup that uses it"
printf 'auth required pam_freeauth.so\n' >/etc/pam.d/freeauth-direct.dpkg-old
printf '@include freeauth-direct.dpkg-old\n' >/etc/pam.d/freeauth-via-backup
apt-get remove -y libpam-freeauth >apt.log 2>&1 && fail "libpam-freeauth was removed while freeauth-via-backup includes a backup that uses it"
grep -q '/etc/pam.d/freeauth-direct.dpkg-old' apt.log || {
  cat apt.log >&2
  fail "prerm did not name the included backup that uses the module"
}
rm /etc/pam.d/freeauth-direct.dpkg-old /etc/pam.d/freeauth-via-backup

step "removing libpam-freeauth takes the module out of the stack first, despite backups"
# pam-auth-update --force saves the current common-* files as *.pam-old,
# which no service reads.
pam-auth-update --force
grep -q pam_freeauth /etc/pam.d/common-auth.pam-old || fail "pam-auth-update --force left no common-auth.pam-old with the module"
apt-get remove -y libpam-freeauth >apt.log 2>&1 || {
  cat apt.log >&2
  fail "apt-get remove libpam-freeauth"
}
! grep -q pam_freeauth /etc/pam.d/common-auth || fail "common-auth still calls pam_freeauth after removal"
expect_eq "$(pam_login bob bob-password)" "$PAM_OK" "bob after libpam-freeauth is removed"

step "remove keeps state and configuration"
stop_unit freeauth-agentd
apt-get remove -y freeauth-radius freeauth >apt.log 2>&1 || {
  cat apt.log >&2
  fail "apt-get remove"
}
for path in /var/lib/freeauth/freeauth.db /etc/freeauth/seed.key /etc/freeauth/agentd.toml /etc/freeauth/radius.toml; do
  [[ -e $path ]] || fail "$path is gone after remove"
done
[[ ! -e /usr/sbin/freeauth-agentd ]] || fail "remove left the agent's binary"

step "purge without an answer keeps the tokens and the seed key, and deletes the rest"
# Files this test made, as an administrator would have: purge keeps those.
rm -rf /etc/freeauth/secrets /etc/pam.d/freeauth-login
apt-get purge -y freeauth-radius freeauth libpam-freeauth >apt.log 2>&1 || {
  cat apt.log >&2
  fail "apt-get purge"
}
grep -q 'freeauth: kept the tokens in /var/lib/freeauth' apt.log || {
  cat apt.log >&2
  fail "purge did not say that it kept the tokens"
}
[[ -f /var/lib/freeauth/freeauth.db ]] || fail "a purge without an answer deleted the token database"
expect_eq "$(sha256sum /etc/freeauth/seed.key)" "$key_sum" "seed key after a purge without an answer"
[[ ! -e /etc/freeauth/agentd.toml ]] || fail "purge left agentd.toml"
[[ ! -e /etc/freeauth/radius.toml ]] || fail "purge left radius.toml"
[[ ! -e /var/lib/freeauth-radius ]] || fail "purge left /var/lib/freeauth-radius"

step "a new installation uses the kept tokens"
apt-get install -y "$debs"/freeauth_*.deb >apt.log 2>&1 || {
  cat apt.log >&2
  fail "apt-get install after the purge"
}
start_agent
grep -q -i hotp <<<"$(freeauthctl show alice)" || fail "alice's token is gone after purge and a new installation"
stop_unit freeauth-agentd

step "purge answered yes deletes state and configuration"
# The new key of a rekey that stopped before it moved the file in place.
install -m 600 -o freeauth -g freeauth /etc/freeauth/seed.key /etc/freeauth/seed.key.new
echo 'freeauth freeauth/purge_state boolean true' | debconf-set-selections
apt-get purge -y freeauth >apt.log 2>&1 || {
  cat apt.log >&2
  fail "apt-get purge with freeauth/purge_state true"
}
left=$(find / -xdev \( -path /proc -o -path /root/freeauth-test -o -path /home \) -prune -o \
  -name '*freeauth*' -print | grep -v -x -e /etc/freeauth || true)
[[ ! -e /etc/freeauth ]] || left+=$'\n'"/etc/freeauth: $(ls -A /etc/freeauth | tr '\n' ' ')"
[[ -z $left ]] || fail "purge left: $left"

step "an ordinary account named freeauth stops the install with a message"
# Purge keeps the system users, as Debian packages do.
deluser --system freeauth >/dev/null 2>&1
adduser --disabled-password --gecos "" --ingroup users --quiet freeauth
apt-get install -y "$debs"/freeauth_*.deb >apt.log 2>&1 && fail "freeauth installed over an ordinary account named freeauth"
grep -q 'adduser could not create or reuse the system account freeauth' apt.log ||
  {
    cat apt.log >&2
    fail "no message about the ordinary account named freeauth"
  }
step "done"
