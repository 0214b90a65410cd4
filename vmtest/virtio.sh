# shellcheck shell=bash
# The virtio stage: the Debian guest with the agent (its systemd unit and udev rules) and
# a virtio-serial port named org.xenchan.agent.1 whose host side is a unix socket QEMU
# listens on; the broker runs on this host and connects to it (KVM-style deployment).

V_NAME=vmtest-virtio                 # the domain: the socket's file stem
V_HOSTNAME=xenchan-virtio            # pushed
V_MAC2=00:16:3e:5e:00:02             # the second NIC, configured by the agent
V_CIDR=192.0.2.10/24
V_OTHER=org.example.other.1          # a hot-plugged port that is not ours
V_UUID=5e5e0a1c-3b7d-4c2e-8f90-1a2b3c4d5e6f  # QEMU -uuid: the guest's DMI product_uuid

V_CLONE_NAME=vmtest-clone            # the clone of the sealed guest: a new domain
V_CLONE_HOSTNAME=xenchan-clone
V_CLONE_UUID=c10e0a1c-7e57-4b5a-9d1e-2f3a4b5c6d7e
V_CLONE_MAC2=00:16:3e:5e:00:03
V_CLONE_CIDR=192.0.2.11/24

# The VM the next virtio_qemu_start boots: name (= socket stem), UUID, second NIC's MAC,
# disk overlay and its backing file (set by virtio_boot, then by virtio_clone).
# The disk is a qcow2 overlay made afresh per boot attempt: the guest's writes stay in
# this run's work dir (guest.img is never changed), and a clone's overlay has the sealed
# guest's as its backing file.
virtio_qemu_start() {
  local serial=$1
  VM_LOG=$VT_LOGS/$V_BOOT_NAME-qemu.log
  rm -f "$V_QMP" "$V_BOOT_DISK"
  qemu-img create -q -f qcow2 -F "$V_BOOT_BASE_FMT" -b "$V_BOOT_BASE" "$V_BOOT_DISK" ||
    fail "qemu-img create of the overlay $V_BOOT_DISK failed"
  spawn "$VM_LOG" qemu-system-x86_64 -name "$V_BOOT_NAME" -uuid "$V_BOOT_UUID" -accel tcg -cpu max -smp 2 -m 1024 \
    -display none -monitor none -serial "file:$serial" \
    -kernel "$IMAGES/vmlinuz" -initrd "$IMAGES/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 net.ifnames=0" \
    -drive "file=$V_BOOT_DISK,if=virtio,format=qcow2" \
    -device virtio-serial-pci,id=vser0 \
    -chardev "socket,id=c0,path=$V_DIR/sockets/$V_BOOT_NAME.sock,server=on,wait=off" \
    -device "virtserialport,bus=vser0.0,chardev=c0,name=$CHANNEL,id=port0" \
    -qmp "unix:$V_QMP,server=on,wait=off" \
    -nic "user,model=virtio-net-pci,mac=52:54:00:12:34:56,hostfwd=tcp:127.0.0.1:$V_PORT-:22" \
    -nic "user,model=virtio-net-pci,mac=$V_BOOT_MAC2"
  VM_PID=$SPAWNED
  V_QEMU_PID=$VM_PID
}

virtio_diag() {
  log "diagnostics (virtio)"
  show_tail "$VT_LOGS/broker-virtio.log" 30
  if [ -n "${V_PORT:-}" ]; then
    VSSH_LIMIT=20 vssh "$V_PORT" "journalctl -b -u xenchan-agent.service -o short-monotonic --no-pager -n 40;
      systemctl show -p ActiveState,MainPID,NRestarts xenchan-agent.service | tr '\n' ' '; echo;
      ps -o pid,stat,time,pcpu,args -C xenchan-agent" 2>&1 | sed 's/^/    guest: /' >&2 || true
  fi
  [ -n "${SERIAL:-}" ] && show_tail "$SERIAL" 30
}

# Boots the guest with no broker connected: the agent starts, opens its port and reads
# end-of-file (no host) until the broker comes in the next stage.
virtio_boot() {
  DIAG=virtio_diag
  V_DIR=$VT_WORK/virtio
  mkdir -p "$V_DIR/sockets" "$V_DIR/state" "$V_DIR/hooks"
  V_QMP=$V_DIR/qmp.sock
  V_PORT=$(free_port)
  V_BOOT_NAME=$V_NAME V_BOOT_UUID=$V_UUID V_BOOT_MAC2=$V_MAC2
  V_BOOT_DISK=$V_DIR/guest.qcow2 V_BOOT_BASE=$VT_WORK/guest.img V_BOOT_BASE_FMT=raw
  boot_with_retry virtio 110 virtio_qemu_start "$V_PORT"

  # The agent is running and has the port open although nobody is on the host side.
  wait_for "udev made /dev/virtio-ports/$CHANNEL" 30 1 guest_has "$V_PORT" "/dev/virtio-ports/$CHANNEL" ||
    fail "no /dev/virtio-ports/$CHANNEL in the guest"
  V_DEV=$(guest_dev "$V_PORT" "/dev/virtio-ports/$CHANNEL")
  wait_for "the agent has $V_DEV open" 30 1 agent_holds "$V_PORT" "$V_DEV" ||
    fail "the agent does not hold its virtio port open"
  V_AGENT_PID=$(agent_prop "$V_PORT" MainPID)
  local cpu0 cpu1
  cpu0=$(agent_cpu_ms "$V_PORT")
  sleep 5
  cpu1=$(agent_cpu_ms "$V_PORT")
  [ "$(agent_prop "$V_PORT" MainPID)" = "$V_AGENT_PID" ] && [ "$(agent_prop "$V_PORT" NRestarts)" = 0 ] ||
    fail "the agent restarted while no host was connected (EOF on the port must not end it)"
  # A virtio port with no host reads EOF at once and reports a hang-up for as long as no
  # host is there: an agent that retries at once spins. Idle, it uses a few ms in 5 s.
  ((cpu1 - cpu0 < 500)) ||
    fail "the agent used $((cpu1 - cpu0)) ms of CPU in 5 s with no host connected: it spins on the port's end-of-file or hang-up"
  log "agent pid $V_AGENT_PID keeps running with no host connected (reads give EOF), $((cpu1 - cpu0)) ms CPU in 5 s"
  # Nobody can log in as cloud yet: the key only comes over the channel.
  if cloud_ssh "$V_PORT" true 2>/dev/null; then
    fail "cloud can log in before any key was pushed"
  fi
}

# cloud_ssh PORT CMD...: log in as cloud with the key the broker pushes.
cloud_ssh() {
  local port=$1
  shift
  timeout -k 2 "$(limit 30)" ssh "${SSH_OPTS[@]}" -i "$VT_WORK/keys/cloud" -o ControlPath=none \
    -p "$port" cloud@127.0.0.1 -- "$@"
}

virtio_expected_network() {
  # The network item: `applied` once the agent has a network applier; until then the
  # agent answers `unsupported` (XENCHAN_VMTEST_NETWORK=required turns that into a failure).
  local st
  st=$(json_get "$1" '.items[] | select(.item == "network:lan") | .status')
  case $st in
    applied) V_NET=applied ;;
    unsupported)
      [ "${XENCHAN_VMTEST_NETWORK:-auto}" != required ] || fail "network:lan is unsupported (XENCHAN_VMTEST_NETWORK=required)"
      log "NOTE: network:lan is 'unsupported' ($(json_get "$1" '.items[] | select(.item == "network:lan") | .reason')): the address check is skipped"
      V_NET=unsupported
      ;;
    *) fail "network:lan is '$st': $(json_get "$1" '.items[] | select(.item == "network:lan")')" ;;
  esac
}

# Starts the broker, pushes hostname + static address + cloud's key; checks them from
# the host with cloud's own login.
virtio_push() {
  cat >"$V_DIR/broker.toml" <<EOF
socket_dir = "$V_DIR/sockets"
control_socket = "$V_DIR/broker.sock"
state_dir = "$V_DIR/state"
hooks_dir = "$V_DIR/hooks"
channel = "$CHANNEL"
EOF
  API_AT=host
  API_SOCK=$V_DIR/broker.sock
  spawn "$VT_LOGS/broker-virtio.log" "$BIN/xenchan-broker" --config "$V_DIR/broker.toml"
  V_BROKER_PID=$SPAWNED
  wait_for "broker answers on its control socket" 30 1 api_healthy || fail "the broker did not come up"

  make_doc "$V_DIR/doc.json" "$V_HOSTNAME" "$V_MAC2" "$V_CIDR"
  # The UUID is recorded: identity fails closed, so the push only happens when the agent
  # reads the same one (on KVM from /sys/class/dmi/id/product_uuid).
  api_set "$V_NAME" "$V_DIR/doc.json" "$V_UUID"
  wait_for "the agent's result is in the broker's API" 90 1 domain_settled "$V_NAME" ||
    fail "no result for the pushed configuration: $(brief "$(api_domain "$V_NAME")")"
  local j
  j=$(api_domain "$V_NAME")
  virtio_expected_network "$j"
  expect_items "$j" "hostname=applied network:lan=$V_NET user:cloud=applied"
  [ "$(json_get "$j" .reported_uuid)" = "$V_UUID" ] ||
    fail "the agent reports UUID '$(json_get "$j" .reported_uuid)', want $V_UUID (QEMU -uuid, DMI product_uuid)"
  log "the agent reports the DMI UUID $V_UUID, the one recorded"
  V_GEN=$(json_get "$j" .applied_generation)

  # From the host, as cloud, with the pushed key.
  local out
  out=$(cloud_ssh "$V_PORT" 'hostname; cat /etc/hostname; ip -j addr show') ||
    fail "ssh cloud@ with the pushed key failed"
  [ "$(sed -n 1p <<<"$out")" = "$V_HOSTNAME" ] || fail "hostname is '$(sed -n 1p <<<"$out")', want $V_HOSTNAME"
  [ "$(sed -n 2p <<<"$out")" = "$V_HOSTNAME" ] || fail "/etc/hostname is '$(sed -n 2p <<<"$out")', want $V_HOSTNAME"
  log "ssh cloud@guest with the pushed key works; hostname and /etc/hostname are $V_HOSTNAME"
  if [ "$V_NET" = applied ]; then
    local addr
    addr=$(sed -n '3,$p' <<<"$out" | jq -r --arg mac "$V_MAC2" \
      '.[] | select(.address == $mac) | .addr_info[] | select(.family == "inet") | "\(.local)/\(.prefixlen)"')
    grep -qx "$V_CIDR" <<<"$addr" || fail "the NIC $V_MAC2 has '$addr', want $V_CIDR"
    log "the NIC $V_MAC2 has $V_CIDR"
  fi
}

# The same document again keeps its generation and pushes nothing; a forced push of the
# same generation is answered `unchanged` for every item.
virtio_repush() {
  local p r j
  p=$(api_metric xenchan_pushes_total)
  r=$(api_metric xenchan_results_total)
  api_set "$V_NAME" "$V_DIR/doc.json" "$V_UUID"
  sleep 3
  j=$(api_domain "$V_NAME")
  [ "$(json_get "$j" .desired_generation)" = "$V_GEN" ] || fail "the same document got a new generation: $(json_get "$j" .desired_generation)"
  [ "$(api_metric xenchan_pushes_total)" = "$p" ] || fail "the same document was pushed again"
  log "the same document keeps generation $V_GEN and is not pushed"

  api_cli domain push "$V_NAME" >/dev/null || fail "xenchan domain push failed"
  wait_for "the forced push's result" 60 1 metric_above xenchan_results_total "$r" ||
    fail "no result for the forced push"
  j=$(api_domain "$V_NAME")
  local net=unchanged
  [ "$V_NET" = applied ] || net=$V_NET
  expect_items "$j" "hostname=unchanged network:lan=$net user:cloud=unchanged"
  [ "$(json_get "$j" .applied_generation)" = "$V_GEN" ] || fail "applied generation moved: $(json_get "$j" .applied_generation)"
}

# metric_above NAME VALUE
metric_above() {
  (($(api_metric "$1") > $2))
}

# new_boot PORT OLD_BOOT_ID
new_boot() {
  ssh_up "$1" || return 1
  local b
  b=$(boot_id "$1")
  [ -n "$b" ] && [ "$b" != "$2" ]
}

# agent_session_count_at_least PORT N
agent_sessions_at_least() {
  (($(agent_count "$1" "$AGENT_SESSION_MSG") >= $2))
}

# A reboot of the guest (same QEMU, same socket, the broker stays connected): the new
# boot's agent gets a session and nothing is pushed or applied again.
virtio_reboot() {
  local old p r c
  old=$(boot_id "$V_PORT")
  p=$(api_metric xenchan_pushes_total)
  r=$(api_metric xenchan_results_total)
  vssh "$V_PORT" systemctl reboot || true
  vssh_close "$V_PORT"
  wait_for "the guest is back with a new boot id" 150 3 new_boot "$V_PORT" "$old" || fail "the guest did not come back"
  wait_for "the rebooted agent has a session" 60 1 agent_sessions_at_least "$V_PORT" 1 ||
    fail "the agent got no session after the reboot"
  wait_for "the broker shows the domain attached" 30 1 domain_attached "$V_NAME" ||
    fail "the broker does not show the domain attached: $(brief "$(api_domain "$V_NAME")")"
  sleep 3 # a push would follow the hello at once
  [ "$(api_metric xenchan_pushes_total)" = "$p" ] || fail "the broker pushed again after the reboot"
  [ "$(api_metric xenchan_results_total)" = "$r" ] || fail "a result came after the reboot (something was applied)"
  c=$(agent_count "$V_PORT" "$AGENT_ITEM_MSG")
  [ "$c" = 0 ] || fail "the agent applied $c item(s) after the reboot"
  [ "$(vssh "$V_PORT" hostname)" = "$V_HOSTNAME" ] || fail "the hostname did not survive the reboot"
  [ "$(agent_prop "$V_PORT" NRestarts)" = 0 ] || fail "the agent restarted"
  log "rebooted: re-attached, nothing pushed or applied, hostname kept"
}

# guest_has PORT PATH / guest_lacks PORT PATH
guest_has() { vssh "$1" test -e "$2"; }
guest_lacks() { vssh "$1" test ! -e "$2"; }

# Port hot-plug over QMP: a second port (not ours) is ignored; removing ours ends the
# agent's use of it; adding it back gives a new session without any push.
virtio_hotplug() {
  local p s0
  p=$(api_metric xenchan_pushes_total)
  s0=$(agent_count "$V_PORT" "$AGENT_SESSION_MSG")
  V_AGENT_PID=$(agent_prop "$V_PORT" MainPID)

  qmp "$V_QMP" \
    "{\"execute\":\"chardev-add\",\"arguments\":{\"id\":\"c1\",\"backend\":{\"type\":\"socket\",\"data\":{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"$V_DIR/other.sock\"}},\"server\":true,\"wait\":false}}}}" \
    "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"virtserialport\",\"bus\":\"vser0.0\",\"chardev\":\"c1\",\"name\":\"$V_OTHER\",\"id\":\"port1\"}}" >/dev/null
  wait_for "udev made /dev/virtio-ports/$V_OTHER" 20 1 guest_has "$V_PORT" "/dev/virtio-ports/$V_OTHER" ||
    fail "the hot-plugged port did not appear in the guest"
  sleep 2
  [ "$(agent_count "$V_PORT" "$AGENT_SESSION_MSG")" = "$s0" ] || fail "another port's arrival disturbed the agent's session"
  agent_holds "$V_PORT" "$V_DEV" || fail "the agent let go of its port when another was added"

  qmp "$V_QMP" '{"execute":"device_del","arguments":{"id":"port0"}}' >/dev/null
  wait_for "udev removed /dev/virtio-ports/$CHANNEL" 20 1 guest_lacks "$V_PORT" "/dev/virtio-ports/$CHANNEL" ||
    fail "the unplugged port's link stayed"
  wait_for "the agent closed the removed port" 20 1 agent_not_holding "$V_PORT" "$V_DEV" ||
    fail "the agent still holds the removed port"

  qmp "$V_QMP" "{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"virtserialport\",\"bus\":\"vser0.0\",\"chardev\":\"c0\",\"name\":\"$CHANNEL\",\"id\":\"port2\"}}" >/dev/null
  wait_for "udev made /dev/virtio-ports/$CHANNEL again" 20 1 guest_has "$V_PORT" "/dev/virtio-ports/$CHANNEL" ||
    fail "the re-added port did not appear"
  V_DEV=$(guest_dev "$V_PORT" "/dev/virtio-ports/$CHANNEL")
  wait_for "the agent has the re-added port $V_DEV open" 20 1 agent_holds "$V_PORT" "$V_DEV" ||
    fail "the agent did not open the re-added port"
  wait_for "the agent has a new session on the re-added port" 60 1 agent_sessions_at_least "$V_PORT" $((s0 + 1)) ||
    fail "the agent got no session on the re-added port"
  wait_for "the broker shows the domain attached" 30 1 domain_attached "$V_NAME" ||
    fail "the broker does not show the domain attached: $(brief "$(api_domain "$V_NAME")")"
  sleep 2
  [ "$(api_metric xenchan_pushes_total)" = "$p" ] || fail "the broker pushed again after the port came back"
  [ "$(agent_prop "$V_PORT" MainPID)" = "$V_AGENT_PID" ] && [ "$(agent_prop "$V_PORT" NRestarts)" = 0 ] ||
    fail "the agent restarted during hot-plug"

  qmp "$V_QMP" '{"execute":"device_del","arguments":{"id":"port1"}}' >/dev/null
  wait_for "udev removed /dev/virtio-ports/$V_OTHER" 20 1 guest_lacks "$V_PORT" "/dev/virtio-ports/$V_OTHER" ||
    fail "the other port's link stayed"
  log "hot-plug: other port ignored; ours removed and re-added: new session, nothing pushed"
}

agent_not_holding() { ! agent_holds "$1" "$2"; }

# known_hosts_keys FILE: the "type base64" of each line, sorted (host names dropped).
known_hosts_keys() {
  awk 'NF >= 3 { print $2, $3 }' "$1" | sort -u
}

qemu_gone() { ! kill -0 "$V_QEMU_PID" 2>/dev/null; }

# Template sealing (xen-pv-channel(7) step 2): `xenchan-agent seal` in the guest, then
# power off. Before sealing, the template's own host keys are kept from the broker
# (`xenchan domain known-hosts`): the clone must not have them.
virtio_seal() {
  local out
  api_cli domain known-hosts "$V_NAME" >"$V_DIR/template_known_hosts" ||
    fail "xenchan domain known-hosts $V_NAME failed: the template's agent reported no host key"
  V_TEMPLATE_MID=$(vssh "$V_PORT" cat /etc/machine-id)
  out=$(vssh "$V_PORT" xenchan-agent seal 2>&1) || fail "xenchan-agent seal failed: $out"
  sed 's/^/    seal: /' <<<"$out" >&2
  grep -q '^machine id: ' <<<"$out" || fail "seal said nothing about the machine id"
  grep -q '^ssh host keys: removed /etc/ssh/ssh_host_ed25519_key$' <<<"$out" ||
    fail "seal did not remove the ed25519 host key"
  grep -q '^agent applied state: removed ' <<<"$out" || fail "seal did not remove the agent's applied state"
  grep -q '^sealed: ' <<<"$out" || fail "seal did not say it sealed"
  [ -z "$(vssh "$V_PORT" 'ls /etc/ssh/ | grep "^ssh_host_" || true')" ] || fail "host keys are left in /etc/ssh"
  vssh "$V_PORT" 'test ! -s /etc/machine-id' || fail "/etc/machine-id is not empty after seal"
  vssh "$V_PORT" "sync; systemctl poweroff" || true
  vssh_close "$V_PORT"
  wait_for "the sealed guest powered off (QEMU exited)" 60 1 qemu_gone || fail "the sealed guest did not power off"
  wait "$V_QEMU_PID" 2>/dev/null || true
  log "sealed and powered off; template host keys: $(known_hosts_keys "$V_DIR/template_known_hosts" | awk '{print $1}' | tr '\n' ' ')"
}

# A clone of the sealed disk (a qcow2 overlay on it) with a new UUID and its own
# socket: a new domain for the broker, configured before it boots (the push arrives
# during the boot). Its agent makes new host keys at first boot and reports them; the
# host's ssh then checks them with `xenchan domain known-hosts` output and
# StrictHostKeyChecking=yes, and fails with the template's keys.
virtio_clone() {
  local doc=$V_DIR/clone-doc.json j kh wrong out
  make_doc "$doc" "$V_CLONE_HOSTNAME" "$V_CLONE_MAC2" "$V_CLONE_CIDR"
  api_set "$V_CLONE_NAME" "$doc" "$V_CLONE_UUID"
  V_BOOT_NAME=$V_CLONE_NAME V_BOOT_UUID=$V_CLONE_UUID V_BOOT_MAC2=$V_CLONE_MAC2
  V_BOOT_BASE=$V_BOOT_DISK V_BOOT_BASE_FMT=qcow2 V_BOOT_DISK=$V_DIR/clone.qcow2
  boot_with_retry clone 110 virtio_qemu_start "$V_PORT"
  wait_for "the clone's result is in the broker's API" 90 1 domain_settled "$V_CLONE_NAME" ||
    fail "no result from the clone: $(brief "$(api_domain "$V_CLONE_NAME")")"
  j=$(api_domain "$V_CLONE_NAME")
  # cloud's keys are the template's (seal leaves users alone): unchanged. The hostname
  # and the NIC are the clone's own: applied, although the template's files were there
  # (the sealed state made the agent start afresh).
  expect_items "$j" "hostname=applied network:lan=applied user:cloud=unchanged"
  [ "$(json_get "$j" .reported_uuid)" = "$V_CLONE_UUID" ] ||
    fail "the clone reports UUID '$(json_get "$j" .reported_uuid)', want $V_CLONE_UUID"
  local mid
  mid=$(vssh "$V_PORT" cat /etc/machine-id)
  [ -n "$mid" ] && [ "$mid" != "$V_TEMPLATE_MID" ] || fail "the clone's machine id is '$mid' (template: $V_TEMPLATE_MID)"

  kh=$V_DIR/known_hosts
  api_cli domain known-hosts "$V_CLONE_NAME" >"$kh" 2>"$V_DIR/known_hosts.err" ||
    fail "xenchan domain known-hosts $V_CLONE_NAME failed: $(cat "$V_DIR/known_hosts.err")"
  sed 's/^/    known_hosts: /' "$kh" | cut -c1-110 >&2
  grep -q "^[^ ]*\b$V_CLONE_HOSTNAME\b" "$kh" || fail "the known_hosts lines do not name $V_CLONE_HOSTNAME"
  [ -z "$(comm -12 <(known_hosts_keys "$kh") <(known_hosts_keys "$V_DIR/template_known_hosts"))" ] ||
    fail "the clone reports a host key of the template: keys were not regenerated"
  # The ssh port is a forward on 127.0.0.1: HostKeyAlias looks the key up under the
  # domain's hostname, a name the known_hosts lines carry.
  out=$(strict_ssh "$kh" cloud hostname 2>&1) ||
    fail "ssh with StrictHostKeyChecking=yes and the known-hosts output failed: $out"
  [ "$out" = "$V_CLONE_HOSTNAME" ] || fail "the clone's hostname is '$out', want $V_CLONE_HOSTNAME"
  log "ssh cloud@clone with StrictHostKeyChecking=yes and \`xenchan domain known-hosts\` works (hostname $out)"
  # The same check with the template's keys under the same name must fail.
  wrong=$V_DIR/wrong_known_hosts
  awk -v h="$V_CLONE_HOSTNAME" 'NF >= 3 { print h, $2, $3 }' "$V_DIR/template_known_hosts" >"$wrong"
  if out=$(strict_ssh "$wrong" cloud true 2>&1); then
    fail "ssh with the template's host keys as known_hosts succeeded: the check cannot fail"
  fi
  grep -q "Host key verification failed" <<<"$out" || fail "ssh with the wrong known_hosts failed otherwise: $out"
  log "with the template's keys as known_hosts ssh refuses: $(grep -m1 -E 'Host key verification failed|IDENTIFICATION HAS CHANGED' <<<"$out")"
}

# strict_ssh KNOWN_HOSTS USER CMD...: ssh into the VM checking its host key against
# KNOWN_HOSTS (no trust on first use), with cloud's pushed key.
strict_ssh() {
  local kh=$1 user=$2
  shift 2
  timeout -k 2 "$(limit 30)" ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$kh" \
    -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias="$V_CLONE_HOSTNAME" -o BatchMode=yes \
    -o IdentitiesOnly=yes -o ConnectTimeout=10 -o ControlPath=none -i "$VT_WORK/keys/cloud" \
    -p "$V_PORT" "$user@127.0.0.1" -- "$@"
}

# Stops the broker (it must say bye and exit 0) and the VM.
virtio_stop() {
  local rc=0
  kill -TERM "$V_BROKER_PID"
  timeout 20 tail --pid="$V_BROKER_PID" -f /dev/null || true
  wait "$V_BROKER_PID" || rc=$?
  ((rc == 0)) || fail "the broker exited with $rc on SIGTERM"
  log "broker stopped cleanly (exit 0)"
  vssh_close "$V_PORT"
  stop_pid "$V_QEMU_PID" 5
  DIAG=""
}
