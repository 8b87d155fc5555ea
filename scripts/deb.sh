#!/usr/bin/env bash
# Builds hbb's Debian package with dpkg-deb (no tool to install: dpkg-deb
# comes with dpkg, and the man pages and completions have to be generated
# by running the built binary anyway).
#
# Usage: scripts/deb.sh [--binary PATH] [--out DIR]
#   builds `cargo build --release --locked` and writes
#   DIR/hbb_VERSION-1_ARCH.deb (DIR: $CARGO_TARGET_DIR/debian or
#   target/debian); prints the .deb's path on stdout.
#   --binary PATH  packages that hbb binary instead of building one (the
#                  package test uses the debug binary it already has).
#
# The package: /usr/bin/hbb; man pages hbb(1), hbb-COMMAND(1); bash, zsh and
# fish completions; the systemd units hbb-snapshot@.service and .timer with
# /usr/lib/hbb/snapshot-unit; README, docs, LICENSE and an
# example /etc/hbb/snapshot/NAME.conf in /usr/share/doc/hbb. Depends: fuse3
# (mount, and mount -t fuse.hbb through its mount.fuse3) and the shared
# libraries dpkg-shlibdeps finds. SOURCE_DATE_EPOCH (default: the last
# commit's time) dates the man pages and the changelog; DEBFULLNAME and
# DEBEMAIL name the maintainer. postinst creates /var/backups/hbb (0700),
# where the units write.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=
out=
while (($#)); do
    case $1 in
    --binary) bin=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: scripts/deb.sh [--binary PATH] [--out DIR]" >&2; exit 2 ;;
    esac
done

target=${CARGO_TARGET_DIR:-target}
if [ -z "$bin" ]; then
    cargo build --release --locked >&2
    bin=$target/release/hbb
fi
out=${out:-$target/debian}
maintainer="${DEBFULLNAME:-the hbb developers} <${DEBEMAIL:-hbb@localhost}>"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
debversion=$version-1
arch=$(dpkg --print-architecture)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/debian"
touch "$stage/debian/control" # dpkg-shlibdeps wants a source tree around
pkg=$stage/debian/hbb
doc=$pkg/usr/share/doc/hbb

install -Dm755 "$bin" "$pkg/usr/bin/hbb"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/hbb"
hbb=$pkg/usr/bin/hbb

# Man pages and completions, from the binary's own clap definitions.
"$hbb" man "$stage/man"
for page in "$stage"/man/*.1; do
    install -Dm644 "$page" "$pkg/usr/share/man/man1/$(basename "$page")"
    gzip -9n "$pkg/usr/share/man/man1/$(basename "$page")"
done
install -d "$pkg/usr/share/bash-completion/completions" \
    "$pkg/usr/share/zsh/vendor-completions" \
    "$pkg/usr/share/fish/vendor_completions.d"
"$hbb" completions bash >"$pkg/usr/share/bash-completion/completions/hbb"
"$hbb" completions zsh >"$pkg/usr/share/zsh/vendor-completions/_hbb"
"$hbb" completions fish >"$pkg/usr/share/fish/vendor_completions.d/hbb.fish"
chmod 644 "$pkg"/usr/share/*/*/hbb "$pkg"/usr/share/zsh/*/_hbb "$pkg"/usr/share/fish/*/hbb.fish

# systemd units and the command they run.
install -Dm644 -t "$pkg/lib/systemd/system" dist/systemd/hbb-snapshot@.service dist/systemd/hbb-snapshot@.timer dist/systemd/hbb-daemon.service
install -Dm755 dist/snapshot-unit "$pkg/usr/lib/hbb/snapshot-unit"

# Documentation. README's links (docs/MOUNT.md...) resolve beside it.
install -Dm644 README.md "$doc/README.md"
for d in docs/*.md; do
    install -Dm644 "$d" "$doc/$d"
done
install -Dm644 LICENSE "$doc/LICENSE"
install -Dm644 dist/snapshot.conf "$doc/examples/snapshot.conf"
install -Dm644 dist/systemd/hbb-daemon-fleet.conf "$doc/examples/hbb-daemon-fleet.conf"
{
    echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
    echo "Upstream-Name: hbb"
    echo
    echo "Files: *"
    echo "Copyright: the hbb developers"
    echo "License: MIT"
    sed -e 's/^$/./' -e 's/^/ /' LICENSE
} >"$doc/copyright"
date_rfc2822=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
{
    echo "hbb ($debversion) unstable; urgency=medium"
    echo
    echo "  * Package built from the hbb source tree by scripts/deb.sh."
    echo
    echo " -- $maintainer  $date_rfc2822"
} | gzip -9n >"$doc/changelog.Debian.gz"
chmod 644 "$doc/copyright" "$doc/changelog.Debian.gz"

# Control files.
shlibs=$(cd "$stage" && dpkg-shlibdeps -O debian/hbb/usr/bin/hbb 2>/dev/null | sed -n 's/^shlibs:Depends=//p' || true)
depends="${shlibs:-libc6, libgcc-s1}, fuse3"
size=$(du -sk --apparent-size "$pkg" | cut -f1)
install -d "$pkg/DEBIAN"
cat >"$pkg/DEBIAN/control" <<EOF
Package: hbb
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $depends
Recommends: man-db
Suggests: bash-completion
Section: admin
Priority: optional
Description: high-speed bulk backup: block-parallel zstd archives
 hbb backs up a directory tree (file mode) or a whole volume (volume mode)
 into one indexed, zstd-compressed archive, compressing blocks on every
 core, and reads it back: parallel restore, verification of every block,
 listing or extracting single files, and a read-only FUSE mount (also
 from fstab, as type fuse.hbb).
 .
 Scheduled snapshots: the systemd units hbb-snapshot@NAME.timer and
 hbb-snapshot@NAME.service, configured in /etc/hbb/snapshot/NAME.conf;
 or repositories (incremental, deduplicated, pruned by retention rules)
 with jobs run by the scheduler, hbb-daemon.service.
EOF
reload='# New or removed unit files: let a running systemd see them.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --system daemon-reload >/dev/null 2>&1 || true
fi'
cat >"$pkg/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
    # Where hbb-snapshot@.service writes: the one place its sandbox allows.
    install -d -m 0700 /var/backups/hbb
fi
$reload
EOF
cat >"$pkg/DEBIAN/postrm" <<EOF
#!/bin/sh
set -e
if [ "\$1" = purge ]; then
    # Backups are kept: only an empty directory goes.
    rmdir --ignore-fail-on-non-empty /var/backups/hbb 2>/dev/null || true
fi
$reload
EOF
chmod 755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/postrm"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/md5sums"
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb=$out/hbb_${debversion}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >&2
echo "$deb"
