# shellcheck shell=bash
# What the virtio and Xen stages share: the configuration document, the broker API (on
# this host or inside dom0), the agent's view from inside a guest, booting with a retry.

# Log lines of the agent the checks count (guest-agent/src/session.rs). One per session
# the agent started, one per item it applied.
AGENT_SESSION_MSG="session started"
AGENT_ITEM_MSG="item done"

# make_doc FILE HOSTNAME [MAC CIDR]: the configuration document pushed to a guest:
# the hostname, the cloud user's login key plus 40 more keys, and (with MAC) a static
# address on the interface with that MAC. The extra keys make the document longer than
# 4 KiB: a tty left in canonical mode (an agent that skips cfmakeraw) truncates lines at
# 4095 bytes, so such an agent can never receive it whole over a Xen console.
make_doc() {
  local file=$1 host=$2 mac=${3:-} cidr=${4:-} pads
  if [ ! -f "$VT_WORK/keys/pad.json" ]; then
    mkdir -p "$VT_WORK/keys/pad"
    local i
    for i in $(seq -w 1 40); do
      ssh-keygen -q -t ed25519 -N '' -C "operator-$i@vmtest.xenchan.test" -f "$VT_WORK/keys/pad/k$i"
    done
    cat "$VT_WORK"/keys/pad/*.pub | jq -R . | jq -s . >"$VT_WORK/keys/pad.json"
  fi
  pads=$(cat "$VT_WORK/keys/pad.json")
  jq -n --arg h "$host" --arg key "$(cat "$VT_WORK/keys/cloud.pub")" --argjson pads "$pads" \
    --arg mac "$mac" --arg cidr "$cidr" '
    {hostname: $h, users: [{name: "cloud", ssh_authorized_keys: ([$key] + $pads)}]}
    + (if $mac == "" then {} else
        {network: {version: 2, ethernets: {lan: {match: {macaddress: $mac}, addresses: [$cidr]}}}}
      end)' >"$file"
  local size
  size=$(wc -c <"$file")
  ((size > 4096)) || fail "the document is only $size bytes; it must exceed a tty line (4096)"
}

# --- the broker's API -------------------------------------------------------------------
# API_AT is "host" (the virtio stage: broker on this machine, control socket API_SOCK)
# or a dom0 ssh port (the Xen stage: broker in dom0, default socket).

api_cli() {
  if [ "$API_AT" = host ]; then
    timeout -k 2 "$(limit 40)" "$BIN/xenchan" --socket "$API_SOCK" --timeout 20 "$@"
  else
    vssh "$API_AT" xenchan --timeout 20 "$@"
  fi
}

# api_domain NAME: the DomainView JSON (empty on error).
api_domain() {
  api_cli --json domain get "$1" 2>/dev/null || true
}

# api_metric NAME: a counter from GET /metrics (0 when absent).
api_metric() {
  local text
  if [ "$API_AT" = host ]; then
    text=$(timeout 20 curl -sS --unix-socket "$API_SOCK" http://localhost/metrics 2>/dev/null || true)
  else
    text=$(vssh "$API_AT" curl -sS --unix-socket /run/xenchan/broker.sock http://localhost/metrics 2>/dev/null || true)
  fi
  awk -v m="$1" '$1 == m { v = $2 } END { print (v == "" ? 0 : v) }' <<<"$text"
}

api_healthy() {
  [ "$(json_get "$(api_cli --json status 2>/dev/null || true)" .status)" = ok ]
}

# api_set NAME DOCFILE [UUID]
api_set() {
  local name=$1 doc=$2 uuid=${3:-} out
  if [ "$API_AT" = host ]; then
    out=$(api_cli domain set "$name" --file "$doc" ${uuid:+--uuid "$uuid"} 2>&1) || fail "xenchan domain set refused: $out"
  else
    out=$(vssh "$API_AT" xenchan --timeout 20 domain set "$name" --file - ${uuid:+--uuid "$uuid"} <"$doc" 2>&1) ||
      fail "xenchan domain set refused: $out"
  fi
  log "xenchan domain set $name: $(head -n1 <<<"$out")"
}

# brief JSON: the parts of a DomainView that explain a failure, on one line.
brief() {
  jq -c '{state, connected, last_error, desired_generation, applied_generation, items, facts: (.facts | if . then {hostname, kernel} else null end)}' <<<"$1" 2>/dev/null || echo "${1:-(no answer from the broker)}"
}

# items JSON: "item=status" per item, sorted, space-separated.
items() {
  json_get "$1" '[.items[] | "\(.item)=\(.status)"] | sort | join(" ")'
}

# domain_settled NAME: the agent's result for the desired generation is in.
domain_settled() {
  local j
  j=$(api_domain "$1")
  [ -n "$j" ] || return 1
  [ "$(json_get "$j" '.desired_generation != null and .applied_generation == .desired_generation and .applied_digest == .desired_digest and (.items | length) > 0')" = true ]
}

# domain_attached NAME: the broker has a session with the agent and nothing is pending.
domain_attached() {
  local j
  j=$(api_domain "$1")
  [ "$(json_get "$j" '.connected == true and .state == "configured"')" = true ]
}

# expect_items JSON EXPECTED: the per-item results are exactly EXPECTED (see items()).
expect_items() {
  local got
  got=$(items "$1")
  [ "$got" = "$2" ] || fail "item results: got '$got', want '$2' (domain: $(brief "$1"))"
  log "items: $got"
}

# --- the agent inside a guest (over ssh) ----------------------------------------------

# agent_prop PORT PROPERTY: a systemd property of xenchan-agent.service.
agent_prop() {
  vssh "$1" systemctl show -p "$2" --value xenchan-agent.service
}

# agent_count PORT PATTERN: lines of the agent's journal in the current boot matching
# PATTERN.
agent_count() {
  vssh "$1" "journalctl -b -u xenchan-agent.service -o cat --no-pager | grep -c -F -- '$2' || true"
}

# agent_holds PORT DEVICE: the agent's process has DEVICE open (also once it was
# unplugged: the link then reads "DEVICE (deleted)").
agent_holds() {
  vssh "$1" "pid=\$(systemctl show -p MainPID --value xenchan-agent.service); [ \"\$pid\" != 0 ] && ls -l /proc/\$pid/fd | grep -qE ' -> $2( \(deleted\))?\$'"
}

# agent_cpu_ms PORT: CPU time (user + system) the agent's process has used, in ms.
agent_cpu_ms() {
  vssh "$1" "pid=\$(systemctl show -p MainPID --value xenchan-agent.service);
    awk -v hz=\$(getconf CLK_TCK) '{ print int((\$14 + \$15) * 1000 / hz) }' /proc/\$pid/stat"
}

# guest_dev PORT LINK: the device a link resolves to (empty if none).
guest_dev() {
  vssh "$1" "readlink -e '$2' || true"
}

# --- booting ---------------------------------------------------------------------------

# boot_with_retry NAME PER_ATTEMPT START_FN PORT: START_FN SERIALLOG starts the VM (and
# sets VM_PID); ready when root can log in on PORT. A boot that misses its deadline is
# reported with the tail of its serial log and retried once.
boot_with_retry() {
  local name=$1 per=$2 start=$3 port=$4 attempt
  for attempt in 1 2; do
    SERIAL=$VT_LOGS/$name-serial-$attempt.log
    "$start" "$SERIAL"
    if wait_for "$name boots to ssh (attempt $attempt)" "$per" 3 vm_ready "$port"; then
      return 0
    fi
    log "$name did not boot within ${per}s (attempt $attempt)"
    show_tail "$SERIAL" 40
    stop_pid "$VM_PID" 5
  done
  fail "$name did not boot (two attempts)"
}

# vm_ready PORT: sshd answers; a QEMU that exited is a hard failure (bad command line).
vm_ready() {
  if ! kill -0 "$VM_PID" 2>/dev/null; then
    show_tail "$VM_LOG" 20
    fail "QEMU exited"
  fi
  ssh_up "$1"
}

# boot_id PORT
boot_id() {
  vssh "$1" cat /proc/sys/kernel/random/boot_id 2>/dev/null || true
}
