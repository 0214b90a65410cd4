# shellcheck shell=bash
# Helpers shared by the vmtest scripts (sourced by run.sh): logging, stages with
# deadlines, bounded waits, the processes we start (and only those) and their clean-up,
# ssh into the VMs, QMP.
#
# Deadlines: every stage sets STAGE_END; every wait and every remote command is bounded
# by the time left (`timeout`), so nothing can run past its stage's deadline.

VT_T0=$(date +%s)
VT_TIMINGS=()   # "name seconds deadline status" per stage, printed at the end
VT_PIDS=()      # processes this run started (QEMU, broker); killed on exit
STAGE=""        # the stage running now ("" between stages)
STAGE_START=0
STAGE_END=0

now() { date +%s; }

log() { printf '[vmtest +%4ss] %s\n' "$(($(now) - VT_T0))" "$*" >&2; }

# fail MESSAGE: the current stage fails with MESSAGE (the EXIT trap reports it).
fail() {
  log "FAIL${STAGE:+ [$STAGE]}: $*"
  exit 1
}

# Seconds left before the current stage's deadline (0 when past it).
remaining() {
  local r=$((STAGE_END - $(now)))
  ((r > 0)) || r=0
  echo "$r"
}

# bounded CMD...: run CMD with the time left in the stage as its limit.
bounded() {
  local r
  r=$(remaining)
  ((r > 0)) || fail "deadline of stage $STAGE passed"
  timeout -k 5 "$r" "$@"
}

# limit SECONDS: min(SECONDS, time left in the stage), at least 1.
limit() {
  local r
  r=$(remaining)
  ((r < $1)) || r=$1
  ((r > 0)) || r=1
  echo "$r"
}

# wait_for DESCRIPTION MAX_SECONDS INTERVAL CMD...: poll CMD until it succeeds. Returns 1
# (with a log line) after MAX_SECONDS (scaled like the deadlines) or at the stage's
# deadline, whichever comes first.
# CMD runs in a condition, so `set -e` does not apply inside it: keep it a simple test.
wait_for() {
  local desc=$1 max every=$3
  max=$(scaled "$2")
  shift 3
  local end=$(($(now) + max))
  ((end < STAGE_END)) || end=$STAGE_END
  local t0
  t0=$(now)
  while :; do
    if "$@"; then
      log "ok: $desc ($(($(now) - t0))s)"
      return 0
    fi
    if (($(now) + every > end)); then
      log "timed out after $(($(now) - t0))s waiting for: $desc"
      return 1
    fi
    sleep "$every"
  done
}

# scaled SECONDS: SECONDS times XENCHAN_VMTEST_DEADLINE_FACTOR (default 1), whole seconds.
scaled() {
  awk -v d="$1" -v f="${XENCHAN_VMTEST_DEADLINE_FACTOR:-1}" 'BEGIN { printf "%d", d * f }'
}

# stage NAME DEADLINE FUNCTION [ARGS...]: run one stage. DEADLINE (seconds, about 3x the
# measured time) is multiplied by XENCHAN_VMTEST_DEADLINE_FACTOR. A failure inside exits
# the script (set -e / fail); the EXIT trap records the stage as failed.
stage() {
  local name=$1 deadline=$2
  shift 2
  deadline=$(scaled "$deadline")
  STAGE=$name
  STAGE_START=$(now)
  STAGE_END=$((STAGE_START + deadline))
  STAGE_DEADLINE=$deadline
  log "=== stage $name (deadline ${deadline}s)"
  "$@"
  local took=$(($(now) - STAGE_START))
  VT_TIMINGS+=("$name $took $deadline ok")
  log "=== stage $name: ok in ${took}s"
  STAGE=""
}

print_timings() {
  local line name took deadline status total=0
  echo "vmtest stage timings:" >&2
  for line in "${VT_TIMINGS[@]}"; do
    read -r name took deadline status <<<"$line"
    printf '  %-22s %5ss  (deadline %4ss)  %s\n' "$name" "$took" "$deadline" "$status" >&2
    total=$((total + took))
  done
  printf '  %-22s %5ss\n' "total" "$(($(now) - VT_T0))" >&2
}

# spawn LOGFILE CMD...: start CMD in the background, killed with this script even if
# the script is killed itself (SIGKILL to it when its parent dies); its pid is recorded
# for the clean-up and left in SPAWNED.
spawn() {
  local logfile=$1
  shift
  setpriv --pdeathsig KILL -- "$@" >"$logfile" 2>&1 &
  SPAWNED=$!
  VT_PIDS+=("$SPAWNED")
}

# stop_pid PID [GRACE]: TERM, then KILL after GRACE seconds (default 5). Only for pids
# this run started.
stop_pid() {
  local pid=$1 grace=${2:-5} i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

stop_all_spawned() {
  local pid
  for pid in "${VT_PIDS[@]}"; do
    stop_pid "$pid" 3
  done
  VT_PIDS=()
}

# free_port: a TCP port on 127.0.0.1 nobody listens on.
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! ss -Hltn "sport = :$p" | grep -q .; then
      echo "$p"
      return 0
    fi
  done
  fail "no free TCP port found"
}

SSH_OPTS=(-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
  -o LogLevel=ERROR -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=3
  -o IdentitiesOnly=yes)

# vssh PORT CMD...: run CMD as root in the VM whose sshd is forwarded to 127.0.0.1:PORT,
# with the harness key, bounded by min(VSSH_LIMIT (default 120), time left). Reuses one
# connection per VM (ControlMaster): a fresh ssh handshake under TCG costs ~1.5 s.
vssh() {
  local port=$1
  shift
  timeout -k 5 "$(limit "${VSSH_LIMIT:-120}")" ssh "${SSH_OPTS[@]}" -i "$VT_WORK/keys/harness" \
    -o ControlMaster=auto -o ControlPath="$VT_WORK/ssh-mux-%p" -o ControlPersist=120 \
    -p "$port" root@127.0.0.1 -- "$@"
}

# vssh_close PORT: end the shared connection (before a reboot, or at the end).
vssh_close() {
  ssh -o ControlPath="$VT_WORK/ssh-mux-$1" -O exit -p "$1" root@127.0.0.1 >/dev/null 2>&1 || true
}

# ssh_up PORT: true when a fresh root login works (no shared connection: used while
# booting and rebooting).
ssh_up() {
  timeout -k 2 20 ssh "${SSH_OPTS[@]}" -i "$VT_WORK/keys/harness" -o ControlPath=none \
    -p "$1" root@127.0.0.1 true >/dev/null 2>&1
}

# qmp SOCKET JSON...: send QMP commands (after qmp_capabilities); prints the replies and
# fails if any reply is an error.
qmp() {
  local sock=$1 out
  shift
  out=$({
    echo '{"execute":"qmp_capabilities"}'
    printf '%s\n' "$@"
    sleep 1
  } | timeout 20 socat - "UNIX-CONNECT:$sock") || fail "QMP on $sock failed: $out"
  if grep -q '"error"' <<<"$out"; then
    fail "QMP error: $out"
  fi
  printf '%s\n' "$out"
}

# show_tail FILE [LINES]: print the end of a log, indented, for failure reports.
show_tail() {
  local f=$1 n=${2:-40}
  [ -s "$f" ] || {
    echo "    ($f is empty or missing)" >&2
    return 0
  }
  echo "---- last $n lines of $(basename "$f") ----" >&2
  tail -n "$n" "$f" | tr -d '\r' | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/^/    /' >&2
  echo "----" >&2
}

# json_get JSON JQ_FILTER: jq -r over a string; empty output on bad JSON.
json_get() {
  jq -r "$2" <<<"$1" 2>/dev/null || true
}

# mount_chroot DIR: /proc, /sys and /dev for a chroot, undone by umount_chroot (also from
# the EXIT trap). /dev is a recursive bind made a slave, so nothing mounted or unmounted
# under it in the chroot propagates back to the host's /dev (on hosts where / is shared).
CHROOT_MOUNTS=()
mount_chroot() {
  local d=$1 m
  for m in proc sys dev; do
    mkdir -p "$d/$m"
  done
  mount -t proc proc "$d/proc" && CHROOT_MOUNTS+=("$d/proc")
  mount -t sysfs sys "$d/sys" && CHROOT_MOUNTS+=("$d/sys")
  mount --rbind /dev "$d/dev" && mount --make-rslave "$d/dev" && CHROOT_MOUNTS+=("$d/dev")
}
umount_chroot() {
  local i
  for ((i = ${#CHROOT_MOUNTS[@]} - 1; i >= 0; i--)); do
    umount -R -l "${CHROOT_MOUNTS[i]}" 2>/dev/null || true
  done
  CHROOT_MOUNTS=()
}
