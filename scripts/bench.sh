#!/usr/bin/env bash
# The benchmark of issue 4: hbb against tar|zstd, zstd, squashfs (+squashfuse),
# borg and restic, side by side, in one run, as ratios.
#
# On a fresh Debian 12 machine with Rust, as root:
#   scripts/bench.sh                  # everything: ~45 min on 2 cores; writes docs/BENCHMARKS.md + docs/bench-*.png
#   scripts/bench.sh --quick          # small corpora, few points, one repetition: ~2.5 min, to check
#                                     # that the script works; writes into CACHE/quick/, not docs/
#   scripts/bench.sh --only mount     # one figure (snapshot|restore|mount|sweep|scale|incremental|remote), repeatable;
#                                     # the report is rebuilt from this and earlier runs' results
#
# Options:
#   --quick            smaller corpora, fewer points, 1 repetition
#   --only FIGURE      snapshot, restore, mount, sweep, scale, incremental or remote (figures 1-7;
#                      repeatable, or comma-separated)
#   --reps N           repetitions of each timed command (median reported; default 3, --quick 1)
#   --cache DIR        where corpora, archives and results live (default $HBB_BENCH_CACHE or /var/tmp/hbb-bench)
#   --out DIR          where BENCHMARKS.md and bench-*.png go (default docs/, with --quick CACHE/quick)
#   --no-install       do not apt-get anything
#   --no-build         use the hbb already built (target/release/hbb, or $HBB)
#   --prepare          install, build and make the corpora the figures need, then stop
#
# What it does: installs the competitors with apt-get, builds hbb
# (cargo build --release --locked; CARGO_TARGET_DIR is honoured, default
# ./target), builds and caches the corpora under the cache dir:
#   K  the Linux 6.1 source tree from Debian's linux-source-6.1 (apt-get download)
#   V  a 4 GiB ext4 image holding K (mkfs.ext4 -d)
#   L  one large file: K as an uncompressed tar (for random reads in a large file)
#   S  generated trees of small files: 10k, 100k and 1M files (scale figure)
# The remote figure makes a second host on this machine: network namespaces
# hbbbench-agent (with its own sshd on 10.214.0.2) and hbbbench-br (a bridge),
# and the interface hbbbench0 (10.214.0.1); they are removed when it ends, and
# by the trap on exit. Its sshd logs in as root with a key and without PAM,
# which refuses a locked root account ("!" in /etc/shadow): unless
# --no-install, such an account is unlocked with `usermod -p '*' root` ("*"
# still allows no password).
# then runs scripts/bench.py, which measures, writes the results as JSON under
# the cache dir and renders the report and the plots (gnuplot).
# Every mount is unmounted by a trap on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

quick=0
only=()
reps=
cache=${HBB_BENCH_CACHE:-/var/tmp/hbb-bench}
out=
install=1
build=1
prepare=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while (($#)); do
    case $1 in
        --quick) quick=1 ;;
        --only) shift; IFS=, read -r -a more <<<"${1:?--only needs a figure}"; only+=("${more[@]}") ;;
        --only=*) IFS=, read -r -a more <<<"${1#*=}"; only+=("${more[@]}") ;;
        --reps) shift; reps=${1:?} ;;
        --cache) shift; cache=${1:?} ;;
        --out) shift; out=${1:?} ;;
        --no-install) install=0 ;;
        --no-build) build=0 ;;
        --prepare) prepare=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
figures=(snapshot restore mount sweep scale incremental remote)
if ((${#only[@]} == 0)); then only=("${figures[@]}"); fi
for i in "${!only[@]}"; do
    f=${only[$i]}
    # The issues number the figures 1-7: accept those too.
    if [[ $f =~ ^[1-7]$ ]]; then f=${figures[$((f - 1))]}; only[i]=$f; fi
    [[ " ${figures[*]} " == *" $f "* ]] || { echo "bench: unknown figure '$f' (one of: ${figures[*]}, or 1-7)" >&2; exit 2; }
done
wants() { [[ " ${only[*]} " == *" $1 "* ]]; }

if [ "$(id -u)" != 0 ]; then
    echo "bench: run as root (apt-get, dropping the page cache, FUSE mounts, mkfs)" >&2
    exit 1
fi

log() { printf '\n== %s  [%s]\n' "$*" "$(date +%T)"; }

# ---------------------------------------------------------------- packages
# Debian's own python3 runs the harness (borg needs it too): no pyenv shims.
PY=/usr/bin/python3
packages=(zstd tar squashfs-tools squashfuse borgbackup python3-pyfuse3 python3-llfuse restic
          gnuplot-nox e2fsprogs fuse3 time python3 xz-utils dpkg coreutils findutils util-linux procps linux-perf
          openssh-server openssh-client iproute2)
if ((install)); then
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi
modprobe fuse 2>/dev/null || true
if ((install)) && wants remote && grep -q '^root:!' /etc/shadow; then
    log "unlocking root's account (usermod -p '*' root): the remote figure's sshd (UsePAM no) refuses a locked one"
    usermod -p '*' root
fi

# ---------------------------------------------------------------- build
target=${CARGO_TARGET_DIR:-$ROOT/target}
hbb=${HBB:-$target/release/hbb}
if ((build)) && [ -z "${HBB:-}" ]; then
    log "cargo build --release --locked (target: $target)"
    cargo build --release --locked
fi
[ -x "$hbb" ] || { echo "bench: no hbb binary at $hbb" >&2; exit 1; }
"$hbb" --version

# ---------------------------------------------------------------- cleanup trap
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
work=$cache/work
mnt=$work/mnt
mkdir -p "$work" "$mnt"
cleanup() {
    local rc=$?
    # Every mount the harness made lives under $mnt; unmount whatever is left
    # (the harness unmounts its own, this is the backstop for a kill or a crash).
    local m
    for m in $(awk -v p="$mnt/" 'index($2, p) == 1 { print $2 }' /proc/mounts); do
        fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    # Mount processes the harness started (pids recorded as it starts them).
    if [ -f "$work/pids" ]; then
        local pid
        while read -r pid; do
            # Only if it is still that mount process (a pid may be reused).
            [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$mnt/" &&
                kill "$pid" 2>/dev/null || true
        done <"$work/pids"
        rm -f "$work/pids"
    fi
    # The remote figure's second host (the harness removes it; this is the
    # backstop): the processes in its namespaces, the namespaces, its interface.
    local ns p
    for ns in hbbbench-agent hbbbench-br; do
        [ -e "/run/netns/$ns" ] || continue
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    [ -e /sys/class/net/hbbbench0 ] && ip link del dev hbbbench0 2>/dev/null || true
    exit "$rc"
}
# The harness runs in the background so that a signal reaches this script at
# once: it is passed on as TERM (a background job ignores INT), the harness
# unmounts what it mounted, then the EXIT trap sweeps up.
harness=
on_signal() {
    trap - INT TERM
    if [ -n "$harness" ]; then
        kill -TERM "$harness" 2>/dev/null || true
        wait "$harness" 2>/dev/null || true
    fi
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# ---------------------------------------------------------------- corpora
need_gb=$((quick ? 6 : 25))
avail_gb=$(($(df --output=avail -k "$cache" | tail -1) / 1024 / 1024))
if ((avail_gb < need_gb)); then
    echo "bench: warning: $avail_gb GB free under $cache; corpora, archives and restores may need $need_gb GB" >&2
fi
corpus=$cache/corpus
mkdir -p "$corpus"

# K: the Linux source tree shipped by Debian (linux-source-6.1).
build_K() {
    local dir=$corpus/K
    [ -f "$dir/.complete" ] && return 0
    log "corpus K: apt-get download linux-source-6.1, unpack the tarball"
    rm -rf "$dir" "$corpus/deb"
    mkdir -p "$corpus/deb" "$dir"
    if ! ls "$corpus"/linux-source-6.1_*.deb >/dev/null 2>&1; then
        apt-get update -qq || true
        (cd "$corpus" && apt-get download -q linux-source-6.1)
    fi
    dpkg-deb -x "$(ls "$corpus"/linux-source-6.1_*.deb | tail -1)" "$corpus/deb"
    local tarball
    tarball=$(find "$corpus/deb" -name 'linux-source-6.1*.tar.*' | head -1)
    [ -n "$tarball" ] || { echo "bench: no tarball in linux-source-6.1" >&2; exit 1; }
    tar -xf "$tarball" -C "$dir"
    rm -rf "$corpus/deb"
    basename "$(ls -d "$dir"/linux-source-6.1*)" >"$dir/.name"
    touch "$dir/.complete"
}
K_path() { echo "$corpus/K/$(cat "$corpus/K/.name")"; }

# Kq: the quick corpus, a 150 MB slice of K (fs/, kernel/, include/, Documentation/).
build_Kq() {
    local dir=$corpus/Kq
    [ -f "$dir/.complete" ] && return 0
    build_K
    log "corpus Kq: a slice of K"
    rm -rf "$dir"; mkdir -p "$dir/linux-slice"
    local k; k=$(K_path)
    for d in fs kernel include Documentation; do cp -a "$k/$d" "$dir/linux-slice/"; done
    echo linux-slice >"$dir/.name"
    touch "$dir/.complete"
}

# V: an ext4 image holding K, most of it free.
build_V() { # name source size
    local img=$corpus/$1.img src=$2 size=$3
    [ -f "$img.complete" ] && return 0
    log "corpus $1: $size ext4 image holding $src (mkfs.ext4 -d)"
    rm -f "$img"
    truncate -s "$size" "$img"
    mkfs.ext4 -q -F -b 4096 -L hbb-bench -U 6b1e5a3c-0b2d-4a8e-9c1f-3d2e1f0a9b8c -E root_owner=0:0 -d "$src" "$img"
    touch "$img.complete"
}

# L: one large file, K as an uncompressed tar, for random reads in a large file.
build_L() { # name source
    local dir=$corpus/$1 src=$2
    [ -f "$dir/.complete" ] && return 0
    log "corpus $1: $src as one uncompressed tar"
    rm -rf "$dir"; mkdir -p "$dir"
    tar -cf "$dir/large.tar" -C "$(dirname "$src")" "$(basename "$src")"
    touch "$dir/.complete"
}

# S: generated small files.
build_S() { # count
    local dir=$corpus/S-$1
    [ -f "$dir/.complete" ] && return 0
    log "corpus S-$1: $1 generated small files"
    rm -rf "$dir"
    "$PY" "$ROOT/scripts/bench.py" gen-small "$dir/tree" "$1"
    touch "$dir/.complete"
}

if ((quick)); then
    mode=quick
    build_Kq; Kdir=$corpus/Kq/$(cat "$corpus/Kq/.name")
    Vname=Vq; Vsize=1G; Lname=Lq
    scale=(1000 10000 50000)
    sweep=(256K 2M 32M)
    reps=${reps:-1}
else
    mode=full
    build_K; Kdir=$(K_path)
    Vname=V; Vsize=4G; Lname=L
    scale=(10000 100000 1000000)
    sweep=(256K 512K 1M 2M 4M 8M 16M 24M 32M)
    reps=${reps:-3}
fi
if wants snapshot || wants restore; then build_V "$Vname" "$Kdir" "$Vsize"; fi
if wants mount || wants sweep; then build_L "$Lname" "$Kdir"; fi
if wants scale; then for n in "${scale[@]}"; do build_S "$n"; done; fi
if ((prepare)); then log "corpora ready under $corpus"; exit 0; fi

# ---------------------------------------------------------------- measure
out=${out:-$([ "$mode" = quick ] && echo "$cache/quick" || echo "$ROOT/docs")}
mkdir -p "$out"
log "measuring: ${only[*]} ($mode, $reps repetition(s)); results in $cache/results-$mode, report in $out"
"$PY" "$ROOT/scripts/bench.py" run \
    --hbb "$hbb" --mode "$mode" --reps "$reps" --cache "$cache" --work "$work" --out "$out" \
    --K "$Kdir" --V "$corpus/$Vname.img" --L "$corpus/$Lname/large.tar" \
    --scale "${scale[*]}" --sweep "${sweep[*]}" --only "${only[*]}" --root "$ROOT" &
harness=$!
wait "$harness"
harness=
log "done: $out/BENCHMARKS.md"
