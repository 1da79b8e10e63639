#!/usr/bin/env bash
# pgbench through the PostgreSQL gateway, side by side with the same server dialled directly
# and through pgbouncer (session mode), as root. Results: bench/POSTGRES.md.
#
# It builds the gateway, initialises a PostgreSQL server of its own (Debian's packages, SCRAM,
# fsync on, synchronous_commit=off) on 127.10.0.7:5433, loads `pgbench -i -s 10` into database
# bench owned by role bench_app, starts pgbouncer (session pooling, as user postgres) on
# 127.10.0.8:6433 and a gatewayd of its own (port 991, pins under /sys/fs/bpf/gwpgbench, cgroup
# /gwpgbench, store and admin socket in a temporary directory) whose policy makes 127.10.0.7:5433
# a `postgres` target that logs in as bench_app and allows every statement kind. Then
# `pgbench -c 8 -j 2 -T 20` runs select-only (-S) and the default TPC-B-like script, each
# direct, through pgbouncer and through the gateway (pgbench inside the governed cgroup, dialling
# the real server address: the kernel redirects it), all with `-M simple`; select-only also with
# `-M extended`, direct and through the gateway, and once more through the same gatewayd acting
# as a plain `tcp` relay (the server's second address, 127.10.0.9:5433, is a `tcp` target; pgbench
# logs in itself), which separates the relay's cost from the PostgreSQL path's (parse, judge,
# audit). Latencies come from pgbench's per-transaction logs; CPU per transaction from the
# processes' utime+stime. Before each run it waits until no other benchmark runs on the machine
# (2 cores: anything else running shows in every number). Everything it started or created is
# removed on exit, whether it succeeded or not.
#
# Knobs: PGBENCH_SECS (20), PGBENCH_CLIENTS (8), PGBENCH_THREADS (2), PGBENCH_SCALE (10),
# PGBENCH_MAX_WAIT (seconds to wait for other benchmarks before giving up, 1200),
# PGBENCH_PERF=1: after the measured runs, diagnostics that are not part of the table: perf stat
# on pgbouncer, on gatewayd as a plain `tcp` relay and on gatewayd as the PostgreSQL gateway
# (select-only, PGBENCH_PERF_SECS each, 10), then perf record with call graphs on gatewayd (select-
# only and TPC-B); PGBENCH_PERF_KEEP=DIR keeps the perf.data files.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SECS=${PGBENCH_SECS:-20}
CLIENTS=${PGBENCH_CLIENTS:-8}
THREADS=${PGBENCH_THREADS:-2}
SCALE=${PGBENCH_SCALE:-10}
MAX_WAIT=${PGBENCH_MAX_WAIT:-1200}

NAME=gwpgbench
PORT=991
PIN_DIR=/sys/fs/bpf/$NAME
PG_IP=127.10.0.7
PG_PORT=5433
PG_IP_TCP=127.10.0.9      # the same server, second address: a plain `tcp` target of the gateway
PG_IP_DURABLE=127.10.0.10 # third address: a `postgres` target with durability = "before-forward"
PGB_IP=127.10.0.8
PGB_PORT=6433
APP_USER=bench_app
APP_PW="bench-app-pw-$RANDOM$RANDOM"
SUPER_PW="super-pw-$RANDOM$RANDOM"
# Other benchmarks on this machine (bench/run.sh and its netbench/gatewayd, criterion runs).
OTHERS='bench/run.sh|netbench|gwbench|cargo bench'

log() { printf 'pgbench.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Waits until no other benchmark runs, so that none shares the 2 cores with a measurement.
wait_quiet() {
    local waited=0
    while pgrep -f "$OTHERS" >/dev/null; do
        ((waited == 0)) && log "another benchmark runs ($(pgrep -f "$OTHERS" | head -n3 | xargs)); waiting"
        ((waited < MAX_WAIT)) || die "other benchmarks still run after ${MAX_WAIT} s"
        sleep 5
        waited=$((waited + 5))
    done
    ((waited == 0)) || log "quiet after ${waited} s"
    sleep 2  # let their last processes exit and the page cache settle
}

[[ $EUID -eq 0 ]] || die "needs root (cgroups, eBPF, port $PORT)"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
PGBENCH=/usr/lib/postgresql/15/bin/pgbench
[[ -x $PGBENCH ]] || PGBENCH=$PGBIN/pgbench
for tool in "$PGBIN/initdb" "$PGBIN/postgres" "$PGBIN/psql" "$PGBENCH"; do
    [[ -x $tool ]] || die "$tool is missing (Debian packages postgresql, postgresql-contrib)"
done
for tool in pgbouncer setpriv python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install pgbouncer util-linux python3)"
done
id postgres >/dev/null 2>&1 || die "no postgres user (Debian package postgresql creates it)"
CG_ROOT=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)
[[ -n $CG_ROOT ]] || die "no cgroup2 hierarchy mounted"
CG=$CG_ROOT/$NAME
[[ ! -e $PIN_DIR ]] || die "$PIN_DIR exists: another run, or one was killed (stop it, then: target/release/gatewayd --pin-dir $PIN_DIR uninstall)"
if [[ -e $CG ]]; then
    [[ -z $(cat "$CG/cgroup.procs") ]] || die "$CG has processes in it: another run?"
fi

# The tree may be mid-edit by others: retry the build a few times.
log "building the gateway"
for attempt in 1 2 3 4; do
    cargo build --release --bins --quiet && break
    ((attempt < 4)) || die "cargo build --release --bins failed $attempt times"
    log "build failed; retrying in 60 s"
    sleep 60
done
GATEWAYD=$ROOT/target/release/gatewayd
GATEWAYCTL=$ROOT/target/release/gatewayctl

TMP=$(mktemp -d /tmp/gwpgbench.XXXXXX)
chmod 755 "$TMP"
PG_DIR=$TMP/pg          # owned by postgres: data, socket, pgbouncer's files
GW_DIR=$TMP/gw          # root only: policy, password, audit store, admin socket
LOGS=$TMP/logs
mkdir -p "$PG_DIR" "$GW_DIR/policies" "$LOGS/tx"
chown postgres:postgres "$PG_DIR"
chmod 700 "$PG_DIR" "$GW_DIR"
PG_PID=
PGB_PID=
GATEWAYD_PID=

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # Governed clients first (only ours can be in the cgroup), then the daemon, its pins, the
    # cgroup, pgbouncer, the server and the scratch directory.
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
    for pid in "$PGB_PID" "$PG_PID"; do
        [[ -n $pid ]] || continue
        # SIGINT: PostgreSQL's fast shutdown; pgbouncer exits at once on it too.
        kill -INT "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        wait "$pid" 2>/dev/null
    done
    if ((rc != 0)); then
        for f in "$GW_DIR/gatewayd.log" "$PG_DIR/postgres.log" "$PG_DIR/pgbouncer.log"; do
            [[ -s $f ]] && { log "$f:"; tail -n 15 "$f" >&2; }
        done
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# setpriv execs the program, so $! of a backgrounded one is the server itself.
AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)

# --- PostgreSQL ----------------------------------------------------------------------------
wait_quiet  # loading the data set would disturb another benchmark
log "initdb and start PostgreSQL on $PG_IP:$PG_PORT"
printf '%s\n' "$SUPER_PW" >"$PG_DIR/superpw"
chown postgres "$PG_DIR/superpw"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$PG_DIR/data" -U postgres --auth=scram-sha-256 \
    --pwfile="$PG_DIR/superpw" -E UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 5 "$PG_DIR/initdb.log")"
# fsync stays on; synchronous_commit=off lets a commit return before its WAL is flushed (no
# corruption risk, only the last moments of commits lost on a crash): the same for every mode.
"${AS_PG[@]}" "$PGBIN/postgres" -D "$PG_DIR/data" -k "$PG_DIR" \
    -c listen_addresses="$PG_IP,$PG_IP_TCP,$PG_IP_DURABLE" -p "$PG_PORT" \
    -c synchronous_commit=off -c shared_buffers=512MB -c max_connections=100 \
    -c log_min_messages=warning >"$PG_DIR/postgres.log" 2>&1 &
PG_PID=$!
export PGPASSWORD=$SUPER_PW
for _ in $(seq 300); do
    "$PGBIN/pg_isready" -q -h "$PG_DIR" -p "$PG_PORT" && break
    kill -0 "$PG_PID" 2>/dev/null || die "postgres exited: $(tail -n 5 "$PG_DIR/postgres.log")"
    sleep 0.1
done
"$PGBIN/pg_isready" -q -h "$PG_DIR" -p "$PG_PORT" || die "postgres did not start"
su_sql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres -c "$1"; }
su_sql "CREATE ROLE $APP_USER LOGIN PASSWORD '$APP_PW'"
su_sql "CREATE DATABASE bench OWNER $APP_USER"
unset PGPASSWORD
PG_VERSION=$("$PGBIN/postgres" --version | awk '{print $3}')

log "pgbench -i -s $SCALE (directly, as $APP_USER)"
started=$SECONDS
PGPASSWORD=$APP_PW "$PGBENCH" -i -s "$SCALE" -q -h "$PG_IP" -p "$PG_PORT" -U "$APP_USER" bench \
    >"$LOGS/init.out" 2>&1 || die "pgbench -i failed: $(tail -n 5 "$LOGS/init.out")"
INIT_S=$((SECONDS - started))

# --- pgbouncer -----------------------------------------------------------------------------
# auth_type=any: like the gateway, the client's user name is ignored and no password asked;
# pgbouncer logs in upstream as bench_app with the password from its [databases] line.
log "start pgbouncer on $PGB_IP:$PGB_PORT (session pooling)"
cat >"$PG_DIR/pgbouncer.ini" <<EOF
[databases]
bench = host=$PG_IP port=$PG_PORT dbname=bench user=$APP_USER password=$APP_PW

[pgbouncer]
listen_addr = $PGB_IP
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = any
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = $PG_DIR/pgbouncer.log
pidfile = $PG_DIR/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
chown postgres "$PG_DIR/pgbouncer.ini"
chmod 600 "$PG_DIR/pgbouncer.ini"
"${AS_PG[@]}" pgbouncer "$PG_DIR/pgbouncer.ini" >"$PG_DIR/pgbouncer.out" 2>&1 &
PGB_PID=$!
for _ in $(seq 100); do
    "$PGBIN/pg_isready" -q -h "$PGB_IP" -p "$PGB_PORT" -d bench && break
    kill -0 "$PGB_PID" 2>/dev/null || die "pgbouncer exited: $(cat "$PG_DIR/pgbouncer.out")"
    sleep 0.1
done
"$PGBIN/pg_isready" -q -h "$PGB_IP" -p "$PGB_PORT" -d bench || die "pgbouncer not ready"
PGB_VERSION=$(pgbouncer --version | awk 'NR==1{print $2}')

# --- gateway -------------------------------------------------------------------------------
log "start gatewayd (port $PORT, cgroup /$NAME)"
printf '%s\n' "$APP_PW" >"$GW_DIR/pw"
chmod 600 "$GW_DIR/pw"
# pg_target NAME ADDRESS [EXTRA]: a postgres target that logs in as bench_app and allows every
# kind pgbench uses; EXTRA goes into its [targets.postgres] table.
pg_target() {
    cat <<EOF

[[targets]]
name = "$1"
address = "$2"
protocol = "postgres"

[targets.postgres]
user = "$APP_USER"
database = "bench"
password_file = "$GW_DIR/pw"
tls = "disable"
${3:-}

[[targets.postgres.rules]]
name = "pgbench"
action = "allow"
kinds = ["select", "insert", "update", "delete", "transaction", "create", "drop", "truncate", "set", "copy", "maintenance", "other"]
EOF
}
{
    printf 'name = "pgbench"\ncgroup = "/%s"\n' "$NAME"
    pg_target bench-db "$PG_IP:$PG_PORT"
    # The same server on its third address, every statement flushed to the audit store before
    # it is forwarded (group commit across sessions).
    pg_target bench-db-durable "$PG_IP_DURABLE:$PG_PORT" 'durability = "before-forward"'
    # The same server on its second address as a plain TCP relay (no protocol awareness): what
    # the relay alone costs, without parsing, judging and auditing statements.
    printf '\n[[targets]]\nname = "bench-db-tcp"\naddress = "%s:%s"\nprotocol = "tcp"\n' \
        "$PG_IP_TCP" "$PG_PORT"
} >"$GW_DIR/policies/pgbench.toml"
GATEWAYD_LOG=warn "$GATEWAYD" --policies "$GW_DIR/policies" --listen-port "$PORT" --pin-dir "$PIN_DIR" \
    --store "$GW_DIR/audit" --admin-socket "$GW_DIR/admin.sock" >"$GW_DIR/gatewayd.log" 2>&1 &
GATEWAYD_PID=$!
ctl() { "$GATEWAYCTL" --socket "$GW_DIR/admin.sock" "$@"; }
for _ in $(seq 200); do
    ctl status >/dev/null 2>&1 && break
    kill -0 "$GATEWAYD_PID" 2>/dev/null || die "gatewayd exited before it was ready"
    sleep 0.05
done
ctl status >/dev/null || die "gatewayd not ready"
[[ -d $CG ]] || die "gatewayd did not create $CG"

# --- runs ----------------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# user + system ticks of a process so far; with "all", also its reaped children's.
ticks() {
    local stat
    stat=$(<"/proc/$1/stat") || { echo 0; return; }
    stat=${stat##*) }
    if [[ ${2:-} == all ]]; then awk '{print $12 + $13 + $14 + $15}' <<<"$stat"
    else awk '{print $12 + $13}' <<<"$stat"; fi
}
# PostgreSQL's whole CPU: the postmaster with every backend it reaped, plus its live children.
pg_ticks() {
    local sum pid
    sum=$(ticks "$PG_PID" all)
    for pid in $(pgrep -P "$PG_PID"); do sum=$((sum + $(ticks "$pid"))); done
    echo "$sum"
}
busy_ticks() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

RESULTS=$LOGS/results.txt
: >"$RESULTS"

# run LABEL MODE SCRIPT PROTOCOL: one pgbench run; MODE is direct, pgbouncer, gateway or
# gateway-tcp, SCRIPT select-only or tpcb.
run() {
    local label=$1 mode=$2 script=$3 proto=$4 args proxy_pid= p0=0 p1=0 g0 g1 b0 b1 others
    args=(-c "$CLIENTS" -j "$THREADS" -T "$SECS" -M "$proto" --log --log-prefix "$LOGS/tx/$label")
    [[ $script == select-only ]] && args+=(-S)
    wait_quiet
    log "run $label: $mode, $script, -M $proto, ${SECS} s"
    case $mode in
        direct)
            cmd=(env PGPASSWORD="$APP_PW" "$PGBENCH" "${args[@]}" -h "$PG_IP" -p "$PG_PORT" -U "$APP_USER" bench) ;;
        pgbouncer)
            proxy_pid=$PGB_PID
            cmd=("$PGBENCH" "${args[@]}" -h "$PGB_IP" -p "$PGB_PORT" -U agent bench) ;;
        gateway)
            # Inside the governed cgroup, dialling the server's own address, no password.
            proxy_pid=$GATEWAYD_PID
            cmd=(sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG"
                 "$PGBENCH" "${args[@]}" -h "$PG_IP" -p "$PG_PORT" -U agent bench) ;;
        gateway-durable)
            # The same PostgreSQL path with durability = "before-forward".
            proxy_pid=$GATEWAYD_PID
            cmd=(sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG"
                 "$PGBENCH" "${args[@]}" -h "$PG_IP_DURABLE" -p "$PG_PORT" -U agent bench) ;;
        gateway-tcp)
            # The same gatewayd as a plain TCP relay (target protocol "tcp" on the server's
            # second address): no SQL parsing, no statement audit; pgbench logs in itself.
            proxy_pid=$GATEWAYD_PID
            cmd=(env PGPASSWORD="$APP_PW" sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG"
                 "$PGBENCH" "${args[@]}" -h "$PG_IP_TCP" -p "$PG_PORT" -U "$APP_USER" bench) ;;
    esac
    [[ -n $proxy_pid ]] && p0=$(ticks "$proxy_pid")
    g0=$(pg_ticks); b0=$(busy_ticks)
    "${cmd[@]}" >"$LOGS/$label.out" 2>&1 || die "pgbench $label failed: $(tail -n 5 "$LOGS/$label.out")"
    b1=$(busy_ticks)
    # Backends and gateway sessions end just after pgbench: let them be reaped and counted.
    sleep 1
    [[ -n $proxy_pid ]] && p1=$(ticks "$proxy_pid")
    g1=$(pg_ticks)
    # Anything that started meanwhile (seen at the end) disturbed the numbers: flag them.
    others=$(pgrep -f "$OTHERS" >/dev/null && echo yes || echo no)
    python3 - "$label" "$mode" "$script" "$proto" "$LOGS/$label.out" "$LOGS/tx/$label" \
        "$((p1 - p0))" "$((g1 - g0))" "$((b1 - b0))" "$CLK_TCK" "$others" >>"$RESULTS" <<'EOF'
import glob, re, sys
label, mode, script, proto, out, prefix, proxy_t, pg_t, busy_t, hz, others = sys.argv[1:]
text = open(out).read()
tps = float(re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", text, re.M).group(1))
txns = int(re.search(r"^number of transactions actually processed: (\d+)", text, re.M).group(1))
failed = re.search(r"^number of failed transactions: (\d+)", text, re.M)
failed = int(failed.group(1)) if failed else 0
lat = []
for f in glob.glob(prefix + ".*"):
    with open(f) as fh:
        lat.extend(int(line.split()[2]) for line in fh)
lat.sort()
n = len(lat)
q = lambda p: lat[min(n - 1, int(p * n))] / 1000.0
hz = int(hz)
per_txn = lambda t: int(t) / hz / txns * 1e6 if txns else 0.0
print(f"{label} mode={mode} script={script} proto={proto} tps={tps:.1f} txns={txns} logged={n} "
      f"failed={failed} mean_ms={sum(lat) / n / 1000:.3f} p50_ms={q(0.50):.3f} p99_ms={q(0.99):.3f} "
      f"proxy_cpu_us={per_txn(proxy_t):.1f} pg_cpu_us={per_txn(pg_t):.1f} "
      f"busy_cpu_us={per_txn(busy_t):.1f} others={others}")
EOF
    tail -n1 "$RESULTS" >&2
    rm -f "$LOGS/tx/$label".*
}

started=$SECONDS
run s-direct direct select-only simple
run s-pgbouncer pgbouncer select-only simple
run s-gateway gateway select-only simple
run s-gateway-tcp gateway-tcp select-only simple
run sx-direct direct select-only extended
run sx-gateway gateway select-only extended
run t-direct direct tpcb simple
run t-pgbouncer pgbouncer tpcb simple
run t-gateway gateway tpcb simple
run s-gateway-durable gateway-durable select-only simple
run t-gateway-durable gateway-durable tpcb simple
RUNS_S=$((SECONDS - started))

# --- audit ---------------------------------------------------------------------------------
# Every governed statement must have been audited: wait for the last sessions to end, then
# count the events of every session.
for _ in $(seq 100); do
    [[ $(ctl --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["active_sessions"])') == 0 ]] && break
    sleep 0.1
done
ctl --json sessions list --limit 1000 >"$LOGS/sessions.json"
python3 - "$LOGS/sessions.json" >"$LOGS/session-ids" <<'EOF'
import json, sys
for s in json.load(open(sys.argv[1])):
    print(s["id"])
EOF
: >"$LOGS/events.jsonl"
while read -r id; do
    ctl --json sessions show "$id" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >>"$LOGS/events.jsonl"
done <"$LOGS/session-ids"
AUDIT_LIST=$(ctl sessions list --limit 3)
# One select-only session in brief, from what `gatewayctl sessions show ID` returned.
AUDIT_SHOW=$(python3 - "$LOGS/events.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    s = json.loads(line)
    ev = s.get("events", [])
    if len(ev) > 20:
        print(f"gatewayctl sessions show {s['id']}: verdict {s['verdict']}, end {s.get('end')}, "
              f"{len(ev)} statement events, agent {s['agent']['exe']} pid {s['agent']['pid']}; first three:")
        for e in ev[:3]:
            print("  " + json.dumps({k: e.get(k) for k in
                  ("seq", "step", "kind", "sql", "verdict", "rule", "duration_us", "rows", "error")}))
        break
EOF
)

# --- report --------------------------------------------------------------------------------
built_from="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
git -C "$ROOT" diff --quiet HEAD -- . ':!bench' 2>/dev/null || built_from+=" + uncommitted changes"
printf '\nbench/pgbench.sh %s | kernel %s | %s cores | PostgreSQL %s | pgbouncer %s | gateway %s\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(uname -r)" "$(nproc)" "$PG_VERSION" "$PGB_VERSION" "$built_from"
printf 'pgbench -c %s -j %s -T %s, scale %s (init %s s), runs took %s s\n' \
    "$CLIENTS" "$THREADS" "$SECS" "$SCALE" "$INIT_S" "$RUNS_S"
python3 - "$RESULTS" "$LOGS/events.jsonl" <<'EOF'
import json, sys
from collections import Counter
rows = {}
for line in open(sys.argv[1]):
    label, *kv = line.split()
    rows[label] = dict(x.split("=", 1) for x in kv)

# Every governed statement was audited? select-only: 1 statement a transaction; TPC-B: 7
# (BEGIN, 3 UPDATEs, SELECT, INSERT, END); each run also starts with pgbench's vacuum/truncate.
sess = [json.loads(l) for l in open(sys.argv[2])]
kinds = Counter(e["kind"] for s in sess for e in s.get("events", []))
verdicts = Counter(e["verdict"] for s in sess for e in s.get("events", []))
errors = sum(1 for s in sess for e in s.get("events", []) if e.get("error"))
events = sum(kinds.values())
# before-forward adds a durable `sent` event before each statement's own.
expected = sum(int(r["txns"]) * (7 if r["script"] == "tpcb" else 1)
               * (2 if r["mode"] == "gateway-durable" else 1)
               for r in rows.values() if r["mode"] in ("gateway", "gateway-durable"))
print(f"\ngatewayd audited {len(sess)} sessions with {events} statement events "
      f"(>= {expected} expected from the gateway runs' transactions); verdicts {dict(verdicts)}; "
      f"events with an error: {errors}")
print("kinds: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
bad = [l for l, r in rows.items() if r["failed"] != "0" or r["others"] != "no"
       or abs(int(r["logged"]) - int(r["txns"])) > 0]
if bad:
    print("WARNING: runs with failures, unlogged transactions or another benchmark running: " + ", ".join(bad))

print("\n| run | script | -M | TPS | mean ms | p50 ms | p99 ms | proxy CPU us/txn | postgres CPU us/txn | machine busy us/txn |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for label, r in rows.items():
    proxy = "-" if r["mode"] == "direct" else r["proxy_cpu_us"]
    print(f"| {r['mode']} | {r['script']} | {r['proto']} | {float(r['tps']):.0f} | {r['mean_ms']} | "
          f"{r['p50_ms']} | {r['p99_ms']} | {proxy} | {r['pg_cpu_us']} | {r['busy_cpu_us']} |")

print("\n| ratio (gateway / other) | TPS | mean latency | p99 latency |")
print("|---|---:|---:|---:|")
for gw, other, what in (("s-gateway", "s-direct", "select-only simple: gateway / direct"),
                        ("s-gateway", "s-pgbouncer", "select-only simple: gateway / pgbouncer"),
                        ("s-gateway", "s-gateway-tcp", "select-only simple: gateway / gateway as tcp relay"),
                        ("s-gateway-tcp", "s-pgbouncer", "(select-only simple: gateway as tcp relay / pgbouncer)"),
                        ("sx-gateway", "sx-direct", "select-only extended: gateway / direct"),
                        ("t-gateway", "t-direct", "TPC-B simple: gateway / direct"),
                        ("t-gateway", "t-pgbouncer", "TPC-B simple: gateway / pgbouncer"),
                        ("s-gateway-durable", "s-gateway", "select-only simple: before-forward / async"),
                        ("t-gateway-durable", "t-gateway", "TPC-B simple: before-forward / async"),
                        ("s-pgbouncer", "s-direct", "(select-only simple: pgbouncer / direct)"),
                        ("t-pgbouncer", "t-direct", "(TPC-B simple: pgbouncer / direct)")):
    a, b = rows[gw], rows[other]
    r = lambda k: float(a[k]) / float(b[k])
    print(f"| {what} | {r('tps'):.2f} | {r('mean_ms'):.2f} | {r('p99_ms'):.2f} |")
EOF
printf '\ngatewayctl sessions list --limit 3:\n%s\n' "$AUDIT_LIST"
printf '\n%s\n' "$AUDIT_SHOW"

# --- optional profile ----------------------------------------------------------------------
# Not part of the table: what each proxy asks of the kernel per transaction (perf stat on the
# proxy process: CPU, context switches, syscalls), then where gatewayd's CPU goes (perf record
# with DWARF call graphs, so Rust frames unwind), for select-only and TPC-B through the gateway.
governed() { sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$CG" "$@"; }
if [[ ${PGBENCH_PERF:-} == 1 ]]; then
    command -v perf >/dev/null || die "PGBENCH_PERF=1 needs perf (Debian package linux-perf)"
    PSECS=${PGBENCH_PERF_SECS:-10}
    EVENTS=task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter
    for sc in sendto recvfrom read write epoll_wait futex; do EVENTS+=",syscalls:sys_enter_$sc"; done
    echo
    echo "== perf stat on the proxy process, select-only -M simple, ${PSECS} s, per transaction"
    # gateway-tcp: the gateway as a plain TCP relay to the same server (pgbench logs in itself),
    # which separates the relay's own cost from the PostgreSQL path's (parse, judge, audit).
    for mode in pgbouncer gateway-tcp gateway; do
        wait_quiet
        log "perf stat on $mode during a select-only run"
        args=(-c "$CLIENTS" -j "$THREADS" -T "$PSECS" -M simple -n -S)
        if [[ $mode == pgbouncer ]]; then pid=$PGB_PID; else pid=$GATEWAYD_PID; fi
        perf stat -x, -o "$LOGS/stat-$mode.csv" -e "$EVENTS" -p "$pid" >/dev/null 2>&1 &
        perf_pid=$!
        sleep 0.5
        case $mode in
            pgbouncer)
                "$PGBENCH" "${args[@]}" -h "$PGB_IP" -p "$PGB_PORT" -U agent bench ;;
            gateway-tcp)
                PGPASSWORD=$APP_PW governed "$PGBENCH" "${args[@]}" -h "$PG_IP_TCP" -p "$PG_PORT" -U "$APP_USER" bench ;;
            gateway)
                governed "$PGBENCH" "${args[@]}" -h "$PG_IP" -p "$PG_PORT" -U agent bench ;;
        esac >"$LOGS/stat-$mode.out" 2>&1
        kill -INT "$perf_pid"; wait "$perf_pid" || true
        python3 - "$mode" "$LOGS/stat-$mode.csv" "$LOGS/stat-$mode.out" "$(ls /proc/"$pid"/task | wc -l)" <<'PY'
import re, sys
mode, csv, out, threads = sys.argv[1:]
txns = int(re.search(r"^number of transactions actually processed: (\d+)", open(out).read(), re.M).group(1))
vals = {}
for line in open(csv):
    f = line.strip().split(",")
    if len(f) > 3 and f[0] and f[0][0].isdigit():
        vals[f[2].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "syscalls")] = float(f[0])
cpu_us = vals.pop("task-clock") * 1e3 / txns  # task-clock is in ms
print(f"{mode:<11} threads {threads:>2}  txns {txns:>7}  CPU {cpu_us:6.1f} us/txn  " +
      "  ".join(f"{k} {v / txns:.2f}" for k, v in vals.items()))
PY
    done
    for script in select-only tpcb; do
        wait_quiet
        log "perf record on gatewayd during a gateway $script run"
        args=(-c "$CLIENTS" -j "$THREADS" -T "$PSECS" -M simple -n)
        [[ $script == select-only ]] && args+=(-S)
        perf record -q -N -F 249 --call-graph dwarf,16384 -p "$GATEWAYD_PID" -o "$LOGS/perf-$script.data" \
            >/dev/null 2>&1 &
        perf_pid=$!
        sleep 0.5
        governed "$PGBENCH" "${args[@]}" -h "$PG_IP" -p "$PG_PORT" -U agent bench >"$LOGS/perf-$script.out" 2>&1
        kill -INT "$perf_pid"; wait "$perf_pid" || true
        [[ -n ${PGBENCH_PERF_KEEP:-} ]] && mkdir -p "$PGBENCH_PERF_KEEP" && cp "$LOGS/perf-$script.data" "$PGBENCH_PERF_KEEP/"
        echo
        echo "== perf record on gatewayd, gateway $script -M simple ($(grep '^tps' "$LOGS/perf-$script.out" | cut -d' ' -f1-3)), share of gatewayd's samples"
        # Each sample goes to the first of these that is on its stack (owners first, then the
        # innermost of the others); DWARF unwinding truncates some stacks, which land in "other".
        perf script -i "$LOGS/perf-$script.data" -F comm,ip,sym 2>/dev/null | python3 -c '
import re, sys
from collections import Counter
OWNERS = [
    ("judge: shape (tokenize, Shape::of, cache lookup)", r"postgres::shape::|Judgements::get"),
    ("judge: sql::classify, sqlparser parse", r"Parser::parse_statements|classify_tokens"),
    ("judge: sql::redact (clone AST, replace literals, render text)", r"sql::redact"),
    ("judge: rest of classify (visit, names, drop AST), decide_all", r"postgres::sql::classify|postgres::judge::judge"),
    ("audit: relay::finish -> AuditStore::append (hand-off to the writer thread)", r"relay::finish|AuditStore::append"),
    ("session start (upstream login, connect)", r"upstream::login|TcpStream::connect\b|agent_startup"),
]
INNER = [
    ("send(2): loopback transmit, receive softirq, wake the peer", r"__libc_send|__sys_sendto"),
    ("recv(2)", r"__libc_recv|__sys_recvfrom"),
    ("tokio idle/wake: epoll_wait, futex, context switches", r"epoll_wait|Context::park|futex|\bsyscall\b|\bschedule\b"),
    ("relay logic: frames, decode, expectations", r"relay::(agent_side|upstream_side)|codec::|next_frame|mpsc"),
]
OWNERS = [(n, re.compile(r)) for n, r in OWNERS]
INNER = [(n, re.compile(r)) for n, r in INNER]
c = Counter(); frames = []; comm = None
def flush():
    global frames
    if comm is not None:
        if comm.startswith("audit-writer"):
            b = "audit writer thread (events to JSON, batched sled inserts)"
        elif not comm.startswith("tokio"):
            b = "other threads (sled io, log flusher)"
        else:
            b = next((n for n, rx in OWNERS if any(rx.search(f) for f in frames)), None)
            b = b or next((n for f in frames for n, rx in INNER if rx.search(f)), None)
            b = b or ("malloc/free/memcpy, caller unknown" if frames and re.search(r"malloc|free|memcpy|memmove|tcache|unlink_chunk", frames[0]) else "other")
        c[b] += 1
    frames = []
for line in sys.stdin:
    if not line.strip():
        flush(); comm = None
    elif not line[0].isspace():
        flush(); comm = line.strip()
    else:
        p = line.split(None, 1); frames.append(p[1].strip() if len(p) > 1 else "")
flush()
tot = sum(c.values()) or 1
for k, v in c.most_common():
    print(f"{100 * v / tot:5.1f}%  {k}")
print(f"({tot} samples)")
' || true
        echo "-- self time, top symbols"
        perf report -i "$LOGS/perf-$script.data" --no-children --stdio --percent-limit 1.5 \
            --sort dso,symbol -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | sed 's/[ -]*$//' \
            | cut -c1-120 | head -n 12 || true
    done
fi
