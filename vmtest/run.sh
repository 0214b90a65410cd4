#!/usr/bin/env bash
# xenchan's real-guest tier: real kernels, real udev, real systemd, real Xen 4.17, all
# under QEMU's TCG (no KVM needed). See docs/VMTEST.md.
#
#   vmtest/run.sh [virtio] [xen]        (default: both, virtio first)
#
# 1. builds the xenchan binaries (cargo build --release --locked);
# 2. restores the Debian 12 guest and Xen dom0 root filesystems from the cache, or builds
#    them (debootstrap + apt in a chroot) and caches them;
# 3. makes this run's disk images with the fresh binaries in them;
# 4. virtio: boots the guest with a virtio-serial channel, runs the broker on this host,
#    checks push, idempotent re-push, reboot and port hot-plug, seals the guest and
#    boots a clone whose regenerated host keys reach `xenchan domain known-hosts`;
# 5. xen: boots Xen with dom0 (broker inside), creates a PV domU with a channel and a
#    vif, checks push (address included), `xl reboot`, `xl migrate` to the same dom0,
#    `xl destroy`.
# One VM at a time. Every VM and process it started is killed on any exit.
#
# Environment (all optional):
#   XENCHAN_VMTEST_CACHE            image cache (default /var/cache/xenchan-vmtest)
#   XENCHAN_VMTEST_MIRROR           Debian mirror (default: the one apt uses here)
#   XENCHAN_VMTEST_INSTALL          `deb`: install the packages of `make deb`; `bin`: copy
#                                   the binaries; default: deb when the packages are newer
#                                   than the binaries, else bin
#   XENCHAN_VMTEST_AGENT            agent binary to put in the guest instead of the fresh
#                                   build (to check that the tier catches a broken agent)
#   XENCHAN_VMTEST_NETWORK          `required`: the network item must be `applied`;
#                                   `auto` (default): `unsupported` is reported, not failed
#   XENCHAN_VMTEST_DEADLINE_FACTOR  multiply every stage deadline (default 1)
#   XENCHAN_VMTEST_MIGRATE=0        leave out the xen-migrate stage (`xl migrate` to the
#                                   same dom0, 1-5 min under TCG) for a quicker local run
#   XENCHAN_VMTEST_NO_BUILD=1       use the binaries already in the target dir
#   XENCHAN_VMTEST_KEEP=1           keep the work dir (images, logs) after the run
#   XENCHAN_VMTEST_HOLD=SECONDS     on a failure, keep the VMs running that long (to log in)
#   XENCHAN_VMTEST_LOGDIR           where a failed run copies its logs (serial consoles,
#                                   QEMU, broker; default /tmp/xenchan-vmtest-logs.<time>)
#   CARGO_TARGET_DIR                where cargo builds (default <repo>/target)
set -euo pipefail

VT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(cd "$VT_DIR/.." && pwd)
# shellcheck source=vmtest/lib.sh
. "$VT_DIR/lib.sh"
# shellcheck source=vmtest/rootfs.sh
. "$VT_DIR/rootfs.sh"
# shellcheck source=vmtest/image.sh
. "$VT_DIR/image.sh"
# shellcheck source=vmtest/checks.sh
. "$VT_DIR/checks.sh"
# shellcheck source=vmtest/virtio.sh
. "$VT_DIR/virtio.sh"
# shellcheck source=vmtest/xen.sh
. "$VT_DIR/xen.sh"

# The whole script is one function, read before it runs: editing this file during a run
# cannot change what the run does.
main() {
  usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit "${1:-0}"
  }

  RUN_VIRTIO=0
  RUN_XEN=0
  for a in "$@"; do
    case $a in
      virtio) RUN_VIRTIO=1 ;;
      xen) RUN_XEN=1 ;;
      -h | --help) usage 0 ;;
      *)
        echo "vmtest: unknown argument '$a'" >&2
        usage 2 >&2
        ;;
    esac
  done
  if ((RUN_VIRTIO + RUN_XEN == 0)); then
    RUN_VIRTIO=1
    RUN_XEN=1
  fi

  MIGRATE=${XENCHAN_VMTEST_MIGRATE:-1}
  case $MIGRATE in
    0 | 1) ;;
    *)
      echo "vmtest: XENCHAN_VMTEST_MIGRATE must be 0 or 1, not '$MIGRATE'" >&2
      exit 2
      ;;
  esac
  CACHE=${XENCHAN_VMTEST_CACHE:-/var/cache/xenchan-vmtest}
  TARGET=${CARGO_TARGET_DIR:-$SRC/target}
  BIN=$TARGET/release
  CHANNEL=org.xenchan.agent.1
  DIAG=""   # the running VM's diagnostics function, called when a stage fails
  mkdir -p "$CACHE"
  VT_WORK=$(mktemp -d /tmp/xenchan-vmtest.XXXXXX)
  VT_LOGS=$VT_WORK/logs
  mkdir -p "$VT_LOGS" "$VT_WORK/keys"

  cleanup() {
    local rc=$?
    # A second INT/TERM (e.g. to end XENCHAN_VMTEST_HOLD) must not cut the clean-up short.
    trap - EXIT
    trap ':' INT TERM
    if [ -n "$STAGE" ]; then
      VT_TIMINGS+=("$STAGE $(($(now) - STAGE_START)) $STAGE_DEADLINE FAILED")
      ((rc != 0)) || rc=1
      if [ -n "${DIAG:-}" ]; then
        STAGE_END=$(($(now) + 90))
        "$DIAG" || true
      fi
      if [ -n "${XENCHAN_VMTEST_HOLD:-}" ]; then
        log "XENCHAN_VMTEST_HOLD: VMs kept for ${XENCHAN_VMTEST_HOLD}s; ssh -i $VT_WORK/keys/harness -p <port> root@127.0.0.1 (ports: virtio ${V_PORT:--}, xen ${X_PORT:--})"
        sleep "$XENCHAN_VMTEST_HOLD" &
        wait $! || kill $! 2>/dev/null || true # INT/TERM ends the hold
      fi
    fi
    stop_all_spawned
    umount_chroot
    print_timings
    if ((rc != 0)) && [ -n "$(ls -A "$VT_LOGS" 2>/dev/null)" ]; then
      local keep=${XENCHAN_VMTEST_LOGDIR:-/tmp/xenchan-vmtest-logs.$(date +%Y%m%d-%H%M%S)}
      mkdir -p "$keep" && cp -a "$VT_LOGS/." "$keep/" && log "logs of the failed run: $keep"
    fi
    if [ "${XENCHAN_VMTEST_KEEP:-0}" = 1 ]; then
      log "work dir kept: $VT_WORK"
    else
      rm -rf "$VT_WORK"
    fi
    if ((rc == 0)); then
      log "real-guest tier: PASS"
    else
      log "real-guest tier: FAIL (exit $rc)"
    fi
    exit "$rc"
  }
  trap cleanup EXIT
  trap 'log "interrupted"; exit 130' INT
  trap 'log "terminated"; exit 143' TERM

  stage_setup() {
    host_setup
    MIRROR=$(detect_mirror)
    ssh-keygen -q -t ed25519 -N '' -C vmtest-harness -f "$VT_WORK/keys/harness"
    ssh-keygen -q -t ed25519 -N '' -C cloud@vmtest -f "$VT_WORK/keys/cloud"
    log "mirror $MIRROR, cache $CACHE, work dir $VT_WORK"
  }

  stage_build() {
    if [ "${XENCHAN_VMTEST_NO_BUILD:-0}" = 1 ]; then
      log "XENCHAN_VMTEST_NO_BUILD=1: using the binaries in $BIN"
    else
      (cd "$SRC" && bounded cargo build --release --locked --bins -q \
        -p xenchan-agent -p xenchan-broker -p xenchan-cli)
    fi
    local b
    for b in xenchan-agent xen-console-setup xenchan-broker xenchan; do
      [ -x "$BIN/$b" ] || fail "missing binary $BIN/$b"
    done
    if [ -n "${XENCHAN_VMTEST_AGENT:-}" ]; then
      [ -x "$XENCHAN_VMTEST_AGENT" ] || fail "XENCHAN_VMTEST_AGENT=$XENCHAN_VMTEST_AGENT is not an executable"
      log "agent under test: $XENCHAN_VMTEST_AGENT (XENCHAN_VMTEST_AGENT)"
    fi
    choose_install
  }

  # Deadlines are about 3x the times measured on a 2-core TCG machine (docs/VMTEST.md,
  # "Measured"); boots have their own per-attempt deadline and one retry.
  stage setup 300 stage_setup
  stage build 1800 stage_build
  stage images 900 ensure_images

  # Both tiers: each runs as its own process (this script with one tier), so that a
  # failure in one still gives the other's result. A tier process is sent SIGTERM if this
  # one dies, and kills its own VMs then.
  if ((RUN_VIRTIO && RUN_XEN)); then
    failed=()
    for tier in virtio xen; do
      log "=== tier $tier"
      t0=$(now)
      XENCHAN_VMTEST_NO_BUILD=1 CARGO_TARGET_DIR=$TARGET setpriv --pdeathsig TERM -- "$0" "$tier" &
      child=$!
      VT_PIDS+=("$child")
      if wait "$child"; then
        VT_TIMINGS+=("tier-$tier $(($(now) - t0)) - ok")
      else
        VT_TIMINGS+=("tier-$tier $(($(now) - t0)) - FAILED")
        failed+=("$tier")
      fi
    done
    ((${#failed[@]} == 0)) || fail "tier(s) failed: ${failed[*]}"
    exit 0
  fi

  stage guest-image 120 make_guest_image
  if ((RUN_VIRTIO)); then
    stage virtio-boot 300 virtio_boot
    stage virtio-push 150 virtio_push
    stage virtio-repush 90 virtio_repush
    stage virtio-reboot 210 virtio_reboot
    stage virtio-hotplug 120 virtio_hotplug
    stage virtio-seal 120 virtio_seal
    stage virtio-clone 360 virtio_clone
    stage virtio-stop 60 virtio_stop
  fi
  if ((RUN_XEN)); then
    stage dom0-image 180 make_dom0_image
    stage xen-boot 420 xen_boot
    stage xen-create 300 xen_create
    stage xen-reboot 300 xen_reboot
    # The transfer alone took 28-222 s under TCG (docs/VMTEST.md); XENCHAN_VMTEST_MIGRATE=0
    # leaves it out of a quick local run (xen-destroy's checks hold either way: no new boot).
    if [ "$MIGRATE" = 1 ]; then
      stage xen-migrate 480 xen_migrate
    else
      log "XENCHAN_VMTEST_MIGRATE=0: xen-migrate left out"
    fi
    stage xen-destroy 150 xen_destroy
    stage xen-stop 60 xen_stop
  fi
}

main "$@"; exit  # on one line: bash never reads this file past it (an edit during a run cannot run a fragment)
