#!/usr/bin/env bash
# Benchmarks of the interception layer, as root: what the kernel programs cost per call, and
# what going through gatewayd costs a governed client against dialling the same loopback
# servers directly. `cargo xtask bench` runs this script. Results: bench/RESULTS.md.
#
# It builds the gateway and bench/netbench, starts the netbench servers on 127.10.0.5:7001
# (echo, also [::1]:7001), 127.10.0.5:7002 (bulk) and 127.10.0.5:7053 / [::1]:7053 (UDP sink),
# a gatewayd of its own (port 990, pins under /sys/fs/bpf/gwbench, cgroup /gwbench, store and
# admin socket in a temporary directory), then runs each client twice: outside any governed
# cgroup (direct) and inside /gwbench (governed: redirected into gatewayd, which relays).
# kernel.bpf_stats_enabled is on for the run and put back afterwards. Everything it started or
# created is removed on exit, whether it succeeded or not.
#
# Sizes can be made smaller for a quick try, e.g. BENCH_CONNECTS=500 BENCH_BULK_MIB=256.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CONNECTS=${BENCH_CONNECTS:-5000}     # connect + 1 byte each way + close, IPv4
CONNECTS6=${BENCH_CONNECTS6:-2000}   # the same over IPv6 (exercises connect6)
RR=${BENCH_RR:-20000}                # round trips on one kept-open connection
RR_SIZE=${BENCH_RR_SIZE:-64}
BULK_MIB=${BENCH_BULK_MIB:-2048}     # per transfer, each way
BULK_REPS=${BENCH_BULK_REPS:-3}      # transfers per direction and mode; the median is reported
SYSCALLS=${BENCH_SYSCALLS:-10000}    # getpeername / bind / sendto calls of each kind

NAME=gwbench
PORT=990
PIN_DIR=/sys/fs/bpf/$NAME
ECHO4=127.10.0.5:7001
ECHO6='[::1]:7001'
BULK=127.10.0.5:7002
UDP4=127.10.0.5:7053
UDP6='[::1]:7053'

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $EUID -eq 0 ]] || die "needs root (cgroups, eBPF, port $PORT)"
for tool in bpftool python3 sysctl; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps.sh installs it)"
done
CG_ROOT=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)
[[ -n $CG_ROOT ]] || die "no cgroup2 hierarchy mounted"
CG=$CG_ROOT/$NAME
[[ ! -e $PIN_DIR ]] || die "$PIN_DIR exists: another bench runs, or one was killed (stop it, then: target/release/gatewayd --pin-dir $PIN_DIR uninstall)"
if [[ -e $CG ]]; then
    [[ -z $(cat "$CG/cgroup.procs") ]] || die "$CG has processes in it: another bench runs?"
fi

# BENCH_GATEWAY_BIN_DIR=DIR benchmarks the gatewayd and gatewayctl already built in DIR (another
# commit, or a clean snapshot while the tree does not build) instead of building this tree's.
if [[ -n ${BENCH_GATEWAY_BIN_DIR:-} ]]; then
    BIN_DIR=$(cd "$BENCH_GATEWAY_BIN_DIR" && pwd)
    log "using the gateway binaries in $BIN_DIR; building bench/netbench"
else
    BIN_DIR=$ROOT/target/release
    log "building the gateway and bench/netbench"
    cargo build --release --bins --quiet
fi
cargo build --release --quiet --manifest-path bench/netbench/Cargo.toml
GATEWAYD=$BIN_DIR/gatewayd
GATEWAYCTL=$BIN_DIR/gatewayctl
[[ -x $GATEWAYD && -x $GATEWAYCTL ]] || die "no gatewayd/gatewayctl in $BIN_DIR"
NETBENCH=$ROOT/bench/netbench/target/release/netbench

# Anything else busy on a 2-core machine shows in every number: the header reports it.
cpu_busy() { # percent of all CPUs busy over one second
    local a b
    a=$(head -1 /proc/stat)
    sleep 1
    b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN {
        n = split(a, x); split(b, y)
        for (i = 2; i <= n; i++) { t += y[i] - x[i]; if (i == 5 || i == 6) idle += y[i] - x[i] }
        printf "%.0f", t ? 100 * (t - idle) / t : 0 }'
}
BUSY_BEFORE=$(cpu_busy)
((BUSY_BEFORE <= 10)) ||
    log "warning: CPUs ${BUSY_BEFORE}% busy before the run: other work on this machine will show in the numbers"
TMP=$(mktemp -d /tmp/gwbench.XXXXXX)
STATS_BEFORE=$(sysctl -n kernel.bpf_stats_enabled)
SERVER_PID=
GATEWAYD_PID=

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # Governed clients first (only ours can be in the cgroup), then the daemon, its pins, the
    # cgroup, the servers, the sysctl and the scratch directory.
    [[ -e $CG/cgroup.kill ]] && echo 1 >"$CG/cgroup.kill" 2>/dev/null
    if [[ -n $GATEWAYD_PID ]] && kill -0 "$GATEWAYD_PID" 2>/dev/null; then
        kill -TERM "$GATEWAYD_PID"
        for _ in $(seq 100); do kill -0 "$GATEWAYD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$GATEWAYD_PID" 2>/dev/null && { log "gatewayd ignored SIGTERM; killing it"; kill -KILL "$GATEWAYD_PID"; }
        wait "$GATEWAYD_PID" 2>/dev/null
    fi
    [[ -e $PIN_DIR ]] && "$GATEWAYD" --pin-dir "$PIN_DIR" uninstall >/dev/null
    if [[ -d $CG ]]; then
        for _ in $(seq 50); do rmdir "$CG" 2>/dev/null && break; sleep 0.1; done
        [[ -d $CG ]] && log "could not remove $CG"
    fi
    if [[ -n $SERVER_PID ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    sysctl -qw kernel.bpf_stats_enabled="$STATS_BEFORE"
    if ((rc != 0)) && [[ -s $TMP/gatewayd.log ]]; then
        log "gatewayd's log:"
        tail -n 20 "$TMP/gatewayd.log" >&2
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- servers -------------------------------------------------------------------------------
"$NETBENCH" serve --echo "$ECHO4" --echo "$ECHO6" --bulk "$BULK" --udp "$UDP4" --udp "$UDP6" \
    --max-secs 600 >"$TMP/servers.out" 2>"$TMP/servers.err" &
SERVER_PID=$!
for _ in $(seq 100); do
    grep -q ready "$TMP/servers.out" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || die "netbench servers failed: $(cat "$TMP/servers.err")"
    sleep 0.05
done
grep -q ready "$TMP/servers.out" || die "netbench servers not ready"

# --- gateway -------------------------------------------------------------------------------
mkdir "$TMP/policies"
cat >"$TMP/policies/bench.toml" <<EOF
name = "bench"
cgroup = "/$NAME"
dns_resolvers = ["$UDP4", "$UDP6"]

[[targets]]
name = "echo"
address = "$ECHO4"
protocol = "tcp"

[[targets]]
name = "echo6"
address = "$ECHO6"
protocol = "tcp"

[[targets]]
name = "bulk"
address = "$BULK"
protocol = "tcp"
EOF
GATEWAYD_LOG=warn "$GATEWAYD" --policies "$TMP/policies" --listen-port "$PORT" --pin-dir "$PIN_DIR" \
    --store "$TMP/audit" --admin-socket "$TMP/admin.sock" >"$TMP/gatewayd.log" 2>&1 &
GATEWAYD_PID=$!
ctl() { "$GATEWAYCTL" --socket "$TMP/admin.sock" "$@"; }
for _ in $(seq 200); do
    ctl status >/dev/null 2>&1 && break
    kill -0 "$GATEWAYD_PID" 2>/dev/null || die "gatewayd exited before it was ready"
    sleep 0.05
done
ctl status >/dev/null || die "gatewayd not ready"
[[ -d $CG ]] || die "gatewayd did not create $CG"

# The programs attached to the bench cgroup, and their counters before any governed call.
# With the listener's program, which sits on the daemon's own cgroup and so also runs for
# the sockets of whatever shares it (the root cgroup here: every direct client too).
DAEMON_CG=$CG_ROOT$(sed -n 's/^0:://p' "/proc/$GATEWAYD_PID/cgroup")
bpftool -j cgroup show "$CG" >"$TMP/cgroup-bench.json"
bpftool -j cgroup show "$DAEMON_CG" >"$TMP/cgroup-daemon.json"
python3 -c 'import json,sys; print(json.dumps([p for f in sys.argv[1:] for p in json.loads(open(f).read().strip() or "[]")]))' \
    "$TMP/cgroup-bench.json" "$TMP/cgroup-daemon.json" >"$TMP/cgroup.json"
sysctl -qw kernel.bpf_stats_enabled=1
bpftool -j prog show >"$TMP/progs-before.json"

# --- clients -------------------------------------------------------------------------------
RESULTS=$TMP/results.txt
: >"$RESULTS"

cpu_ticks() { # user + system clock ticks of a process so far
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{print $12 + $13}' <<<"$stat"
}
CLK_TCK=$(getconf CLK_TCK)

# run MODE CLIENT-ARGS...: one client, outside (direct) or inside (governed) the bench cgroup.
# A governed line also gets the CPU time gatewayd spent meanwhile.
# With PIN_CPU set the client runs on that CPU only.
run() {
    local mode=$1 out before after pin=()
    shift
    [[ -n ${PIN_CPU:-} ]] && pin=(taskset -c "$PIN_CPU")
    if [[ $mode == governed ]]; then
        before=$(cpu_ticks "$GATEWAYD_PID")
        out=$("${pin[@]}" sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG" "$NETBENCH" "$@")
        after=$(cpu_ticks "$GATEWAYD_PID")
        out=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" '{printf "%s gw_cpu_s=%.2f\n", $0, t/hz}' <<<"$out")
    else
        out=$("${pin[@]}" "$NETBENCH" "$@")
    fi
    # One result per line, each with its mode (the syscalls client prints several lines; they
    # all get the gateway CPU time of the whole client run).
    sed "s/^/$mode /" <<<"$out" | tee -a "$RESULTS" >&2
}

bulk_bytes=$((BULK_MIB * 1024 * 1024))
started=$SECONDS
for mode in direct governed; do run "$mode" connect-rtt "$ECHO4" "$CONNECTS"; done
for mode in direct governed; do run "$mode" connect-rtt "$ECHO6" "$CONNECTS6"; done
for mode in direct governed; do run "$mode" rr "$ECHO4" "$RR" "$RR_SIZE"; done
# The same with the client, the servers and every gatewayd thread on CPU 0. On this kind of VM a
# wake-up on the other, idle CPU costs tens of microseconds, which hides what the relay itself
# adds to a message; on one CPU what is left is the work of each hop.
affinity() { for pid in "$SERVER_PID" "$GATEWAYD_PID"; do taskset -a -p -c "$1" "$pid" >/dev/null; done; }
ALL_CPUS=$(taskset -c -p $$ | awk '{print $NF}')
affinity 0
for mode in direct governed; do PIN_CPU=0 NETBENCH_TAG=_1cpu run "$mode" rr "$ECHO4" "$RR" "$RR_SIZE"; done
# Caller-side cost of the hooked syscalls, pinned for the same reason (sendto wakes the sink).
for mode in direct governed; do
    PIN_CPU=0 run "$mode" syscalls "$SYSCALLS" "$ECHO4" "$ECHO6" "$UDP4" "$UDP6"
done
affinity "$ALL_CPUS"
for dir in up down; do
    for mode in direct governed; do run "$mode" bulk "$BULK" "$dir" "$bulk_bytes" "$BULK_REPS"; done
done
log "clients done in $((SECONDS - started)) s"
clients_s=$((SECONDS - started))

bpftool -j prog show >"$TMP/progs-after.json"
sysctl -qw kernel.bpf_stats_enabled="$STATS_BEFORE"

# Every governed connection must have gone through the gateway and been allowed: count the
# audited sessions (their last records are written just after the client closes).
# (connect tests with their 200 warm-ups, two kept-open rr connections, bulk, syscalls)
expected=$(((CONNECTS + 200) + (CONNECTS6 + 200) + 2 + 2 * BULK_REPS + 2))
for _ in $(seq 100); do
    [[ $(ctl --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["active_sessions"])') == 0 ]] && break
    sleep 0.1
done
ctl --json sessions list --limit $((expected + 1000)) >"$TMP/sessions.json"

# --- report --------------------------------------------------------------------------------
if [[ -n ${BENCH_GATEWAY_BIN_DIR:-} ]]; then
    built_from="binaries in $BIN_DIR"
else
    built_from="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
    git -C "$ROOT" diff --quiet HEAD -- . ':!bench' 2>/dev/null || built_from+=" + uncommitted changes"
fi
printf '\nbench/run.sh %s | kernel %s | %s cores | gateway: %s | clients ran %s s | CPUs busy before: %s%%\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(uname -r)" "$(nproc)" "$built_from" "$clients_s" "$BUSY_BEFORE"
python3 - "$RESULTS" "$TMP/cgroup.json" "$TMP/progs-before.json" "$TMP/progs-after.json" \
    "$TMP/sessions.json" "$expected" <<'EOF'
import json, sys

results, cgroup, before, after, sessions, expected = sys.argv[1:]
rows = {}
for line in open(results):
    mode, name, *kv = line.split()
    rows[(mode, name)] = dict(x.split("=", 1) for x in kv)

# Audit check first: numbers that did not go through the gateway are worth nothing.
# (The clients check every byte they get back, so an end other than a clean close is noted but
# does not void the numbers.)
from collections import Counter
sess = json.load(open(sessions))
allowed = sum(s["verdict"] == "allow" for s in sess)
ends = Counter((s.get("end") or {}).get("kind", "none") for s in sess)
if len(sess) != int(expected) or allowed != len(sess):
    for s in [s for s in sess if s["verdict"] != "allow"][:3]:
        print(json.dumps(s), file=sys.stderr)
    sys.exit(f"bench: gateway audited {len(sess)} sessions ({allowed} allowed, ends {dict(ends)}); "
             f"expected {expected} allowed: governed numbers are not trustworthy")
print(f"\ngatewayd audited {len(sess)} governed sessions, all allowed; ends: "
      + ", ".join(f"{k} {v}" for k, v in ends.most_common()))

def f(v, fmt="{:.1f}"):
    return fmt.format(float(v))

print("\n1. eBPF programs on the bench cgroup and the daemon's (kernel.bpf_stats_enabled=1)\n")
ours = {p["id"]: p for p in json.load(open(cgroup))}
b = {p["id"]: p for p in json.load(open(before))}
a = {p["id"]: p for p in json.load(open(after))}
print(f"{'program':<16}{'attach type':<28}{'calls':>10}{'ns/call':>10}")
for pid, p in sorted(ours.items(), key=lambda kv: kv[1]["name"]):
    calls = a[pid].get("run_cnt", 0) - b[pid].get("run_cnt", 0)
    ns = a[pid].get("run_time_ns", 0) - b[pid].get("run_time_ns", 0)
    per = f"{ns / calls:.0f}" if calls else "-"
    print(f"{p['name']:<16}{p['attach_type']:<28}{calls:>10}{per:>10}")

print("\n2. Latency, microseconds (direct = same servers dialled outside the cgroup)\n")
print(f"{'test':<38}{'n':>6}  {'direct mean/p50/p99':>22}  {'governed mean/p50/p99':>22}  {'added p50':>9}")
labels = {
    "connect_rtt_v4": "connect+1B echo+close, IPv4",
    "connect_rtt_v6": "connect+1B echo+close, IPv6",
}
rr = [n for m, n in rows if m == "direct" and n.startswith("rr_")]
for name in ["connect_rtt_v4", "connect_rtt_v6"] + rr:
    d, g = rows[("direct", name)], rows[("governed", name)]
    size = name.split("_")[1]
    label = labels.get(name, f"{size} req/resp, 1 conn" + (", all on 1 CPU" if name.endswith("_1cpu") else ""))
    trio = lambda r: f"{f(r['mean_us'])}/{f(r['p50_us'])}/{f(r['p99_us'])}"
    print(f"{label:<38}{d['n']:>6}  {trio(d):>22}  {trio(g):>22}  {float(g['p50_us']) - float(d['p50_us']):>9.1f}")
for name in ("connect_rtt_v4", "connect_rtt_v6"):
    g = rows[("governed", name)]
    # The client's count includes its 200 warm-up connections.
    n = int(g["n"]) + 200
    print(f"  {name}: gatewayd CPU {float(g['gw_cpu_s']) / n * 1e6:.0f} us per connection")

print("\n3. Bulk relay through one connection, GB/s (10^9 B/s), median of reps\n")
print(f"{'direction':<28}{'bytes':>12}{'direct':>9}{'governed':>10}{'ratio':>7}  {'gatewayd CPU s/GB':>17}")
for name, label in (("bulk_up", "client -> sink (upload)"), ("bulk_down", "source -> client (download)")):
    d, g = rows[("direct", name)], rows[("governed", name)]
    ratio = float(g["median_gbps"]) / float(d["median_gbps"])
    gb = int(g["bytes"]) * int(g["reps"]) / 1e9
    print(f"{label:<28}{int(d['bytes']):>12}{f(d['median_gbps'], '{:.2f}'):>9}{f(g['median_gbps'], '{:.2f}'):>10}"
          f"{ratio:>7.2f}  {float(g['gw_cpu_s']) / gb:>17.2f}")
    print(f"  reps direct {d['all']}  governed {g['all']}")

print("\n4. Hooked syscalls as the caller sees them, ns per call, fastest of 5 batches, on 1 CPU\n")
print(f"{'syscall':<28}{'direct':>9}{'governed':>10}{'added':>8}")
for (mode, name) in rows:
    if mode == "direct" and name.startswith("syscall_"):
        d, g = rows[("direct", name)], rows[("governed", name)]
        added = float(g["ns_per_op"]) - float(d["ns_per_op"])
        print(f"{name[8:]:<28}{d['ns_per_op']:>9}{g['ns_per_op']:>10}{added:>8.0f}")
EOF
