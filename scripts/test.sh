#!/usr/bin/env bash
# Sets up and runs hbb's tests on a fresh Debian 12 machine with Rust:
# installs the system packages the tests use, then builds and runs them.
# Usage: scripts/test.sh            (as root: the tests mount FUSE and loop devices)
set -euo pipefail
cd "$(dirname "$0")/.."

need=(fuse3 rsync e2fsprogs attr diffutils util-linux mount findutils tar dpkg-dev binutils man-db systemd iproute2 openssh-server openssh-client procps)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Loop devices for the volume tests (a no-op where the driver is built in).
modprobe loop 2>/dev/null || true
[ -e /dev/fuse ] || { echo "test.sh: /dev/fuse is missing; the mount tests need FUSE" >&2; exit 1; }

cargo build --locked --all-targets
if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --locked --no-fail-fast
    cargo test --locked --doc
else
    cargo test --locked --no-fail-fast
fi
