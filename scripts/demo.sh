#!/usr/bin/env bash
# The main job, end to end, on a real tree: build hbb, snapshot SOURCE,
# verify the archive (alone and against the source), restore it, compare
# the restore with the source by diff -r, and show the archive's info.
# Usage: scripts/demo.sh [SOURCE]   (default: /usr/share)
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share}

if [ "$(id -u)" = 0 ]; then
    missing=()
    for p in fuse3 diffutils; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

cargo build --release --locked
hbb=$PWD/target/release/hbb
work=$(mktemp -d "${TMPDIR:-/tmp}/hbb-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== snapshot $src"
"$hbb" snapshot "$src" "$work/demo.hbb"
echo "== info"
"$hbb" info "$work/demo.hbb"
echo "== verify (every block, then against the source)"
"$hbb" verify "$work/demo.hbb"
"$hbb" verify --source "$src" "$work/demo.hbb"
echo "== restore"
"$hbb" restore "$work/demo.hbb" "$work/restored"
echo "== diff -r $src $work/restored"
diff -r --no-dereference "$src" "$work/restored"
echo "demo: OK — the restored tree is identical to $src"
