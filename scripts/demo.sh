#!/usr/bin/env bash
# The main job, end to end, on a real tree: build hbb, snapshot SOURCE,
# verify the archive (alone and against the source), restore it, compare
# the restore with the source by diff -r, and show the archive's info;
# then a repository: two snapshots (the second stores only what changed),
# list, restore of the second, diff -r.
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
echo "demo: archive OK — the restored tree is identical to $src"

echo "== repository: init, two snapshots of a copy of $src (one file changed between them)"
cp -a "$src" "$work/tree"
"$hbb" repo init "$work/repo"
"$hbb" snapshot "$work/tree" "$work/repo" --name first
some=$(find "$work/tree" -type f -size +1k -print -quit)
if [ -n "$some" ]; then echo "changed by the demo" >>"$some"; fi
"$hbb" snapshot "$work/tree" "$work/repo" --name second
"$hbb" list "$work/repo"
"$hbb" info "$work/repo"
"$hbb" verify "$work/repo"
"$hbb" restore "$work/repo::second" "$work/restored2"
diff -r --no-dereference "$work/tree" "$work/restored2"
echo "demo: OK — the archive and the repository restore identical trees"
