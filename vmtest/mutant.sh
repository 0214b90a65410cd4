#!/usr/bin/env bash
# Builds a deliberately broken xenchan-agent (one real-world mistake) from this checkout's
# committed sources and prints the binary's path, to check that the real-guest tier
# catches the mistake:
#
#   XENCHAN_VMTEST_AGENT=$(vmtest/mutant.sh no-raw) vmtest/run.sh xen     # must FAIL
#   XENCHAN_VMTEST_AGENT=$(vmtest/mutant.sh eof-exit) vmtest/run.sh virtio # must FAIL
#
# Mutants:
#   no-raw     the hvc tty is left as it is (no cfmakeraw): canonical mode, echo, \n -> \r\n
#   eof-exit   the agent exits when the virtio port reads end-of-file (no host connected)
#   eof-spin   the agent retries at once after end-of-file instead of backing off
#   sticky-hup the channel device without the fix for tokio's sticky hang-up readiness
#              (guest-agent/src/device.rs as it was before that fix)
#
# The sources are copied from `git HEAD` into a temporary worktree (your uncommitted
# changes are not used), patched, and built with --release into
# ${CARGO_TARGET_DIR:-<repo>/target}/mutants/<name>/. Needs git and cargo; progress goes
# to stderr, only the path to stdout.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$SRC/target}
name=${1:-}
case $name in
  no-raw | eof-exit | eof-spin | sticky-hup) ;;
  -h | --help | '')
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    [ -n "$name" ] && exit 0 || exit 2
    ;;
  *)
    echo "mutant.sh: unknown mutant '$name' (no-raw, eof-exit, eof-spin, sticky-hup)" >&2
    exit 2
    ;;
esac

work=$(mktemp -d /tmp/xenchan-mutant.XXXXXX)
trap 'git -C "$SRC" worktree remove --force "$work/src" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$SRC" worktree add --detach -q "$work/src" HEAD

# patch FILE OLD NEW: replace the exact text OLD once; fail loudly if the source moved on.
patch() {
  python3 - "$work/src/$1" "$2" "$3" <<'EOF'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"mutant.sh: {path}: the text to change is not there exactly once (the source moved on): {old!r}")
open(path, "w").write(text.replace(old, new))
EOF
}

case $name in
  no-raw)
    patch guest-agent/src/device.rs '        if tty {
            make_raw(&file)?;
        }' '        let _ = make_raw;'
    ;;
  eof-exit)
    patch guest-agent/src/session.rs '                    if s.stats.eofs == 1 {' '                    if !tty { std::process::exit(0); }
                    if s.stats.eofs == 1 {'
    ;;
  eof-spin)
    patch guest-agent/src/session.rs '                    s.paused_until = Some(Instant::now() + s.eof_pause);' '                    let _ = s.eof_pause;'
    ;;
  sticky-hup)
    fix=$(git -C "$SRC" log --format=%H -1 --grep='sticky hang-up' -- guest-agent/src/device.rs)
    [ -n "$fix" ] || {
      echo "mutant.sh: no commit with the sticky hang-up fix found" >&2
      exit 1
    }
    git -C "$SRC" show "$fix^:guest-agent/src/device.rs" >"$work/src/guest-agent/src/device.rs"
    ;;
esac

out=$TARGET/mutants/$name
echo "mutant.sh: building the '$name' agent" >&2
(cd "$work/src" && CARGO_TARGET_DIR=$TARGET/mutants/build cargo build --release --locked -q -p xenchan-agent --bin xenchan-agent)
mkdir -p "$out"
install -m 0755 "$TARGET/mutants/build/release/xenchan-agent" "$out/xenchan-agent"
echo "$out/xenchan-agent"
