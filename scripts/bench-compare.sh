#!/bin/sh
# Before and after in one run (docs/PERFORMANCE.md, "Compare two versions"):
#   scripts/bench-compare.sh BASE [xenchan-bench options...]
# builds the release binaries of git revision BASE in a git worktree of their own (under
# target/bench-base/<rev>/, with its own cargo target folder there, so the current build
# is untouched), then runs the current tree's xenchan-bench with --baseline-bin-dir: every
# section runs for BASE's binaries and for the current ones back to back, and a second
# table shows both medians and their ratio. BASE must already have the bench's helper
# binaries (xenchan-bench-agent, xenchan-bench-swarm).
set -eu
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
if [ $# -lt 1 ]; then
    usage >&2
    exit 64
fi
if [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    usage
    exit 0
fi
base=$1
shift
cargo=${CARGO:-cargo}
root=$(git rev-parse --show-toplevel)
rev=$(git rev-parse --verify --short "$base^{commit}") || {
    echo "bench-compare: $base is not a git revision here" >&2
    exit 64
}
top=${CARGO_TARGET_DIR:-$root/target}/bench-base/$rev
src=$top/src
if [ ! -e "$src/.git" ]; then
    mkdir -p "$top"
    git -C "$root" worktree add --detach "$src" "$rev" >&2
fi
echo "bench-compare: building $base ($rev) in $src" >&2
(cd "$src" && CARGO_TARGET_DIR=$top/target "$cargo" build --release --locked --bins \
    -p xenchan-broker -p xenchan-agent -p xenchan-bench)
cd "$root"
exec "$cargo" bench --locked -p xenchan-bench -- \
    --baseline-bin-dir "$top/target/release" --baseline-label "$base ($rev)" "$@"
