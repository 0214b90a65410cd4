#!/usr/bin/env bash
# Fetches the network managers' own parsers for the netconf tests WITHOUT installing the
# managers (installing NetworkManager or netplan on a developer's machine could take over
# its network): `apt-get download` + `dpkg -x` into a cache folder, run from there with
# LD_LIBRARY_PATH. Tests that need them skip with the reason when the folder is missing.
#
#   netplan.io + libnetplan0     /usr/libexec/netplan/generate (netplan's C parser)
#   network-manager + libnm0     nmcli --offline (NetworkManager's keyfile reader)
#   ifupdown                     ifup --no-act, and ifup itself in a network namespace
#
# systemd-networkd is the machine's own (package systemd): the tests run it in a network
# and mount namespace.
#
# Folder: $XENCHAN_NET_TOOLS, default <repo>/target/tools/net. Idempotent: does nothing
# when the folder holds the same package versions already.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${XENCHAN_NET_TOOLS:-$repo/target/tools/net}
packages=(netplan.io libnetplan0 network-manager libnm0 ifupdown)

command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
  echo "net-tools: apt-get and dpkg are needed (Debian/Ubuntu); the parser tests will skip" >&2
  exit 0
}

versions() { apt-cache policy "${packages[@]}" 2>/dev/null | awk '/^[^ ]/{p=$1} /Candidate:/{print p, $2}'; }
want=$(versions)
if ! grep -q "(none)" <<<"$want" && [ -n "$want" ] && [ -f "$dest/VERSIONS" ] && [ "$(cat "$dest/VERSIONS")" = "$want" ]; then
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch() { (cd "$tmp" && apt-get download -qq "${packages[@]}" >/dev/null 2>&1); }
if ! fetch; then
  # The package lists may be missing or stale (fresh machine): refresh them once.
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq >/dev/null; else sudo apt-get update -qq >/dev/null; fi
  want=$(versions)
  fetch || { echo "net-tools: apt-get download ${packages[*]} failed" >&2; exit 69; }
fi
mkdir -p "$tmp/root"
for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done

# Libraries the parsers load from the system (glib, yaml, readline...): say which are
# missing rather than letting every test fail on a loader error.
lib="$tmp/root/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
missing=$(LD_LIBRARY_PATH=$lib ldd "$tmp/root/usr/bin/nmcli" "$tmp/root/usr/libexec/netplan/generate" 2>/dev/null | awk '/not found/{print $1}' | sort -u)
if [ -n "$missing" ]; then
  echo "net-tools: system libraries missing for the parsers: $missing (scripts/setup.sh installs them)" >&2
  exit 69
fi

rm -rf "$dest.new"
mkdir -p "$(dirname "$dest")"
mv "$tmp/root" "$dest.new"
printf '%s\n' "$want" >"$dest.new/VERSIONS"
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "net-tools: network managers' parsers in $dest"
