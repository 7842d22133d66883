#!/usr/bin/env bash
# Runs every FreeAuth check: formatting, clippy, and all unit and end-to-end
# tests against real peers (oathtool). Installs missing Debian packages when
# run as root; otherwise prints the apt-get command to run first.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian 12 packages the tests need, as "command package" pairs. A command
# may also be a file pattern, for packages that ship only libraries.
needed=(
  "oathtool oathtool"
  "/usr/bin/python3 python3"
  "setpriv util-linux"
  "unshare util-linux"
  "nsenter util-linux"
  "mount mount"
  "md5sum coreutils"
  "sqlite3 sqlite3"
  "cc gcc"
  "/usr/lib/*/libpam.so libpam0g-dev"
  "pamtester pamtester"
  "/usr/lib/*/libpam_wrapper.so libpam-wrapper"
  "/usr/lib/*/security/pam_exec.so libpam-modules"
  "expect expect"
  "ssh openssh-client"
  "ssh-keygen openssh-client"
  "openssl openssl"
  "radclient freeradius-utils"
  "/lib/*/security/pam_radius_auth.so libpam-radius-auth"
)
# tests/sshd.rs also needs an sshd. It uses an installed openssh-server, or
# else downloads the package into target/test-cache/ without installing it,
# because installing it would start an sshd on port 22.

# The package install test (tests/debian/install-test.sh) runs only as root,
# which it needs for debootstrap, chroot and namespaces.
if [[ $(id -u) -eq 0 ]]; then
  needed+=(
    "dpkg-buildpackage dpkg-dev"
    "dh debhelper"
    "lintian lintian"
    "debootstrap debootstrap"
    "ip iproute2"
    "systemd-analyze systemd"
  )
fi

missing=()
for pair in "${needed[@]}"; do
  read -r command package <<<"$pair"
  command -v "$command" >/dev/null 2>&1 || compgen -G "$command" >/dev/null || missing+=("$package")
done

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: missing packages; install them first:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 2
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 2
fi

start=$SECONDS
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The end-to-end tests run the built binaries, which `cargo test` alone does
# not rebuild for another package.
echo "== cargo build (binaries and the PAM module)"
cargo build --workspace --quiet
echo "== cargo test"
cargo test --workspace
echo "== Debian packages (build, lintian, install in a fresh Debian 12 root)"
tests/debian/install-test.sh
echo "== all checks passed in $((SECONDS - start)) s"
