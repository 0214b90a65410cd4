#!/usr/bin/env bash
# Proves the Debian packages are clean and work on a fresh Debian 12:
#   1. lintian on both .deb files (errors fail the run; warnings are listed);
#   2. a Debian 12 root filesystem (debootstrap --variant=minbase, cached), in a chroot:
#      dpkg -i of both packages with no other package added;
#   3. what the maintainer scripts must have done (group, conffile, enabled units, hooks
#      folder), the broker started by hand on a temporary configuration (systemd does not
#      run in a chroot) and answering `xenchan status`, the installed libvirt hook
#      registering a domain with it, the agent starting and stopping cleanly, and
#      `man xenchan` (and the other pages) rendering;
#   4. dpkg --purge of both, and what it must leave behind.
#
# Usage: packaging/test-install.sh [BROKER.deb AGENT.deb]
#   Without arguments: the newest xenchan-broker_*.deb and xenchan-agent_*.deb in
#   <cargo target dir>/debian (what `cargo xtask deb` makes).
# Environment:
#   XENCHAN_PKGTEST_CACHE   root filesystem cache [/var/cache/xenchan-pkgtest]
#   XENCHAN_PKGTEST_MIRROR  Debian mirror [the one apt uses here, else deb.debian.org]
#   XENCHAN_PKGTEST_DEADLINE_FACTOR  multiplies every deadline [1]
#
# Needs root (debootstrap, chroot, mounts). Every step has a deadline; the EXIT trap stops
# the processes this script started (by PID), undoes its mounts and removes its work
# folder, whatever happened.
#
# Cache (like the VM tier's, docs/OPERATING.md): <cache>/rootfs/<recipe12>-<mirror8>/
# with rootfs.tar.zst and `complete`; recipe12 hashes SUITE and PACKAGES below, mirror8
# the mirror URL, suite and the `Date:` of its InRelease (new package versions make a new
# entry). With the mirror unreachable, the newest complete entry of the recipe is used.
# The VM tier's cached guest is not reused: it is customised for the VMs and 3x larger
# (kernel modules), while this test wants a fresh minbase root that unpacks in seconds.
# shellcheck disable=SC2001,SC2012,SC2016  # our own file names; dpkg-query formats are literal
set -euo pipefail

SUITE=bookworm
# What the root filesystem has besides minbase: systemd and udev so that the maintainer
# scripts' unit enabling and udev paths run for real, man-db for `man xenchan`.
PACKAGES=systemd,systemd-sysv,udev,man-db
RECIPE="debootstrap --variant=minbase --include=$PACKAGES $SUITE; recipe v3"

SRC=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${XENCHAN_PKGTEST_CACHE:-/var/cache/xenchan-pkgtest}
FACTOR=${XENCHAN_PKGTEST_DEADLINE_FACTOR:-1}
T0=$(date +%s)

log() { printf '[pkgtest +%4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
fail() {
  log "FAIL: $*"
  exit 1
}
# secs N: N seconds times the deadline factor.
secs() { awk -v d="$1" -v f="$FACTOR" 'BEGIN { printf "%d", d * f }'; }
# bounded N CMD...: run CMD with a deadline of N (scaled) seconds.
bounded() {
  local n
  n=$(secs "$1")
  shift
  timeout -k 5 "$n" "$@"
}

# --- clean-up of what this run made, and only that ---------------------------------
WORK=""
MOUNTS=()
PIDS=()
cleanup() {
  local rc=$? i
  for i in "${PIDS[@]}"; do
    kill -TERM "$i" 2>/dev/null || true
  done
  sleep 0.2
  for i in "${PIDS[@]}"; do
    kill -KILL "$i" 2>/dev/null || true
  done
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -R "${MOUNTS[i]}" 2>/dev/null || umount -R -l "${MOUNTS[i]}" 2>/dev/null || true
  done
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    # Never delete through a mount (the chroot's /dev is the host's).
    if findmnt -rn -o TARGET | grep -q "^$WORK"; then
      log "mounts remain under $WORK: not removing it"
    else
      rm -rf --one-file-system "$WORK"
    fi
  fi
  if [ "$rc" -eq 0 ]; then
    log "ok (${SECONDS}s)"
  else
    log "failed with status $rc (${SECONDS}s)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_chroot() {
  local d=$1
  mkdir -p "$d/proc" "$d/sys" "$d/dev"
  mount -t proc proc "$d/proc" && MOUNTS+=("$d/proc")
  mount -t sysfs sys "$d/sys" && MOUNTS+=("$d/sys")
  # The host's /dev with /dev/pts and /dev/shm; a slave, so that nothing mounted or
  # unmounted below it here propagates back to the host (where / is often shared).
  mount --rbind /dev "$d/dev" && MOUNTS+=("$d/dev")
  mount --make-rslave "$d/dev"
}

# --- inputs ------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot, mounts)"

need=()
for p in debootstrap zstd lintian curl util-linux binutils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  log "installing host packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  bounded 300 apt-get update -qq
  bounded 600 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ $# -eq 2 ]; then
  BROKER_DEB=$(realpath "$1")
  AGENT_DEB=$(realpath "$2")
elif [ $# -eq 0 ]; then
  target=${CARGO_TARGET_DIR:-}
  if [ -z "$target" ]; then
    target=$(cd "$SRC" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
      sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  fi
  BROKER_DEB=$(ls -1t "$target"/debian/xenchan-broker_*.deb 2>/dev/null | head -n1 || true)
  AGENT_DEB=$(ls -1t "$target"/debian/xenchan-agent_*.deb 2>/dev/null | head -n1 || true)
else
  fail "usage: $0 [BROKER.deb AGENT.deb]"
fi
[ -f "$BROKER_DEB" ] || fail "no xenchan-broker .deb (run: cargo xtask deb)"
[ -f "$AGENT_DEB" ] || fail "no xenchan-agent .deb (run: cargo xtask deb)"
log "packages: $BROKER_DEB $AGENT_DEB"

# --- 1. lintian --------------------------------------------------------------------
log "lintian"
lint_out=$(bounded 300 lintian --fail-on error --tag-display-limit 0 "$BROKER_DEB" "$AGENT_DEB" 2>&1 |
  { grep -v 'running with root privileges is not recommended' || true; }) || {
  printf '%s\n' "$lint_out" >&2
  fail "lintian reports errors"
}
if [ -n "$lint_out" ]; then
  printf '%s\n' "$lint_out" | sed 's/^/  lintian: /' >&2
else
  log "lintian: nothing to report"
fi

# --- 2. the root filesystem (cached) -----------------------------------------------
detect_mirror() {
  if [ -n "${XENCHAN_PKGTEST_MIRROR:-}" ]; then
    echo "${XENCHAN_PKGTEST_MIRROR%/}"
    return
  fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -nE 's/^(URIs:|deb( \[[^]]*\])?)[[:space:]]+([^[:space:]]+).*/\3/p' |
    grep -E '/debian/?$' | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}" | sed 's:/*$::'
}
MIRROR=$(detect_mirror)
recipe=$(printf '%s\n' "$RECIPE" | sha256sum | cut -c1-12)
mirror_date=$(curl -fsS --max-time 20 "$MIRROR/dists/$SUITE/InRelease" 2>/dev/null |
  sed -n 's/^Date: //p' | head -n1 || true)
if [ -n "$mirror_date" ]; then
  key=$recipe-$(printf '%s\n%s\n%s\n' "$MIRROR" "$SUITE" "$mirror_date" | sha256sum | cut -c1-8)
else
  newest=$(ls -1dt "$CACHE"/rootfs/"$recipe"-*/complete 2>/dev/null | head -n1 || true)
  [ -n "$newest" ] || fail "cannot read $MIRROR/dists/$SUITE/InRelease and no cached root filesystem"
  key=$(basename "$(dirname "$newest")")
  log "mirror unreachable: using the newest cached root filesystem ($key)"
fi
ENTRY=$CACHE/rootfs/$key
WORK=$(mktemp -d /var/tmp/xenchan-pkgtest.XXXXXX)
ROOT=$WORK/root

pack() {
  tar -C "$1" --numeric-owner --xattrs --xattrs-include='*' -cf - . | zstd -q -3 -T0 -o "$2.tmp"
  mv -f "$2.tmp" "$2"
}
unpack() {
  mkdir -p "$2"
  zstd -q -d -c "$1" | tar -C "$2" --numeric-owner --xattrs --xattrs-include='*' -xf -
}

build_rootfs() {
  local tmp=$WORK/build
  log "debootstrap --variant=minbase --include=$PACKAGES $SUITE from $MIRROR (once per cache key; ~2.5 min)"
  bounded 900 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    fail "debootstrap failed"
  }
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_* "$tmp/debootstrap"
  : >"$tmp/etc/resolv.conf"
  pack "$tmp" "$ENTRY/rootfs.tar.zst"
  echo "$RECIPE; mirror $MIRROR $SUITE, InRelease Date: ${mirror_date:-unknown}" >"$ENTRY/key.txt"
  touch "$ENTRY/complete"
  rm -rf --one-file-system "$tmp"
}

mkdir -p "$CACHE/rootfs" "$ENTRY"
if [ ! -f "$ENTRY/complete" ]; then
  exec {lockfd}>"$CACHE/lock"
  flock -w "$(secs 900)" "$lockfd" || fail "cache $CACHE is locked by another run"
  [ -f "$ENTRY/complete" ] || build_rootfs
  flock -u "$lockfd"
  # Keep this entry and the most recent other one.
  ls -1dt "$CACHE"/rootfs/*/ | tail -n +3 | while read -r old; do
    log "removing old cache entry $old"
    rm -rf --one-file-system "$old"
  done
else
  log "cached root filesystem: $ENTRY"
fi
log "unpacking the root filesystem"
bounded 300 bash -c "$(declare -f unpack); unpack '$ENTRY/rootfs.tar.zst' '$ROOT'"
mount_chroot "$ROOT"
# Nothing may start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
in_root() { chroot "$ROOT" "$@"; }

# --- 3. install and use ------------------------------------------------------------
mkdir -p "$ROOT/tmp/debs"
cp "$BROKER_DEB" "$AGENT_DEB" "$ROOT/tmp/debs/"
log "dpkg -i (no other package may be needed)"
bounded 300 chroot "$ROOT" dpkg -i /tmp/debs/"$(basename "$BROKER_DEB")" /tmp/debs/"$(basename "$AGENT_DEB")" \
  >"$WORK/dpkg.log" 2>&1 || {
  cat "$WORK/dpkg.log" >&2
  fail "dpkg -i failed"
}
for p in xenchan-broker xenchan-agent; do
  in_root dpkg-query -W -f='${Status}\n' "$p" | grep -qx "install ok installed" ||
    fail "$p is not installed cleanly: $(in_root dpkg-query -W -f='${Status}' "$p")"
done
log "installed: $(in_root dpkg-query -W -f='${Package} ${Version}, ' xenchan-broker xenchan-agent)"

check() {
  local what=$1
  shift
  if "$@"; then
    log "ok: $what"
  else
    fail "$what"
  fi
}
check "group xenchan exists" sh -c "chroot '$ROOT' getent group xenchan >/dev/null"
check "group xenchan-ro exists (read-only role)" sh -c "chroot '$ROOT' getent group xenchan-ro >/dev/null"
check "/etc/xenchan/hook.toml is a conffile" \
  sh -c "chroot '$ROOT' dpkg-query -W -f='\${Conffiles}' xenchan-broker | grep -q ' /etc/xenchan/hook.toml '"
check "no libvirt-qemu group, so no KVM drop-in" \
  sh -c "chroot '$ROOT' getent group libvirt-qemu >/dev/null || test ! -e '$ROOT/etc/systemd/system/xenchan-broker.service.d/50-libvirt-qemu.conf'"
check "/etc/xenchan/broker.toml is a conffile" \
  sh -c "chroot '$ROOT' dpkg-query -W -f='\${Conffiles}' xenchan-broker | grep -q ' /etc/xenchan/broker.toml '"
check "the hooks folder exists" test -d "$ROOT/etc/xenchan/hooks"
check "xenchan-broker.service is enabled" test -L "$ROOT/etc/systemd/system/multi-user.target.wants/xenchan-broker.service"
check "xenchan-agent.service is enabled" test -L "$ROOT/etc/systemd/system/multi-user.target.wants/xenchan-agent.service"
# The daemon ships statically linked (idle RSS: no shared-library pages): no ELF
# interpreter, so it runs in any guest whatever its libc.
# cargo xtask deb falls back to the dynamic build, saying so, only when the musl target is
# not installed; then this check says why it skips.
musl="$(uname -m)-unknown-linux-musl"
if [ -d "$(rustc --print sysroot 2>/dev/null)/lib/rustlib/$musl" ]; then
  check "/usr/bin/xenchan-agent is statically linked (no ELF interpreter)" \
    sh -c "! readelf -l '$ROOT/usr/bin/xenchan-agent' | grep -q 'Requesting program interpreter'"
else
  log "skipped: the static-agent check (the Rust target $musl is not installed here, so the package carries the dynamic build)"
fi
check "udev rules installed" test -f "$ROOT/usr/lib/udev/rules.d/60-xenchan-channels.rules"
check "the udev rule's helper is where it points" \
  sh -c "grep -o 'RUN+=\"[^\"]*\"' '$ROOT/usr/lib/udev/rules.d/60-xenchan-channels.rules' | cut -d'\"' -f2 | xargs -I{} test -x '$ROOT{}'"
check "the packaged default configuration is valid" \
  bounded 30 chroot "$ROOT" xenchan-broker --config /etc/xenchan/broker.toml --check-config >/dev/null

# The broker, as the unit would run it, on a temporary configuration.
T=/tmp/pkgtest
mkdir -p "$ROOT$T"
cat >"$ROOT$T/broker.toml" <<EOF
socket_dir = "$T/sockets"
control_socket = "$T/broker.sock"
state_dir = "$T/state"
hooks_dir = "/etc/xenchan/hooks"
EOF
chroot "$ROOT" /usr/bin/xenchan-broker --config "$T/broker.toml" >"$WORK/broker.log" 2>&1 &
BROKER_PID=$!
PIDS+=("$BROKER_PID")
status_ok() { in_root xenchan --socket "$T/broker.sock" --timeout 2 status >"$WORK/status.txt" 2>&1; }
end=$(($(date +%s) + $(secs 30)))
until status_ok; do
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    cat "$WORK/broker.log" >&2
    fail "the broker exited"
  fi
  [ "$(date +%s)" -lt "$end" ] || {
    cat "$WORK/broker.log" "$WORK/status.txt" >&2
    fail "xenchan status did not answer within $(secs 30)s"
  }
  sleep 0.2
done
check "xenchan status answers: $(head -n1 "$WORK/status.txt")" grep -q '^broker ok' "$WORK/status.txt"
check "the control socket is mode 0660" \
  sh -c "[ \"\$(stat -c %a '$ROOT$T/broker.sock')\" = 660 ]"

# The installed libvirt hook, as libvirtd runs it (no environment but LC_ALL, PATH,
# HOME; its settings from /etc/xenchan/hook.toml), registers a domain with our channel.
printf 'socket = "%s"\n' "$T/broker.sock" >>"$ROOT/etc/xenchan/hook.toml"
cat >"$ROOT$T/web1.xml" <<EOF
<domain type='xen'><name>web1</name><uuid>6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a</uuid>
<devices><channel type='unix'><source mode='bind' path='$T/sockets/web1.sock'/>
<target type='xen' name='org.xenchan.agent.1'/></channel></devices></domain>
EOF
check "the libvirt hook registers a domain at prepare begin" \
  bounded 20 chroot "$ROOT" env -i LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root sh -c \
  "/usr/libexec/xenchan/libvirt-hook web1 prepare begin - <$T/web1.xml >$T/hook.out && test ! -s $T/hook.out"
check "the broker knows web1 with its UUID" \
  sh -c "chroot '$ROOT' xenchan --socket '$T/broker.sock' domain get web1 --json | grep '\"uuid\": \"6f0c1e4e-9a3b-4a53-8d7e-0d9f3f1c2b7a\"' >/dev/null"
check "xenchan xl-channel prints the xl line" \
  sh -c "chroot '$ROOT' xenchan xl-channel web1 | grep -F 'path=/run/xenchan/sockets/web1.sock' >/dev/null"

kill -TERM "$BROKER_PID"
rc=0
bounded 20 tail --pid="$BROKER_PID" -f /dev/null || fail "the broker did not stop on SIGTERM"
wait "$BROKER_PID" || rc=$?
PIDS=()
[ "$rc" -eq 0 ] || {
  cat "$WORK/broker.log" >&2
  fail "the broker exited $rc on SIGTERM"
}
log "ok: the broker stopped cleanly on SIGTERM"

# The agent starts (it waits for its channel device) and stops cleanly.
mkdir -p "$ROOT$T/guest/etc"
chroot "$ROOT" /usr/bin/xenchan-agent --root "$T/guest" --channel-dir "$T/xen-channel" \
  --virtio-dir "$T/virtio-ports" --state-dir "$T/agent-state" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
end=$(($(date +%s) + $(secs 15)))
until grep -q "xenchan-agent starting" "$WORK/agent.log"; do
  kill -0 "$AGENT_PID" 2>/dev/null || {
    cat "$WORK/agent.log" >&2
    fail "the agent exited"
  }
  [ "$(date +%s)" -lt "$end" ] || fail "the agent did not start within $(secs 15)s"
  sleep 0.2
done
kill -TERM "$AGENT_PID"
rc=0
bounded 15 tail --pid="$AGENT_PID" -f /dev/null || fail "the agent did not stop on SIGTERM"
wait "$AGENT_PID" || rc=$?
PIDS=()
[ "$rc" -eq 0 ] || fail "the agent exited $rc on SIGTERM"
log "ok: the agent started and stopped cleanly"
check "xen-console-setup runs" sh -c "chroot '$ROOT' /usr/libexec/xenchan/xen-console-setup --version >/dev/null"

for page in xenchan xenchan-hook xenchan-xl-channel xenchan-broker xenchan-agent xen-console-setup; do
  check "man $page renders" sh -c \
    "chroot '$ROOT' env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 MANPAGER=cat MANWIDTH=80 man $page 2>'$WORK/man.err' | grep NAME >/dev/null && ! grep -q . '$WORK/man.err'"
done

# --- 4. purge ------------------------------------------------------------------------
bounded 120 chroot "$ROOT" dpkg --purge xenchan-broker xenchan-agent >"$WORK/purge.log" 2>&1 || {
  cat "$WORK/purge.log" >&2
  fail "dpkg --purge failed"
}
check "purged: binaries, configuration and units are gone" sh -c \
  "! ls '$ROOT/usr/bin/xenchan' '$ROOT/etc/xenchan/broker.toml' \
     '$ROOT/etc/systemd/system/multi-user.target.wants/xenchan-broker.service' 2>/dev/null | grep -q ."
check "purged: the group stays (files elsewhere may belong to it)" \
  sh -c "chroot '$ROOT' getent group xenchan >/dev/null"
