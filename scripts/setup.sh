#!/usr/bin/env bash
# Installs the system packages xenchan needs to build and test on Debian/Ubuntu, and
# nothing when they are all there already. Runs apt through sudo when not root.
set -euo pipefail

packages=(
  pkg-config libudev-dev   # the udev crate (agent's console enumeration)
  openssh-client           # ssh-keygen: test keys and the demo's key
  xenstore-utils           # xenstore-read/-write: interop tests of our xenstore client
  socat                    # debugging channels by hand (docs), used by some tests
  iproute2                 # ip: network namespace tests
  iputils-ping             # ping across veth pairs in the live-apply tests
  procps                   # ps/pkill used by test clean-up
  libglib2.0-0 libyaml-0-2 libreadline8  # libraries of the managers' parsers (net-tools.sh)
  sudo                     # visudo -c: the agent checks sudo rules with it (tests/items.rs)
  protobuf-compiler        # protoc: etcd-client's build script compiles etcd's .proto files (every build)
  libprotobuf-dev          # google/protobuf/*.proto those files import (only a Recommends of protoc)
  etcd-server              # etcd: the cluster crate's tests start a real one
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 69; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The network managers' own parsers for the netconf tests, unpacked, not installed.
# Without them those tests skip (saying so); nothing else depends on them.
"$(dirname "$0")/net-tools.sh" || echo "setup: scripts/net-tools.sh failed: the netconf parser tests will skip" >&2

command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (https://rustup.rs)" >&2; exit 69; }
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
  # The packaged agent is linked statically against musl (cargo xtask deb, make agent-static).
  musl="$(uname -m)-unknown-linux-musl"
  rustup target list --installed 2>/dev/null | grep -qx "$musl" || rustup target add "$musl" ||
    echo "setup: rustup target add $musl failed: the Debian package will carry the dynamically linked agent (cargo xtask deb says so)" >&2
fi
