#!/usr/bin/env bash
# The long run of the mount's load test: 64 readers over random files and
# offsets for SECONDS (default 180), every byte checked, memory bounded.
# Usage: scripts/load.sh [SECONDS]   (as root; needs fuse3)
set -euo pipefail
cd "$(dirname "$0")/.."
HBB_LOAD_SECS=${1:-180} cargo test --release --locked --test mount sixty_four_readers_under_load -- --nocapture
