# shellcheck shell=bash
# The Xen stage: Xen 4.17 with a Debian dom0 under QEMU (TCG, -cpu qemu64), the broker in
# dom0, and a PV domU (the virtio guest's disk, as dom0's /dev/vdb) whose agent gets its
# channel from the real udev rule and xen-console-setup reading the real xenstore.
# Commands run in dom0 over ssh (harness key, hostfwd).

X_NAME=vmtest-domu                             # xl name = socket stem = broker domain
X_UUID=6a1c3a2e-8d4b-4f0e-9a57-0c5e2b7d9f10    # as in files/dom0/etc/xen/vmtest-domu.cfg
X_HOSTNAME=xenchan-domu
X_SOCK=/run/xenchan/sockets/$X_NAME.sock
X_MAC=00:16:3e:5e:00:0a                        # the vif in files/dom0/etc/xen/vmtest-domu.cfg
X_ADDR=192.0.2.10                              # pushed for it (dom0 is 192.0.2.1 on xenbr0)
X_CIDR=$X_ADDR/24

xen_qemu_start() {
  local serial=$1
  VM_LOG=$VT_LOGS/xen-qemu.log
  case "$IMAGES" in *,* | *' '*) fail "the cache path must not contain commas or spaces (QEMU's -initrd list): $IMAGES" ;; esac
  # -cpu qemu64: with -cpu max, dom0's kernel crashes (SMEP/SMAP under Xen PV).
  spawn "$VM_LOG" qemu-system-x86_64 -name vmtest-xen -accel tcg -cpu qemu64 -smp 2 -m 3072 \
    -display none -monitor none -serial "file:$serial" \
    -kernel "$IMAGES/xen-4.17" \
    -append "console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2 noreboot" \
    -initrd "$IMAGES/vmlinuz root=/dev/vda rw console=hvc0 earlyprintk=xen net.ifnames=0,$IMAGES/initrd.img" \
    -drive "file=$VT_WORK/dom0.img,if=virtio,format=raw,snapshot=on" \
    -drive "file=$VT_WORK/guest.img,if=virtio,format=raw,snapshot=on" \
    -nic "user,model=virtio-net-pci,mac=52:54:00:12:34:56,hostfwd=tcp:127.0.0.1:$X_PORT-:22"
  VM_PID=$SPAWNED
  X_QEMU_PID=$VM_PID
}

# d0 CMD...: run CMD in dom0.
d0() { vssh "$X_PORT" "$@"; }

xen_diag() {
  log "diagnostics (xen)"
  if [ -n "${X_PORT:-}" ] && ssh_up "$X_PORT"; then
    VSSH_LIMIT=30 d0 "echo '# xl list'; xl list; echo '# broker'; journalctl -u xenchan-broker -o short-monotonic --no-pager -n 30;
      echo '# domU console'; tail -n 40 /var/log/xen/console/guest-$X_NAME.log 2>/dev/null;
      echo '# qemu-dm'; tail -n 15 /var/log/xen/qemu-dm-$X_NAME.log 2>/dev/null;
      echo '# xl'; tail -n 15 /var/log/xen/xl-$X_NAME.log 2>/dev/null" 2>&1 | sed 's/^/    dom0: /' >&2 || true
  fi
  [ -n "${SERIAL:-}" ] && show_tail "$SERIAL" 30
}

# domu CMD...: run CMD as root in the domU, at its pushed address, through dom0 (ssh -W
# over dom0's shared connection; the domU's root has the harness key too). Bounded like
# vssh. A fresh connection each time: a kept one would have to outlive a migration.
domu() {
  local jump="ssh ${SSH_OPTS[*]} -i $VT_WORK/keys/harness -o ControlPath=$VT_WORK/ssh-mux-$X_PORT -p $X_PORT -W %h:%p root@127.0.0.1"
  timeout -k 5 "$(limit "${VSSH_LIMIT:-60}")" ssh "${SSH_OPTS[@]}" -i "$VT_WORK/keys/harness" \
    -o ControlPath=none -o ProxyCommand="$jump" "root@$X_ADDR" -- "$@"
}

# domu_agent: the domU's agent as the domU sees it, on one line:
# "boot=<boot id> pid=<MainPID> restarts=<NRestarts> sessions=<N> items=<M>", N and M
# counted in this boot's journal of the agent's unit.
domu_agent() {
  domu "u=xenchan-agent.service; log=\$(journalctl -b -u \$u -o cat --no-pager)
    echo \"boot=\$(cat /proc/sys/kernel/random/boot_id) pid=\$(systemctl show -p MainPID --value \$u)\" \\
      \"restarts=\$(systemctl show -p NRestarts --value \$u)\" \\
      \"sessions=\$(grep -c -F '$AGENT_SESSION_MSG' <<<\"\$log\") items=\$(grep -c -F '$AGENT_ITEM_MSG' <<<\"\$log\")\""
}

# field NAME LINE: the value of NAME=... in a line of domu_agent.
field() { grep -o "\b$1=[^ ]*" <<<"$2" | cut -d= -f2-; }

xl_works() { d0 xl list >/dev/null 2>&1; }

# Boots Xen + dom0, waits for the toolstack and for the broker (started by systemd).
xen_boot() {
  DIAG=xen_diag
  X_PORT=$(free_port)
  boot_with_retry xen 160 xen_qemu_start "$X_PORT"
  wait_for "xl answers in dom0 (xenstored, xen.service)" 60 2 xl_works || fail "the Xen toolstack did not start in dom0"
  d0 "xl info | grep -E '^(xen_version|total_memory|free_memory)'" | sed 's/^/    /' >&2
  # The broker is enabled in dom0 (broker/systemd/xenchan-broker.service).
  API_AT=$X_PORT
  wait_for "the broker in dom0 answers" 30 1 api_healthy || fail "the broker in dom0 did not come up"
}

# domid NAME
xen_domid() { d0 xl domid "$X_NAME" 2>/dev/null || true; }

# `xl create` with the channel line from `xenchan xl-channel --xl-4.17-workaround`
# (placeholder first): the agent in the domU gets its channel from
# udev + xen-console-setup, and the document pushed by the broker is applied.
xen_create() {
  # The configuration (with a network item for the vif) is in the broker before the
  # domain exists: the push arrives while the domU boots, through the shipped units
  # (the agent runs before network-pre.target, no network manager yet).
  make_doc "$VT_WORK/domu-doc.json" "$X_HOSTNAME" "$X_MAC" "$X_CIDR"
  api_set "$X_NAME" "$VT_WORK/domu-doc.json" "$X_UUID"
  d0 "ip -br addr show xenbr0" | sed 's/^/    dom0: /' >&2 || fail "dom0 has no xenbr0 (files/dom0/etc/systemd/network)"
  local out
  out=$(d0 "xenchan xl-channel $X_NAME --xl-4.17-workaround | tee -a /etc/xen/vmtest-domu.cfg") ||
    fail "xenchan xl-channel failed: $out"
  log "xl config: $out"
  out=$(VSSH_LIMIT=90 d0 xl create /etc/xen/vmtest-domu.cfg 2>&1) || fail "xl create failed: $out"
  X_DOMID=$(xen_domid)
  log "xl create: domid $X_DOMID"
  # Which console carries our channel (dom0's view of the domU's frontend nodes).
  local consoles
  consoles=$(d0 "for n in \$(xenstore-list /local/domain/$X_DOMID/device/console 2>/dev/null); do
      echo \"console/\$n: \$(xenstore-read /local/domain/$X_DOMID/device/console/\$n/name 2>/dev/null || echo '(no name)')\"; done")
  log "domU consoles: $(tr '\n' ' ' <<<"$consoles")"
  grep -q ": $CHANNEL\$" <<<"$consoles" || fail "xl did not give the domU the channel $CHANNEL (placeholder work-around for xl 4.17?)"

  wait_for "the domU agent's result is in the broker's API" 270 3 domain_settled "$X_NAME" ||
    fail "no result from the domU: $(brief "$(api_domain "$X_NAME")")"
  local j
  j=$(api_domain "$X_NAME")
  expect_items "$j" "hostname=applied network:lan=applied user:cloud=applied"
  [ "$(json_get "$j" .state)" = configured ] || fail "state is $(json_get "$j" .state)"
  [ "$(json_get "$j" .uuid)" = "$X_UUID" ] || fail "uuid is $(json_get "$j" .uuid)"
  X_GEN=$(json_get "$j" .applied_generation)
  X_ITEMS=$(items "$j")
  log "domU configured (generation $X_GEN; guest facts: $(json_get "$j" '.facts | "\(.os), kernel \(.kernel), hostname \(.hostname)"'))"
  wait_for "dom0 reaches the pushed address $X_ADDR (sshd's banner over xenbr0)" 60 2 domu_reachable ||
    fail "dom0 cannot reach $X_ADDR: $(d0 "ip neigh show dev xenbr0; ip -br link" 2>&1 | tr '\n' ' ')"
  # The facts were gathered at the session's start, maybe before the vif existed.
  j=$(api_domain "$X_NAME")
  log "the domU's vif in its facts: $(json_get "$j" '.facts.interfaces[]? | select(.mac == "'"$X_MAC"'") | "\(.name) \(.addresses | join(","))"' | tr '\n' ' ')"
  local neigh
  neigh=$(d0 "ip neigh show $X_ADDR dev xenbr0")
  grep -q "lladdr $X_MAC" <<<"$neigh" || fail "$X_ADDR is answered by '$neigh', not by the vif $X_MAC"
  log "dom0 reaches $X_CIDR on the vif $X_MAC: $neigh"
}

# domu_reachable: dom0 connects to the domU's sshd at the pushed address and reads its
# banner (dom0 has no ping; bash's /dev/tcp is enough to prove the address is up).
domu_reachable() {
  VSSH_LIMIT=15 d0 "timeout 5 bash -c 'exec 3<>/dev/tcp/$X_ADDR/22; head -c 7 <&3'" 2>/dev/null | grep -q '^SSH-2.0'
}

# domain_detached NAME: the broker no longer has a session with the domain.
domain_detached() {
  [ "$(json_get "$(api_domain "$1")" .connected)" = false ]
}

# `xl reboot`: the broker loses the socket (EOF, socket gone), reconnects when the new
# QEMU listens, and the rebooted agent's hello says the generation is applied: nothing is
# pushed. The new boot reports the pushed hostname as its own.
xen_reboot() {
  local p r c j
  p=$(api_metric xenchan_pushes_total)
  r=$(api_metric xenchan_results_total)
  c=$(api_metric xenchan_connections_total)
  d0 xl reboot "$X_NAME" >/dev/null 2>&1 || fail "xl reboot failed"
  wait_for "the broker sees the session end" 90 2 domain_detached "$X_NAME" || fail "the broker did not notice the reboot"
  wait_for "the broker reconnected" 240 3 metric_above xenchan_connections_total "$c" || fail "the broker did not reconnect"
  wait_for "the rebooted domU's agent is attached" 240 3 domain_attached "$X_NAME" ||
    fail "the domain is not attached after the reboot: $(brief "$(api_domain "$X_NAME")")"
  local domid
  domid=$(xen_domid)
  [ -n "$domid" ] && [ "$domid" != "$X_DOMID" ] || fail "domid did not change ($X_DOMID -> $domid)"
  sleep 5 # a push would follow the hello at once
  [ "$(api_metric xenchan_pushes_total)" = "$p" ] || fail "the broker pushed again after the reboot"
  [ "$(api_metric xenchan_results_total)" = "$r" ] || fail "a result came after the reboot (something was applied)"
  j=$(api_domain "$X_NAME")
  [ "$(json_get "$j" .applied_generation)" = "$X_GEN" ] || fail "applied generation is $(json_get "$j" .applied_generation)"
  [ "$(json_get "$j" .facts.hostname)" = "$X_HOSTNAME" ] ||
    fail "the rebooted domU reports hostname '$(json_get "$j" .facts.hostname)', want $X_HOSTNAME"
  # The address now comes from the file the agent wrote for systemd-networkd.
  wait_for "dom0 reaches $X_ADDR after the reboot" 60 2 domu_reachable || fail "$X_ADDR is not up after the reboot"
  log "rebooted (domid $X_DOMID -> $domid): re-attached, nothing pushed, hostname $X_HOSTNAME and $X_CIDR kept"
  X_DOMID=$domid
}

# xl_state: "name domid" of every domain but dom0, one line (for the logs).
xl_state() { d0 "xl list | awk 'NR > 2 { printf \"%s(%s) \", \$1, \$2 }'" 2>/dev/null || true; }

# `xl migrate` of the running domU to this same dom0 (issue 19's hand-off, on one host):
# with an empty `-s`, xl runs the "host" argument as the receiver's command instead of
# `ssh host xl migrate-receive`. The receiving side is created as `<name>--incoming`
# (with a new QEMU that listens on the channel socket path of the `-C` config, below),
# the memory is copied while the domain runs, the source is destroyed and the new one
# renamed. The agent's process simply continues (no new boot): the broker must re-attach
# under the same UUID with nothing pushed and nothing applied.
xen_migrate() {
  local p r c j out t0 domid before
  p=$(api_metric xenchan_pushes_total)
  r=$(api_metric xenchan_results_total)
  c=$(api_metric xenchan_connections_total)
  # The agent as the domU sees it: after a live migration it must be the same boot and
  # the same process, with one more session and no item more in its journal.
  before=$(domu_agent) || fail "cannot look into the domU at $X_ADDR through dom0: $before"
  log "domU agent before: $before"
  d0 "xl info | grep -E '^free_memory'" | sed 's/^/    dom0: /' >&2
  # The destination's QEMU gets its own socket path (`-C`: the same config with another
  # channel path). With the same path, the destination's QEMU binds it first and the
  # source's QEMU, ending, unlinks it: the new QEMU listens on a name that no longer
  # exists and nobody can connect (measured: /run/xenchan/sockets/ empty, the broker
  # waiting). Between two hosts the paths do not collide. The broker finds the new path
  # in xenstore (discovery by UUID).
  X_MIG=$((${X_MIG:-0} + 1))
  local cfg=/etc/xen/$X_NAME-m$X_MIG.cfg
  local sock=/run/xenchan/sockets/$X_NAME.m$X_MIG.sock
  d0 "sed 's|path=/run/xenchan/sockets/$X_NAME.sock|path=$sock|' /etc/xen/$X_NAME.cfg >$cfg; grep -q 'path=$sock' $cfg" ||
    fail "cannot write $cfg with another channel path"
  t0=$(now)
  out=$(VSSH_LIMIT=$(scaled 360) d0 "xl migrate -s '' -C $cfg $X_NAME 'xl migrate-receive' </dev/null 2>&1") ||
    fail "xl migrate failed ($(($(now) - t0)) s): $(tail -n 15 <<<"$out" | tr '\n' '|')"
  log "xl migrate: done in $(($(now) - t0)) s; $(grep -iE 'migration|transfer|success' <<<"$out" | tail -n 4 | tr '\n' '|')"
  log "domains: $(xl_state)"
  domid=$(xen_domid)
  [ -n "$domid" ] && [ "$domid" != "$X_DOMID" ] || fail "domid after migrate is '$domid' (was $X_DOMID)"
  d0 "xl list" | grep -q -- '--incoming' && fail "a domain is still named $X_NAME--incoming: $(xl_state)"
  wait_for "the broker reconnected to the migrated domU" 120 2 metric_above xenchan_connections_total "$c" ||
    fail "the broker did not connect to the migrated domU: $(brief "$(api_domain "$X_NAME")")"
  wait_for "the migrated domU's agent is attached" 120 2 domain_attached "$X_NAME" ||
    fail "the domain is not attached after the migration: $(brief "$(api_domain "$X_NAME")")"
  sleep 5 # a push would follow the hello at once
  [ "$(api_metric xenchan_pushes_total)" = "$p" ] || fail "the broker pushed again after the migration"
  [ "$(api_metric xenchan_results_total)" = "$r" ] || fail "a result came after the migration (something was applied)"
  j=$(api_domain "$X_NAME")
  [ "$(json_get "$j" .applied_generation)" = "$X_GEN" ] || fail "applied generation is $(json_get "$j" .applied_generation)"
  [ "$(json_get "$j" .uuid)" = "$X_UUID" ] || fail "uuid is $(json_get "$j" .uuid)"
  [ "$(json_get "$j" .reported_uuid)" = "$X_UUID" ] || fail "the agent reports uuid $(json_get "$j" .reported_uuid)"
  [ "$(json_get "$j" .last_error)" = null ] || fail "the broker recorded an error: $(json_get "$j" .last_error)"
  # The broker knows one domain: the transient `--incoming` name left nothing behind.
  local names
  names=$(json_get "$(api_cli --json domain ls 2>/dev/null || true)" '[.[]?.name // empty] | join(" ")')
  [ "$names" = "$X_NAME" ] || fail "the broker's domains after the migration: '$names', want only $X_NAME"
  wait_for "dom0 reaches $X_ADDR after the migration" 60 2 domu_reachable || fail "$X_ADDR is not up after the migration"
  # The broker's new connection is a new session for the agent (its hello answered: the
  # domain is attached), in the same process of the same boot; nothing applied.
  wait_for "the domU's agent logged the new session" 60 3 domu_session_after "$before" ||
    fail "the domU's agent did not log a new session: before '$before', now '$DOMU_NOW'"
  [ "$(field boot "$DOMU_NOW")" = "$(field boot "$before")" ] || fail "the domU booted again: before '$before', now '$DOMU_NOW'"
  [ "$(field pid "$DOMU_NOW")" = "$(field pid "$before")" ] || fail "the agent is another process: before '$before', now '$DOMU_NOW'"
  [ "$(field restarts "$DOMU_NOW")" = 0 ] || fail "the agent's unit restarted: '$DOMU_NOW'"
  [ "$(field items "$DOMU_NOW")" = "$(field items "$before")" ] || fail "the agent applied items after the migration: before '$before', now '$DOMU_NOW'"
  log "domU agent after: $DOMU_NOW"
  log "migrated (domid $X_DOMID -> $domid): re-attached under $X_UUID, same boot and agent process, nothing pushed or applied, $X_CIDR up"
  X_DOMID=$domid
  X_SOCK=$sock # what xen-destroy watches
}

# domu_session_after BEFORE: the domU's agent logged more sessions than in BEFORE (a
# domu_agent line); leaves the current line in DOMU_NOW.
domu_session_after() {
  DOMU_NOW=$(VSSH_LIMIT=30 domu_agent 2>&1) || return 1
  local s
  s=$(field sessions "$DOMU_NOW")
  [ -n "$s" ] && ((s > $(field sessions "$1")))
}

sock_gone() { d0 test ! -e "$X_SOCK"; }

# `xl destroy`: the session ends, the socket goes, the broker stays healthy and records
# no error. Then the domU's disk shows what the agent wrote and what its journal says.
xen_destroy() {
  local j
  sleep 3 # the domU's journal reaches its disk (SyncIntervalSec=2s in the image)
  d0 xl destroy "$X_NAME" >/dev/null 2>&1 || fail "xl destroy failed"
  wait_for "the channel socket is gone" 30 1 sock_gone || fail "$X_SOCK stayed after xl destroy"
  wait_for "the broker ended the session" 30 1 domain_detached "$X_NAME" || fail "the broker still shows a session"
  j=$(api_domain "$X_NAME")
  [ "$(json_get "$j" .last_error)" = null ] || fail "the broker recorded an error: $(json_get "$j" .last_error)"
  case $(json_get "$j" .state) in
    error | failed | unresponsive | identity-mismatch | version-mismatch) fail "state after destroy: $(json_get "$j" .state)" ;;
  esac
  api_healthy || fail "the broker is not healthy after the destroy"
  [ "$(d0 systemctl is-active xenchan-broker)" = active ] || fail "the broker is not running"
  log "destroyed: session ended cleanly (state $(json_get "$j" .state), no error)"

  # The domU's disk, as the agent left it (mount replays the ext4 journal).
  local out
  out=$(d0 "set -e; mkdir -p /mnt/domu; mount /dev/vdb /mnt/domu; cd /mnt/domu
    echo \"hostname=\$(cat etc/hostname)\"
    echo \"keys=\$(grep -c '^ssh-' home/cloud/.ssh/authorized_keys)\"
    echo \"owner=\$(stat -c %U home/cloud/.ssh/authorized_keys)\"
    echo \"generation=\$(grep -o '\"generation\": *[0-9]*' var/lib/xenchan-agent/applied.json | grep -o '[0-9]*\$')\"
    f=etc/systemd/network/10-xenchan-lan.network
    echo \"network=\$(grep -ci '^MACAddress=$X_MAC' \$f || true):\$(grep -c '^Address=$X_CIDR' \$f || true)\"
    for b in \$(journalctl -D var/log/journal --list-boots --no-pager -q | awk '{print \$2}'); do
      log=\$(journalctl -D var/log/journal -b \$b -u xenchan-agent.service -o cat --no-pager)
      applied=\$(grep -F '$AGENT_ITEM_MSG' <<<\"\$log\" | grep -o 'item=[^ ]* status=[^ ]*' | sed 's/^item=//; s/ status=/=/; s/\"//g' | LC_ALL=C sort | paste -sd, -)
      echo \"boot=\$(grep -c -F '$AGENT_SESSION_MSG' <<<\"\$log\"):\$(grep -c -F '$AGENT_ITEM_MSG' <<<\"\$log\"):\$applied\"
    done
    cd /; umount /mnt/domu" 2>&1) || fail "cannot read the domU's disk: $out"
  log "domU disk: $(tr '\n' ' ' <<<"$out")"
  grep -qx "hostname=$X_HOSTNAME" <<<"$out" || fail "the domU's /etc/hostname is not $X_HOSTNAME"
  grep -qx "keys=41" <<<"$out" || fail "cloud's authorized_keys does not hold the 41 pushed keys"
  grep -qx "owner=cloud" <<<"$out" || fail "cloud's authorized_keys is not owned by cloud"
  grep -qx "generation=$X_GEN" <<<"$out" || fail "the agent's state does not record generation $X_GEN"
  grep -qx "network=1:1" <<<"$out" || fail "the domU's 10-xenchan-lan.network does not match $X_MAC with Address=$X_CIDR"
  # Per boot "sessions:items:item=status,...": the first boot applied every item once
  # (what the broker reported in xen-create), the second (after `xl reboot`; the
  # migration is no new boot) only started sessions.
  local boots want n
  boots=$(grep '^boot=' <<<"$out" | cut -d= -f2- | tr '\n' ' ')
  want=${X_ITEMS// /,}
  n=$(wc -w <<<"$X_ITEMS")
  [[ "$boots" =~ ^[1-9][0-9]*:$n:$want\ [1-9][0-9]*:0:\ $ ]] ||
    fail "the domU's journal per boot (sessions:items:done) is '$boots', want 'N:$n:$want N:0:' (each item applied once, re-attached once)"
}

xen_stop() {
  d0 systemctl stop xenchan-broker || fail "cannot stop the broker"
  local res
  res=$(d0 systemctl show -p Result --value xenchan-broker 2>/dev/null || true)
  [ -z "$res" ] || [ "$res" = success ] || fail "the broker's stop result is $res"
  log "broker stopped cleanly"
  vssh_close "$X_PORT"
  stop_pid "$X_QEMU_PID" 5
  DIAG=""
}
