# shellcheck shell=bash
# The image cache and this run's disk images: restores the root filesystems that
# rootfs.sh builds from the cache (or has them built), and turns them into per-run disk
# images with the freshly built xenchan binaries injected.
#
# Cache key (docs/VMTEST.md): sha256 of the recipe (vmtest/rootfs.sh and
# vmtest/files/image/**) and of the mirror URL + suite + the `Date:` of the suite's
# InRelease (which changes whenever the archive publishes new package versions),
# shortened: <recipe12>-<mirror8>. If the mirror cannot be reached, the newest complete
# cache entry of the same recipe is used. Nothing else (the checks, the binaries, this
# file) is in the key: changing them reuses the cached root filesystems.
#
# Everything in the cache is written to a temporary name and renamed when complete, so a
# run killed half-way leaves nothing that a later run would trust.

# The Debian mirror this machine's apt uses (deb822 `URIs:` or one-line `deb`), unless
# XENCHAN_VMTEST_MIRROR says otherwise.
detect_mirror() {
  if [ -n "${XENCHAN_VMTEST_MIRROR:-}" ]; then
    echo "${XENCHAN_VMTEST_MIRROR%/}"
    return
  fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    sed -nE 's/^(URIs:|deb( \[[^]]*\])?)[[:space:]]+([^[:space:]]+).*/\3/p' |
    grep -E '/debian/?$' | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}" | sed 's:/*$::'
}

# image_key: sets IMAGE_KEY (the cache key) and IMAGE_KEY_SOURCE (what it was made of).
image_key() {
  local recipe mirror_date mirror_hash
  recipe=$(cd "$VT_DIR" && find rootfs.sh files/image -type f -print0 | sort -z |
    xargs -0 sha256sum | sha256sum | cut -c1-12)
  mirror_date=$(curl -fsS --max-time 20 "$MIRROR/dists/$SUITE/InRelease" 2>/dev/null |
    sed -n 's/^Date: //p' | head -n1 || true)
  if [ -z "$mirror_date" ]; then
    local newest
    newest=$(ls -1dt "$CACHE"/images/"$recipe"-*/complete 2>/dev/null | head -n1 || true)
    [ -n "$newest" ] || fail "cannot read $MIRROR/dists/$SUITE/InRelease and no cached image of this recipe"
    IMAGE_KEY=$(basename "$(dirname "$newest")")
    IMAGE_KEY_SOURCE="recipe sha256 $recipe; mirror unreachable: newest cached entry"
    log "mirror unreachable: using the newest cached image of this recipe"
    return
  fi
  mirror_hash=$(printf '%s\n%s\n%s\n' "$MIRROR" "$SUITE" "$mirror_date" | sha256sum | cut -c1-8)
  IMAGE_KEY=$recipe-$mirror_hash
  IMAGE_KEY_SOURCE="recipe sha256 $recipe (vmtest/rootfs.sh, vmtest/files/image); mirror $MIRROR $SUITE, InRelease Date: $mirror_date"
}

# Host packages this tier needs. Installed only when missing.
host_setup() {
  local pkgs=(qemu-system-x86 qemu-utils debootstrap e2fsprogs zstd jq curl socat openssh-client
    iproute2 util-linux dpkg)
  local missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing host packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    bounded apt-get update -qq
    bounded apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  [ "$(id -u)" -eq 0 ] || fail "vmtest needs root (debootstrap, chroot, mkfs of root-owned trees)"
}

# ensure_images: sets IMAGES to a complete cache entry, building what is missing.
ensure_images() {
  image_key
  local key=$IMAGE_KEY
  IMAGES=$CACHE/images/$key
  mkdir -p "$IMAGES"
  if [ -f "$IMAGES/complete" ]; then
    log "cached images: $IMAGES"
    touch "$IMAGES/complete"
    return 0
  fi
  log "no complete cache entry for key $key: building (${IMAGE_KEY_SOURCE:-})"
  exec {lockfd}>"$CACHE/lock"
  flock -w "$(remaining)" "$lockfd" || fail "cache $CACHE is locked by another run"
  if [ ! -f "$IMAGES/complete" ]; then
    [ -f "$IMAGES/guest-rootfs.tar.zst" ] || build_guest_rootfs "$IMAGES"
    [ -f "$IMAGES/dom0-rootfs.tar.zst" ] && [ -f "$IMAGES/xen-4.17" ] || build_dom0_rootfs "$IMAGES"
    echo "${IMAGE_KEY_SOURCE:-}" >"$IMAGES/key.txt"
    touch "$IMAGES/complete"
    # Keep this entry and the most recent other one; older entries are stale.
    ls -1dt "$CACHE"/images/*/ | tail -n +3 | while read -r old; do
      log "removing old cache entry $old"
      rm -rf "$old"
    done
  fi
  flock -u "$lockfd"
  du -sh "$IMAGES" | sed 's/^/cache size: /' >&2
}

# How xenchan gets into the images (INSTALL, chosen by choose_install):
#   deb  the Debian packages `make deb` built (<target>/debian/xenchan-{agent,broker}_*.deb),
#        installed with dpkg in a chroot: their maintainer scripts enable the units and
#        make the broker's group, as on a user's machine;
#   bin  the fresh binaries, units and udev rules copied where the packages put them
#        (udev-rules/README.md, guest-agent/systemd, broker/systemd), units enabled.
# XENCHAN_VMTEST_INSTALL=deb|bin forces one; by default deb when both packages are there
# and newer than the binaries (so they hold this build), else bin.
choose_install() {
  AGENT_DEB=$(ls -1t "$TARGET"/debian/xenchan-agent_*.deb 2>/dev/null | head -n1 || true)
  BROKER_DEB=$(ls -1t "$TARGET"/debian/xenchan-broker_*.deb 2>/dev/null | head -n1 || true)
  local fresh=0
  if [ -n "$AGENT_DEB" ] && [ -n "$BROKER_DEB" ] &&
    ! [ "$BIN/xenchan-agent" -nt "$AGENT_DEB" ] && ! [ "$BIN/xenchan-broker" -nt "$BROKER_DEB" ]; then
    fresh=1
  fi
  INSTALL=${XENCHAN_VMTEST_INSTALL:-auto}
  case $INSTALL in
    auto) if ((fresh)); then INSTALL=deb; else INSTALL=bin; fi ;;
    deb) [ -n "$AGENT_DEB" ] && [ -n "$BROKER_DEB" ] || fail "XENCHAN_VMTEST_INSTALL=deb but no packages in $TARGET/debian (make deb)" ;;
    bin) ;;
    *) fail "XENCHAN_VMTEST_INSTALL must be deb or bin, not '$INSTALL'" ;;
  esac
  if [ "$INSTALL" = deb ]; then
    ((fresh)) || log "WARNING: the packages are older than the binaries in $BIN"
    log "installing the packages $(basename "$AGENT_DEB") and $(basename "$BROKER_DEB")"
  else
    log "installing the binaries from $BIN (no packages newer than them in $TARGET/debian)"
  fi
}

# dpkg_install ROOT DEB: install a package into a root filesystem (nothing starts: a
# policy-rc.d refuses, and the maintainer scripts see no running systemd or udev).
dpkg_install() {
  local d=$1 deb=$2 out
  cp "$deb" "$d/tmp/"
  printf '#!/bin/sh\nexit 101\n' >"$d/usr/sbin/policy-rc.d"
  chmod 0755 "$d/usr/sbin/policy-rc.d"
  mount_chroot "$d"
  out=$(bounded chroot "$d" dpkg -i "/tmp/$(basename "$deb")" 2>&1) || {
    umount_chroot
    fail "dpkg -i $(basename "$deb") failed: $out"
  }
  umount_chroot
  rm -f "$d/usr/sbin/policy-rc.d" "$d/tmp/$(basename "$deb")"
}

# install_agent ROOT: the agent, its unit (enabled) and udev rules. XENCHAN_VMTEST_AGENT
# then replaces the agent binary (to check that the tier catches a broken agent;
# docs/VMTEST.md).
install_agent() {
  local d=$1
  if [ "$INSTALL" = deb ]; then
    dpkg_install "$d" "$AGENT_DEB"
  else
    install -D -m 0755 "$BIN/xenchan-agent" "$d/usr/bin/xenchan-agent"
    install -D -m 0755 "$BIN/xen-console-setup" "$d/usr/libexec/xenchan/xen-console-setup"
    install -D -m 0644 "$SRC/guest-agent/systemd/xenchan-agent.service" "$d/usr/lib/systemd/system/xenchan-agent.service"
    local r
    for r in "$SRC"/udev-rules/*.rules; do
      install -D -m 0644 "$r" "$d/usr/lib/udev/rules.d/$(basename "$r")"
    done
    mkdir -p "$d/etc/systemd/system/multi-user.target.wants"
    ln -sf /usr/lib/systemd/system/xenchan-agent.service "$d/etc/systemd/system/multi-user.target.wants/xenchan-agent.service"
  fi
  if [ -n "${XENCHAN_VMTEST_AGENT:-}" ]; then
    install -m 0755 "$XENCHAN_VMTEST_AGENT" "$d/usr/bin/xenchan-agent"
  fi
}

# install_broker ROOT: the broker (its unit enabled) and the CLI.
install_broker() {
  local d=$1
  if [ "$INSTALL" = deb ]; then
    dpkg_install "$d" "$BROKER_DEB"
  else
    install -D -m 0755 "$BIN/xenchan-broker" "$d/usr/bin/xenchan-broker"
    install -D -m 0755 "$BIN/xenchan" "$d/usr/bin/xenchan"
    install -D -m 0644 "$SRC/broker/systemd/xenchan-broker.service" "$d/usr/lib/systemd/system/xenchan-broker.service"
    mkdir -p "$d/etc/systemd/system/multi-user.target.wants"
    ln -sf /usr/lib/systemd/system/xenchan-broker.service "$d/etc/systemd/system/multi-user.target.wants/xenchan-broker.service"
    chroot "$d" groupadd --system xenchan
  fi
}

# harness_key ROOT: root logins with this run's harness key.
harness_key() {
  install -d -m 0700 "$1/root/.ssh"
  install -m 0600 "$VT_WORK/keys/harness.pub" "$1/root/.ssh/authorized_keys"
}

# make_guest_image: $VT_WORK/guest.img = cached guest rootfs + agent + harness key.
make_guest_image() {
  local d=$VT_WORK/guest-root
  unpack "$IMAGES/guest-rootfs.tar.zst" "$d"
  install_agent "$d"
  harness_key "$d"
  mkfs.ext4 -q -F -L root -d "$d" "$VT_WORK/guest.img" 1200M
  rm -rf "$d"
}

# make_dom0_image: $VT_WORK/dom0.img = cached dom0 rootfs + the broker (its systemd unit
# enabled) and CLI, the broker config, the domU's xl config, the harness key.
make_dom0_image() {
  local d=$VT_WORK/dom0-root
  unpack "$IMAGES/dom0-rootfs.tar.zst" "$d"
  harness_key "$d"
  install_broker "$d"
  cp -a "$VT_DIR/files/dom0/." "$d/"
  mkdir -p "$d/var/log/xen/console" # xenconsoled --log-dir (rootfs.sh) does not make it
  chown -R root:root "$d/etc/xenchan" "$d/etc/xen" "$d/etc/systemd/network" "$d/etc/modules-load.d"
  mkfs.ext4 -q -F -L root -d "$d" "$VT_WORK/dom0.img" 3G
  rm -rf "$d"
}
