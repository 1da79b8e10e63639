#!/usr/bin/env bash
# SSH through the gateway, side by side with the same sshd dialled directly, as root: `scp` of a
# 1 GiB file (OpenSSH 9 scp runs over SFTP, which the gateway judges request by request) and
# the latency of `ssh host true` (connection setup, both key exchanges, the daemon's own login,
# one exec). Results: bench/SSH.md.
#
# It builds the gateway, starts Debian's sshd on 127.10.0.30:2223 for a user of its own (key
# login), and a gatewayd (port 992, pins under /sys/fs/bpf/gwsshbench, cgroup /gwsshbench) whose
# policy makes that address an `ssh` target logging in with the same key, allowing `true` and
# SFTP writes under the scratch directory. Direct runs use the key and the host's own key;
# gateway runs run inside the governed cgroup and trust only the gateway's CA line. Everything
# it started or created is removed on exit.
#
# Knobs: SSHBENCH_MB (1024), SSHBENCH_ROUNDS (20 for the latency, 2 for scp).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MB=${SSHBENCH_MB:-1024}
ROUNDS=${SSHBENCH_ROUNDS:-20}
NAME=gwsshbench
PORT=992
PIN_DIR=/sys/fs/bpf/$NAME
IP=127.10.0.30
SSH_PORT=2223
USER_NAME=gwsshbench

log() { printf 'ssh.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
[[ $EUID -eq 0 ]] || die "needs root (cgroups, eBPF, a user, port $PORT)"
CG=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)/$NAME

log "building the gateway"
cargo build --release --bins --quiet
GATEWAYD=$ROOT/target/release/gatewayd
GATEWAYCTL=$ROOT/target/release/gatewayctl

TMP=$(mktemp -d /tmp/gwsshbench.XXXXXX)
chmod 755 "$TMP"
SSHD_PID=
GATEWAYD_PID=
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -e $CG/cgroup.kill ]] && echo 1 >"$CG/cgroup.kill" 2>/dev/null
    for pid in "$GATEWAYD_PID" "$SSHD_PID"; do
        [[ -n $pid ]] || continue
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    [[ -e $PIN_DIR ]] && "$GATEWAYD" --pin-dir "$PIN_DIR" uninstall >/dev/null
    for _ in $(seq 50); do [[ -d $CG ]] || break; rmdir "$CG" 2>/dev/null && break; sleep 0.1; done
    pkill -KILL -u "$USER_NAME" 2>/dev/null
    userdel "$USER_NAME" 2>/dev/null
    ((rc == 0)) || { log "gatewayd log:"; tail -n 20 "$TMP/gatewayd.log" >&2; }
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- sshd ----------------------------------------------------------------------------------
userdel "$USER_NAME" 2>/dev/null || true
mkdir "$TMP/home"
useradd -M -s /bin/sh -d "$TMP/home" "$USER_NAME"
usermod -p '*' "$USER_NAME"
chown "$USER_NAME" "$TMP/home"
for k in host_key user_key; do ssh-keygen -q -t ed25519 -N '' -f "$TMP/$k"; done
cp "$TMP/user_key.pub" "$TMP/authorized_keys"
cat >"$TMP/sshd_config" <<EOF
ListenAddress $IP:$SSH_PORT
HostKey $TMP/host_key
PidFile $TMP/sshd.pid
AuthorizedKeysFile $TMP/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
mkdir -p /run/sshd
/usr/sbin/sshd -D -e -f "$TMP/sshd_config" 2>"$TMP/sshd.log" &
SSHD_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/$IP/$SSH_PORT") 2>/dev/null && break; sleep 0.1; done
printf '[%s]:%s %s\n' "$IP" "$SSH_PORT" "$(cut -d' ' -f1,2 "$TMP/host_key.pub")" >"$TMP/known_hosts"

# --- gatewayd ------------------------------------------------------------------------------
mkdir "$TMP/policies"
cat >"$TMP/policies/bench.toml" <<EOF
name = "sshbench"
cgroup = "/$NAME"

[[targets]]
name = "bench-host"
address = "$IP:$SSH_PORT"
protocol = "ssh"

[targets.ssh]
user = "$USER_NAME"
key_file = "$TMP/user_key"
known_hosts = "$TMP/known_hosts"

[[targets.ssh.rules]]
name = "true"
action = "allow"
kinds = ["exec"]
programs = ["true"]

[[targets.ssh.rules]]
name = "files"
action = "allow"
kinds = ["subsystem"]
targets = ["sftp"]

[[targets.ssh.rules]]
name = "home"
action = "allow"
kinds = ["sftp_read", "sftp_write"]
paths = ["$TMP/home", "$TMP/home/*"]
EOF
printf 'ssh_host_ca = "%s/gw_ca"\n' "$TMP" >"$TMP/gatewayd.toml"
GATEWAYD_LOG=warn "$GATEWAYD" --config "$TMP/gatewayd.toml" --policies "$TMP/policies" \
    --listen-port "$PORT" --pin-dir "$PIN_DIR" --store "$TMP/audit" \
    --admin-socket "$TMP/admin.sock" >"$TMP/gatewayd.log" 2>&1 &
GATEWAYD_PID=$!
for _ in $(seq 200); do
    "$GATEWAYCTL" --socket "$TMP/admin.sock" status >/dev/null 2>&1 && break
    sleep 0.05
done
"$GATEWAYCTL" ssh known-hosts --config "$TMP/gatewayd.toml" >"$TMP/gw_known_hosts"

common=(-F /dev/null -oBatchMode=yes -oGlobalKnownHostsFile=/dev/null -oStrictHostKeyChecking=yes)
direct=("${common[@]}" -oUserKnownHostsFile="$TMP/known_hosts" -i "$TMP/user_key")
gateway=("${common[@]}" -oUserKnownHostsFile="$TMP/gw_known_hosts")
in_cgroup() { (echo 0 >"$CG/cgroup.procs" && exec "$@"); }

# --- latency: ssh host true ----------------------------------------------------------------
ms() { date +%s%N; }
latency() {
    local how=$1 out=$TMP/lat_$1 t0 t1
    : >"$out"
    for _ in $(seq "$ROUNDS"); do
        t0=$(ms)
        if [[ $how == direct ]]; then ssh "${direct[@]}" -p "$SSH_PORT" "$USER_NAME@$IP" true
        elif [[ $how == direct-x25519 ]]; then
            ssh "${direct[@]}" -oKexAlgorithms=curve25519-sha256 -p "$SSH_PORT" "$USER_NAME@$IP" true
        else in_cgroup ssh "${gateway[@]}" -p "$SSH_PORT" "agent@$IP" true; fi
        t1=$(ms)
        echo $(((t1 - t0) / 1000)) >>"$out"
    done
    sort -n "$out" | awk -v how="$how" '{a[NR]=$1} END {printf "ssh true %-8s p50 %.1f ms  p90 %.1f ms  (n=%d)\n", how, a[int(NR*0.5)+1]/1000, a[int(NR*0.9)]/1000, NR}'
}
log "ssh host true, $ROUNDS times each"
latency direct
# The gateway's legs use curve25519 with OpenSSH 9.2 (russh offers no sntrup761): the same
# exchange directly, to tell the key exchange's cost from the gateway's.
latency direct-x25519
latency gateway

# --- throughput: scp of a file -------------------------------------------------------------
head -c "${MB}M" /dev/urandom >"$TMP/blob"
scp_once() {
    local how=$1 t0 t1
    rm -f "$TMP/home/blob"
    t0=$(ms)
    if [[ $how == direct ]]; then scp -q "${direct[@]}" -P "$SSH_PORT" "$TMP/blob" "$USER_NAME@$IP:$TMP/home/blob"
    else in_cgroup scp -q "${gateway[@]}" -P "$SSH_PORT" "$TMP/blob" "agent@$IP:$TMP/home/blob"; fi
    t1=$(ms)
    cmp -s "$TMP/blob" "$TMP/home/blob" || die "$how: the copy differs"
    echo $(((t1 - t0) / 1000000))
}
log "scp of $MB MiB, twice each"
for how in direct gateway; do
    best=
    for _ in 1 2; do
        t=$(scp_once "$how")
        [[ -z $best || $t -lt $best ]] && best=$t
    done
    printf 'scp %s MiB %-8s best %d ms  %.0f MB/s\n' "$MB" "$how" "$best" "$(echo "$MB * 1.048576 * 1000 / $best" | bc -l)"
done
