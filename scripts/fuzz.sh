#!/usr/bin/env bash
# Runs hbb's fuzz targets (cargo-fuzz / libFuzzer) for a while each, with a
# seed corpus of real small archives. Not part of CI's time budget.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 300)
# Crashes land in fuzz/artifacts/TARGET/; turn each into a regression test
# (tests/fuzz_regressions.rs reads tests/fuzz-regressions/*).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# cargo-fuzz needs nightly features; the stable toolchain allows them with
# RUSTC_BOOTSTRAP (this machine has no other toolchain).
export RUSTC_BOOTSTRAP=1

cargo build --release --locked
hbb=$PWD/target/release/hbb
seeds=fuzz/seeds
mkdir -p "$seeds"
if [ -z "$(ls -A "$seeds" 2>/dev/null)" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/t/d/e"
    echo hello > "$work/t/a"; ln "$work/t/a" "$work/t/d/hard"; ln -s ../a "$work/t/d/sym"
    head -c 20000 /usr/bin/ls > "$work/t/d/e/bin"; : > "$work/t/empty"; mkfifo "$work/t/fifo"
    truncate -s 100000 "$work/t/sparse"
    "$hbb" snapshot -q --block-size 4K "$work/t" "$seeds/01-tree-4k.hbb"
    "$hbb" snapshot -q --block-size 64K "$work/t" "$seeds/02-tree-64k.hbb"
    truncate -s 1M "$work/vol.img"; echo volume | dd of="$work/vol.img" bs=1 seek=300000 conv=notrunc status=none
    "$hbb" snapshot -q --block-size 16K "$work/vol.img" "$seeds/03-volume.hbb"
fi
# decode_index starts from the seeds' decompressed indexes.
mkdir -p fuzz/corpus/decode_index
for a in "$seeds"/*; do
    read -r off clen < <(python3 -c '
import struct, sys
b = open(sys.argv[1], "rb").read()
f = b[-96:]
print(struct.unpack_from("<Q", f, 16)[0], struct.unpack_from("<Q", f, 24)[0])' "$a")
    tail -c +"$((off + 1))" "$a" | head -c "$clen" | zstd -dq > "fuzz/corpus/decode_index/$(basename "$a").index"
done
for target in open_archive read_blocks decode_index; do
    mkdir -p "fuzz/corpus/$target"
    [ "$target" = decode_index ] || cp -n "$seeds"/* "fuzz/corpus/$target/" 2>/dev/null || true
    echo "== fuzzing $target for ${secs}s"
    cargo fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 \
        2>&1 | tail -n 5
done
echo "fuzz: no crash in $((3 * secs))s"
