#!/usr/bin/env bash
# Tests the Debian packages. It builds them with dpkg-buildpackage and checks
# them with lintian and systemd-analyze. Then it installs them with apt in a
# fresh Debian 12 root made by debootstrap, and runs tests/debian/in-root.sh
# there: accounts, modes, conffiles, PAM profiles, both daemons, a PAM login,
# a RADIUS request, upgrade, removal and purge.
#
# The root runs in private mount, PID and network namespaces. The daemons see
# only their own loopback interface, and every process of the test ends with
# it. The test needs root. The base root is cached in $FREEAUTH_TEST_CACHE
# (default /var/cache/freeauth-test) for a week, keyed by mirror and package
# list.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
start=$SECONDS

say() { printf 'install test: %s\n' "$*"; }
fail() {
  printf 'install test: FAILED: %s\n' "$*" >&2
  exit 1
}

if [[ $(id -u) -ne 0 ]]; then
  say "skipped: it needs root (debootstrap, chroot and namespaces); run scripts/test.sh as root to include it"
  exit 0
fi
for tool in dpkg-buildpackage dh lintian debootstrap systemd-analyze unshare chroot; do
  command -v "$tool" >/dev/null || fail "$tool is missing; scripts/test.sh installs it"
done

work=$(mktemp -d /tmp/freeauth-install.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- Build ------------------------------------------------------------------
# dpkg-buildpackage writes the packages next to the source folder, so the
# build runs in a copy. Cargo still uses the repository's target folder.
say "building the packages"
mkdir "$work/src"
tar -C "$repo" --exclude=./.git --exclude=./target --exclude-vcs-ignores -cf - . | tar -C "$work/src" -xf -
# debian/rules must pass DEB_BUILD_OPTIONS=parallel=N on to cargo. A stub
# cargo prints the job limit it gets.
mkdir "$work/stub"
printf '#!/bin/sh\necho "CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-unset}"\n' >"$work/stub/cargo"
chmod +x "$work/stub/cargo"
jobs=$(cd "$work/src" && env -u CARGO_BUILD_JOBS PATH="$work/stub:$PATH" DEB_BUILD_OPTIONS=parallel=3 \
  debian/rules override_dh_auto_build | tail -n 1)
[[ $jobs == CARGO_BUILD_JOBS=3 ]] || fail "debian/rules ignores DEB_BUILD_OPTIONS=parallel=3: cargo got ${jobs:-no output}"
(cd "$work/src" && CARGO_TARGET_DIR="$repo/target" dpkg-buildpackage -b -us -uc >"$work/build.log" 2>&1) ||
  {
    tail -n 40 "$work/build.log" >&2
    fail "dpkg-buildpackage failed (log above)"
  }
debs=("$work"/*.deb)
changes=("$work"/*.changes)
for package in freeauth freeauth-radius libpam-freeauth; do
  compgen -G "$work/${package}_*.deb" >/dev/null || fail "package $package was not built"
done
say "built: $(cd "$work" && ls -- *.deb | tr '\n' ' ')"

# --- Static checks -----------------------------------------------------------
say "lintian"
# lintian warns when it runs as root, so it runs as nobody.
chmod 0755 "$work"
if ! HOME=/tmp setpriv --reuid nobody --regid nogroup --clear-groups \
  lintian --fail-on error,warning "${changes[0]}" >"$work/lintian.log" 2>&1; then
  cat "$work/lintian.log" >&2
  fail "lintian reported errors or warnings"
fi
sed 's/^/  /' "$work/lintian.log"

mkdir "$work/unpacked"
for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$work/unpacked"; done
for unit in freeauth-agentd freeauth-radius; do
  file="$work/unpacked/lib/systemd/system/$unit.service"
  [[ -f $file ]] || fail "$unit.service is not in the packages"
  score=$(systemd-analyze security --offline=true --no-pager "$file" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  say "systemd-analyze security $unit.service: exposure $score"
  awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }' || fail "$unit.service exposure ${score:-unknown} is above 2.0"
  # Without SyslogFacility=, systemd logs stderr under the daemon facility,
  # but the daemons' lines are authentication events, like PAM's.
  grep -q -x 'SyslogFacility=authpriv' "$file" || fail "$unit.service does not set SyslogFacility=authpriv"
done
# The bridge fails to bind a listen address that no interface has yet.
bridge_unit="$work/unpacked/lib/systemd/system/freeauth-radius.service"
for key in Wants After; do
  grep -q -E "^$key=.*\bnetwork-online[.]target\b" "$bridge_unit" ||
    fail "freeauth-radius.service has no $key=network-online.target"
done

# --- The Debian 12 root -----------------------------------------------------
# The mirror of the host's apt configuration (deb822 or one-line format).
mirror=$(
  {
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *\([^ ]*\).*/\1/p' || true
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" { print $2 }' || true
  } | awk '!/security/ && m == "" { m = $0 } END { print m }'
)
mirror=${mirror:-http://deb.debian.org/debian}
# Besides the packages' own dependencies: the test's peers and tools.
extra=adduser,libpam-runtime,pamtester,freeradius-utils,oathtool,passwd,util-linux,procps
cache=${FREEAUTH_TEST_CACHE:-/var/cache/freeauth-test}
key=$(printf '%s %s %s' bookworm "$mirror" "$extra" | sha256sum | cut -c1-16)
tarball="$cache/bookworm-$key.tar"
mkdir -p "$cache"
if [[ -f $tarball ]] && [[ -n $(find "$tarball" -mtime -7) ]]; then
  say "using the cached Debian 12 root $tarball"
else
  say "creating a Debian 12 root with debootstrap from $mirror"
  rm -f "$cache"/bookworm-*.tar
  base="$work/base"
  debootstrap --variant=minbase --include="$extra" bookworm "$base" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    {
      tail -n 20 "$work/debootstrap.log" >&2
      fail "debootstrap failed (log above)"
    }
  rm -rf "$base"/var/cache/apt/archives/*.deb
  tar -C "$base" -cf "$tarball.new" . && mv "$tarball.new" "$tarball"
  rm -rf "$base"
fi
root="$work/root"
mkdir "$root"
tar -C "$root" -xf "$tarball"

mkdir -p "$root/root/freeauth-test/upgrade"
cp "${debs[@]}" "$root/root/freeauth-test/"

# The same packages as a later version, for a real upgrade: agentd.toml gains
# a line, so dpkg replaces it where the administrator left it unchanged.
say "repacking the packages as the next version"
for package in freeauth freeauth-radius libpam-freeauth; do
  tree="$work/repack/$package"
  mkdir -p "$tree"
  dpkg-deb -R "$work/${package}"_*.deb "$tree"
  version=$(sed -n 's/^Version: //p' "$tree/DEBIAN/control")
  sed -i -e "s/^Version: .*/Version: $version+upgrade/" -e "s/(= $version)/(= $version+upgrade)/g" "$tree/DEBIAN/control"
  if [[ $package == freeauth ]]; then
    echo "# upgrade test" >>"$tree/etc/freeauth/agentd.toml"
    (cd "$tree" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | xargs -0 md5sum >DEBIAN/md5sums)
  fi
  dpkg-deb --root-owner-group -b "$tree" "$root/root/freeauth-test/upgrade/" >/dev/null
done
cp tests/debian/in-root.sh "$root/root/freeauth-test/"

# --- Install and check, inside the namespaces -------------------------------
say "installing and checking inside the root"
root_start=$SECONDS
unshare --mount --pid --net --fork --kill-child --propagation private bash -euo pipefail -c '
  root=$1
  ip link set lo up
  # A mount point of its own, so that the sandbox can remount it read-only.
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o mode=0755 tmpfs "$root/run"
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
  exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    bash /root/freeauth-test/in-root.sh
' _ "$root" || fail "a check inside the Debian 12 root failed (output above)"

say "passed in $((SECONDS - start)) s (build and static checks $((root_start - start)) s, root $((SECONDS - root_start)) s)"
