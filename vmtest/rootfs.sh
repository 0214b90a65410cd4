# shellcheck shell=bash
# The recipe of the cached root filesystems: the Debian 12 guest (debootstrap) and the
# Xen dom0 (the guest plus the Xen packages, installed with apt in a chroot), and the Xen
# hypervisor. Any change to this file or to vmtest/files/image/ changes the cache key
# (image.sh), so the next run rebuilds them.

SUITE=bookworm
# What the guest needs (docs/VMTEST.md): systemd + udev for the agent's unit and rules,
# sshd for the checks, xenstore-utils for looking at xenstore from a domU by hand.
GUEST_PACKAGES=systemd,systemd-sysv,udev,dbus,iproute2,openssh-server,kmod,procps,linux-image-amd64,initramfs-tools,zstd,xenstore-utils
# What dom0 adds: the xl toolstack, oxenstored and xenconsoled (xen-utils), the QEMU that
# serves PV channels, curl for the broker's metrics.
DOM0_PACKAGES="xen-utils-4.17 xenstore-utils qemu-system-xen curl"
HYPERVISOR_PACKAGE=xen-hypervisor-4.17-amd64

# pack DIR FILE: DIR as a zstd tarball, atomically.
pack() {
  tar -C "$1" --numeric-owner --xattrs --xattrs-include='*' -cf - . | zstd -q -3 -T0 -o "$2.tmp"
  mv -f "$2.tmp" "$2"
}

# unpack FILE DIR
unpack() {
  rm -rf "$2"
  mkdir -p "$2"
  zstd -q -d -c "$1" | tar -C "$2" --numeric-owner --xattrs --xattrs-include='*' -xf -
}

# The guest's own settings, applied once to the debootstrap tree (cached with it).
customise_guest() {
  local d=$1
  cp -a "$VT_DIR/files/image/." "$d/"
  chown -R root:root "$d/etc/systemd" "$d/etc/ssh/sshd_config.d"
  echo vmtest-base >"$d/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tvmtest-base\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$d/etc/hosts"
  : >"$d/etc/fstab"
  chroot "$d" useradd --create-home --shell /bin/bash --comment "xenchan vmtest user" cloud
  chroot "$d" systemctl enable systemd-networkd.service >/dev/null 2>&1
  # No unit waits for "network online" here; without this, a domU with no NIC would sit
  # out systemd-networkd-wait-online's 2 minutes.
  chroot "$d" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1
  # Boot-time work a throw-away VM does not need (e2scrub_reap took 20+ s under TCG).
  chroot "$d" systemctl mask e2scrub_reap.service >/dev/null 2>&1
  # A small initrd (files/image/etc/initramfs-tools): boots and reboots unpack it.
  mount_chroot "$d"
  if ! bounded chroot "$d" update-initramfs -u -k all >"$VT_LOGS/initramfs.log" 2>&1; then
    umount_chroot
    show_tail "$VT_LOGS/initramfs.log" 20
    fail "update-initramfs failed"
  fi
  umount_chroot
  # Persistent journal: the Xen stage reads the domU's journal from its disk afterwards.
  mkdir -p "$d/var/log/journal"
  rm -rf "$d"/var/cache/apt/archives/*.deb "$d"/var/lib/apt/lists/*_* "$d/debootstrap"
}

build_guest_rootfs() {
  local out=$1 tmp=$VT_WORK/build-guest
  rm -rf "$tmp"
  log "debootstrap $SUITE from $MIRROR (measured 90-100 s)"
  bounded debootstrap --variant=minbase --include="$GUEST_PACKAGES" "$SUITE" "$tmp" "$MIRROR" \
    >"$VT_LOGS/debootstrap.log" 2>&1 || {
    show_tail "$VT_LOGS/debootstrap.log" 30
    fail "debootstrap failed"
  }
  customise_guest "$tmp"
  chroot "$tmp" dpkg-query -W >"$out/manifest-guest.txt.tmp" && mv -f "$out/manifest-guest.txt.tmp" "$out/manifest-guest.txt"
  cp -L "$tmp/vmlinuz" "$out/vmlinuz.tmp" && mv -f "$out/vmlinuz.tmp" "$out/vmlinuz"
  cp -L "$tmp/initrd.img" "$out/initrd.img.tmp" && mv -f "$out/initrd.img.tmp" "$out/initrd.img"
  pack "$tmp" "$out/guest-rootfs.tar.zst"
  rm -rf "$tmp"
}

build_dom0_rootfs() {
  local out=$1 tmp=$VT_WORK/build-dom0
  unpack "$out/guest-rootfs.tar.zst" "$tmp"
  mount_chroot "$tmp"
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod 0755 "$tmp/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
  echo "deb $MIRROR $SUITE main" >"$tmp/etc/apt/sources.list"
  log "apt-get install $DOM0_PACKAGES in the dom0 chroot (measured 11-14 s + download)"
  # shellcheck disable=SC2086
  if ! {
    bounded chroot "$tmp" apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive bounded chroot "$tmp" apt-get install -y -qq --no-install-recommends $DOM0_PACKAGES &&
      bounded chroot "$tmp" sh -c "cd /tmp && apt-get download -qq $HYPERVISOR_PACKAGE"
  } >"$VT_LOGS/dom0-apt.log" 2>&1; then
    umount_chroot
    show_tail "$VT_LOGS/dom0-apt.log" 30
    fail "installing the Xen packages in the dom0 chroot failed"
  fi
  umount_chroot
  local deb
  deb=$(ls "$tmp"/tmp/"$HYPERVISOR_PACKAGE"_*.deb)
  mkdir -p "$VT_WORK/hv"
  dpkg -x "$deb" "$VT_WORK/hv"
  zcat "$VT_WORK"/hv/boot/xen-4.17-amd64.gz >"$out/xen-4.17.tmp" && mv -f "$out/xen-4.17.tmp" "$out/xen-4.17"
  basename "$deb" >"$out/hypervisor.txt"
  rm -rf "$VT_WORK/hv" "$tmp"/tmp/*.deb "$tmp/usr/sbin/policy-rc.d"
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*_*
  : >"$tmp/etc/resolv.conf"
  # dom0's xenconsoled keeps each guest's console in /var/log/xen/console/guest-<name>.log
  # (Debian's init script passes XENCONSOLED_ARGS): the Xen stage shows its tail when a
  # domU does not come up.
  echo 'XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"' >>"$tmp/etc/default/xen"
  echo vmtest-dom0 >"$tmp/etc/hostname"
  sed -i 's/vmtest-base/vmtest-dom0/' "$tmp/etc/hosts"
  chroot "$tmp" dpkg-query -W >"$out/manifest-dom0.txt.tmp" && mv -f "$out/manifest-dom0.txt.tmp" "$out/manifest-dom0.txt"
  pack "$tmp" "$out/dom0-rootfs.tar.zst"
  rm -rf "$tmp"
}

