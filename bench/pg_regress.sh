#!/usr/bin/env bash
# PostgreSQL's own regression SQL through the PostgreSQL gateway with an allow-all policy, side by
# side with the same SQL run directly, as root. How to run it and the recorded figures:
# bench/PG_REGRESS.md.
#
#   bash bench/pg_regress.sh [REGRESS_DIR]
#
# REGRESS_DIR (or PG_REGRESS_DIR; default /var/tmp/pg15-regress) holds src/test/regress's sql/,
# data/ and parallel_schedule of the server's major version, extracted OUTSIDE this repository
# (bench/PG_REGRESS.md says how to obtain them); nothing of it is committed here.
#
# It builds the gateway, initialises one PostgreSQL cluster of its own (Debian's packages) with
# the database `regression` set up as pg_regress sets it up, and copies it, so that two servers
# start from the same state: A on 127.10.0.21:5435, dialled directly, and B on 127.10.0.22:5435,
# dialled through a gatewayd of its own (port 992, pins under /sys/fs/bpf/gwpgregress, cgroup
# /gwpgregress, store and admin socket in a temporary directory) whose policy makes B a
# `postgres` target that logs in as the superuser postgres and has one rule, `all`, allowing
# everything (unparsed statements stay refused, the default). Each test of parallel_schedule
# runs serially, in schedule order, with `psql -X -a -q -v ON_ERROR_STOP=0 -f FILE` and the
# environment pg_regress gives it, once against A, then once against B from inside the governed
# cgroup. Then it compares the two runs statement by statement (the method: bench/PG_REGRESS.md)
# and prints
#
#   regress: N statements ok directly, R refused by the gateway (P%), D differing
#
# with a report (refusals by category with examples, every differing statement) in
# PG_REGRESS_OUT (default /var/tmp/pg_regress-results; replaced at each run, outside the
# repository). Everything else it started or created is removed on exit, whether it succeeded
# or not.
#
# Knobs: PG_REGRESS_TESTS="a b c" runs only those tests (test_setup is always run first);
# PG_REGRESS_SKIP="..." replaces the list of tests skipped (see C_MODULE_TESTS below);
# PG_REGRESS_FILE_TIMEOUT seconds per test file and run (300); PG_REGRESS_NO_BUILD=1 uses the
# binaries already in target/release (else target/debug) without building; PG_REGRESS_BIN=DIR
# uses DIR's gatewayd and gatewayctl (another checkout's target/release, say) without building;
# PG_REGRESS_BUILT_FROM="TEXT" says what they were built from in the report (else the commit of
# the git tree they sit in, or of this one).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

REGRESS_DIR=${1:-${PG_REGRESS_DIR:-/var/tmp/pg15-regress}}
OUT=${PG_REGRESS_OUT:-/var/tmp/pg_regress-results}
FILE_TIMEOUT=${PG_REGRESS_FILE_TIMEOUT:-300}

NAME=gwpgregress
PORT=992
PIN_DIR=/sys/fs/bpf/$NAME
IP_DIRECT=127.10.0.21
IP_GATEWAY=127.10.0.22
PG_PORT=5435
SUPER_PW="regress-super-pw-$RANDOM$RANDOM"
# Tests whose subject is the C test module regress.so (built with PostgreSQL's source tree,
# not shipped by Debian): without it nearly every statement in them fails, so they are skipped.
# Other tests create a few C functions from it (test_setup, create_type, triggers, misc, ...):
# those statements fail in both runs alike and so are not counted as ok.
C_MODULE_TESTS="create_function_c compression_pglz conversion encoding indirect_toast"

log() { printf 'pg_regress.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $EUID -eq 0 ]] || die "needs root (cgroups, eBPF, port $PORT)"
[[ -f $REGRESS_DIR/parallel_schedule && -d $REGRESS_DIR/sql && -d $REGRESS_DIR/data ]] ||
    die "$REGRESS_DIR lacks parallel_schedule, sql/ or data/ of src/test/regress (see bench/PG_REGRESS.md)"
REGRESS_DIR=$(cd "$REGRESS_DIR" && pwd)
PGBIN=/usr/lib/postgresql/15/bin
[[ -x $PGBIN/postgres ]] || PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
for tool in "$PGBIN/initdb" "$PGBIN/postgres" "$PGBIN/psql" "$PGBIN/pg_isready" "$PGBIN/pg_config"; do
    [[ -x $tool ]] || die "$tool is missing (Debian package postgresql)"
done
for tool in setpriv python3 timeout; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
id postgres >/dev/null 2>&1 || die "no postgres user (Debian package postgresql creates it)"
CG_ROOT=$(awk '$9=="cgroup2"{print $5; exit}' /proc/self/mountinfo)
[[ -n $CG_ROOT ]] || die "no cgroup2 hierarchy mounted"
CG=$CG_ROOT/$NAME
[[ ! -e $PIN_DIR ]] || die "$PIN_DIR exists: another run, or one was killed (stop it, then: target/release/gatewayd --pin-dir $PIN_DIR uninstall)"
if [[ -e $CG ]]; then
    [[ -z $(cat "$CG/cgroup.procs") ]] || die "$CG has processes in it: another run?"
fi
# $OUT is replaced at each run: it must hold an earlier run's results, or nothing.
if [[ -e $OUT && ! -f $OUT/header && -n $(ls -A "$OUT" 2>/dev/null) ]]; then
    die "$OUT is not empty and holds no earlier results: set PG_REGRESS_OUT to another directory"
fi

# --- the gateway's binaries ----------------------------------------------------------------
# The tree may be mid-edit by others: retry the build a few times, then fall back to whatever
# binaries exist.
if [[ -n ${PG_REGRESS_BIN:-} ]]; then
    BIN=$(cd "$PG_REGRESS_BIN" && pwd)
elif [[ -z ${PG_REGRESS_NO_BUILD:-} ]]; then
    log "building the gateway"
    for attempt in 1 2 3 4; do
        cargo build --release --bins --quiet && break
        if ((attempt == 4)); then log "cargo build --release --bins failed $attempt times; using the binaries there are"; break; fi
        log "build failed; retrying in 60 s"
        sleep 60
    done
fi
if [[ -z ${BIN:-} ]]; then
    BIN=$ROOT/target/release
    [[ -x $BIN/gatewayd && -x $BIN/gatewayctl ]] || BIN=$ROOT/target/debug
fi
[[ -x $BIN/gatewayd && -x $BIN/gatewayctl ]] || die "no gatewayd/gatewayctl in target/release or target/debug"
GATEWAYD=$BIN/gatewayd
GATEWAYCTL=$BIN/gatewayctl
# The commit of the tree the binaries sit in (PG_REGRESS_BIN may point into another checkout).
SRC_TREE=$(git -C "$BIN" rev-parse --show-toplevel 2>/dev/null || echo "$ROOT")
BUILT_FROM="$(git -C "$SRC_TREE" rev-parse --short HEAD 2>/dev/null || echo '?')"
git -C "$SRC_TREE" diff --quiet HEAD -- . ':!bench' 2>/dev/null || BUILT_FROM+=" + uncommitted changes"
BUILT_FROM+=" ($BIN, built $(date -u -r "$GATEWAYD" +%Y-%m-%dT%H:%M:%SZ))"
[[ -z ${PG_REGRESS_BUILT_FROM:-} ]] || BUILT_FROM="$PG_REGRESS_BUILT_FROM ($BIN)"

# --- the tests -------------------------------------------------------------------------------
# parallel_schedule's groups in order, each group's tests in order, all serially.
mapfile -t SCHEDULE < <(awk '$1=="test:"{for(i=2;i<=NF;i++) print $i}' "$REGRESS_DIR/parallel_schedule")
LIBDIR=$("$PGBIN/pg_config" --pkglibdir)
if [[ -f $REGRESS_DIR/regress.so ]]; then
    SKIP=${PG_REGRESS_SKIP-}
else
    SKIP=${PG_REGRESS_SKIP-$C_MODULE_TESTS}
fi
TESTS=()
for t in "${SCHEDULE[@]}"; do
    [[ " $SKIP " == *" $t "* ]] && continue
    if [[ -n ${PG_REGRESS_TESTS:-} && $t != test_setup && " $PG_REGRESS_TESTS " != *" $t "* ]]; then continue; fi
    [[ -f $REGRESS_DIR/sql/$t.sql ]] || die "$REGRESS_DIR/sql/$t.sql is missing"
    TESTS+=("$t")
done
((${#TESTS[@]} > 0)) || die "no tests to run"

TMP=$(mktemp -d /tmp/gwpgregress.XXXXXX)
chmod 755 "$TMP"
PG_DIR=$TMP/pg          # owned by postgres: the two clusters and their logs
GW_DIR=$TMP/gw          # root only: policy, password, audit store, admin socket
BUILD=$TMP/build        # PG_ABS_BUILDDIR: the same path for both runs, emptied in between
LIB=$TMP/lib            # PG_LIBDIR: the server's modules (autoinc, refint) and regress.so if given
mkdir -p "$PG_DIR" "$GW_DIR/policies" "$LIB"
chown postgres:postgres "$PG_DIR"
chmod 700 "$GW_DIR"
PG_PIDS=()
GATEWAYD_PID=

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # Governed clients first (only ours can be in the cgroup), then the daemon, its pins, the
    # cgroup, the servers and the scratch directory.
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
    for pid in "${PG_PIDS[@]}"; do
        # SIGINT: PostgreSQL's fast shutdown.
        kill -INT "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        wait "$pid" 2>/dev/null
    done
    if ((rc != 0)); then
        for f in "$GW_DIR/gatewayd.log" "$PG_DIR"/*.log; do
            [[ -s $f ]] && { log "$f:"; tail -n 15 "$f" >&2; }
        done
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)

# --- PostgreSQL: one cluster, set up as pg_regress sets up its database, then copied ---------
log "initdb, database regression"
printf '%s\n' "$SUPER_PW" >"$PG_DIR/superpw"
chown postgres "$PG_DIR/superpw"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$PG_DIR/a" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --pwfile="$PG_DIR/superpw" -E UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 5 "$PG_DIR/initdb.log")"
# pg_regress's temporary instance has max_prepared_transactions = 2 (the prepared_xacts test
# needs it). Every statement that completes logs one `duration:` line: that count is
# "statements ok". The prefix names the psql session (PGAPPNAME=pg_regress/TEST).
cat >>"$PG_DIR/a/postgresql.conf" <<EOF
port = $PG_PORT
fsync = off
max_prepared_transactions = 2
log_min_duration_statement = 0
log_line_prefix = '@@%a@@ '
log_min_messages = warning
EOF

# start_pg DATADIR IP: a server on IP:$PG_PORT and a socket in DATADIR; sets PG_PIDS.
start_pg() {
    local dir=$1 ip=$2 pid
    "${AS_PG[@]}" "$PGBIN/postgres" -D "$dir" -k "$dir" -c listen_addresses="$ip" \
        >"$dir.log" 2>&1 &
    pid=$!
    PG_PIDS+=("$pid")
    for _ in $(seq 300); do
        "$PGBIN/pg_isready" -q -h "$dir" -p "$PG_PORT" && return 0
        kill -0 "$pid" 2>/dev/null || die "postgres ($dir) exited: $(tail -n 5 "$dir.log")"
        sleep 0.1
    done
    die "postgres ($dir) did not start"
}
stop_pg() {
    local pid=${PG_PIDS[-1]}
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    unset 'PG_PIDS[-1]'
}

start_pg "$PG_DIR/a" "$IP_DIRECT"
# As pg_regress creates its database. Its PGTZ, PGDATESTYLE and PGOPTIONS (intervalstyle) are
# settings of the database here instead: the gateway does not pass `options` on, and both runs
# must start every session alike.
"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR/a" -p "$PG_PORT" -U postgres -d postgres >/dev/null <<'EOF'
CREATE DATABASE "regression" TEMPLATE=template0;
ALTER DATABASE "regression" SET lc_messages TO 'C';
ALTER DATABASE "regression" SET lc_monetary TO 'C';
ALTER DATABASE "regression" SET lc_numeric TO 'C';
ALTER DATABASE "regression" SET lc_time TO 'C';
ALTER DATABASE "regression" SET bytea_output TO 'hex';
ALTER DATABASE "regression" SET timezone_abbreviations TO 'Default';
ALTER DATABASE "regression" SET timezone TO 'America/Los_Angeles';
ALTER DATABASE "regression" SET datestyle TO 'Postgres, MDY';
ALTER DATABASE "regression" SET intervalstyle TO 'postgres_verbose';
EOF
stop_pg
"${AS_PG[@]}" cp -a "$PG_DIR/a" "$PG_DIR/b"
start_pg "$PG_DIR/a" "$IP_DIRECT"
start_pg "$PG_DIR/b" "$IP_GATEWAY"
PG_VERSION=$("$PGBIN/postgres" --version | awk '{print $3}')

# PG_LIBDIR: the tests load $PG_LIBDIR/{regress,autoinc,refint}.so.
for so in autoinc refint; do ln -s "$LIBDIR/$so.so" "$LIB/$so.so"; done
[[ -f $REGRESS_DIR/regress.so ]] && ln -s "$REGRESS_DIR/regress.so" "$LIB/regress.so"

# --- gateway -------------------------------------------------------------------------------
log "start gatewayd (port $PORT, cgroup /$NAME)"
printf '%s\n' "$SUPER_PW" >"$GW_DIR/pw"
chmod 600 "$GW_DIR/pw"
cat >"$GW_DIR/policies/pgregress.toml" <<EOF
name = "pgregress"
cgroup = "/$NAME"

[[targets]]
name = "regress-db"
address = "$IP_GATEWAY:$PG_PORT"
protocol = "postgres"

[targets.postgres]
user = "postgres"
database = "regression"
password_file = "$GW_DIR/pw"
tls = "disable"
unparsed = "deny"

[[targets.postgres.rules]]
name = "all"
action = "allow"
EOF
GATEWAYD_LOG=warn "$GATEWAYD" --policies "$GW_DIR/policies" --listen-port "$PORT" --pin-dir "$PIN_DIR" \
    --store "$GW_DIR/audit" --admin-socket "$GW_DIR/admin.sock" >"$GW_DIR/gatewayd.log" 2>&1 &
GATEWAYD_PID=$!
ctl() { "$GATEWAYCTL" --socket "$GW_DIR/admin.sock" "$@"; }
for _ in $(seq 200); do
    ctl status >/dev/null 2>&1 && break
    kill -0 "$GATEWAYD_PID" 2>/dev/null || die "gatewayd exited before it was ready: $(tail -n 5 "$GW_DIR/gatewayd.log")"
    sleep 0.05
done
ctl status >/dev/null || die "gatewayd not ready"
[[ -d $CG ]] || die "gatewayd did not create $CG"

# --- runs ----------------------------------------------------------------------------------
# The previous run's results (checked above to be nothing else).
rm -rf "$OUT"
mkdir -p "$OUT/direct" "$OUT/gateway"

# run_tests MODE: every test, serially, into $OUT/MODE/TEST.out; a line per test with psql's
# exit code (124: timed out) in $OUT/MODE/status.
run_tests() {
    local mode=$1 t rc host
    # PG_ABS_BUILDDIR/results is where the tests write files, some of them by the server.
    rm -rf "$BUILD"
    mkdir -p "$BUILD/results"
    chown postgres:postgres "$BUILD/results"
    if [[ $mode == direct ]]; then host=$IP_DIRECT; else host=$IP_GATEWAY; fi
    : >"$OUT/$mode/status"
    for t in "${TESTS[@]}"; do
        rc=0
        # The environment pg_regress gives psql (but for PGTZ, PGDATESTYLE and PGOPTIONS: see
        # the database's settings above).
        env -u PGOPTIONS -u PGTZ -u PGDATESTYLE -u LANGUAGE -u LC_ALL -u PGCLIENTENCODING \
            -u PGDATABASE -u PGSERVICE -u PGPASSFILE -u PGHOSTADDR -u PGSSLMODE \
            LC_MESSAGES=C PGAPPNAME="pg_regress/$t" \
            PG_ABS_SRCDIR="$REGRESS_DIR" PG_ABS_BUILDDIR="$BUILD" PG_LIBDIR="$LIB" PG_DLSUFFIX=.so \
            PGHOST="$host" PGPORT="$PG_PORT" PGUSER=postgres \
            timeout --kill-after=10 "$FILE_TIMEOUT" \
            "$PGBIN/psql" -X -a -q -d regression -v ON_ERROR_STOP=0 \
            -v HIDE_TABLEAM=on -v HIDE_TOAST_COMPRESSION=on -f "$REGRESS_DIR/sql/$t.sql" \
            </dev/null >"$OUT/$mode/$t.out" 2>&1 || rc=$?
        echo "$t $rc" >>"$OUT/$mode/status"
        ((rc != 124 && rc != 137)) || log "$mode: $t timed out after ${FILE_TIMEOUT} s"
    done
}

log "run ${#TESTS[@]} tests directly (skipped: ${SKIP:-none})"
started=$SECONDS
(
    export PGPASSWORD=$SUPER_PW
    run_tests direct
)
DIRECT_S=$((SECONDS - started))

log "run ${#TESTS[@]} tests through the gateway"
started=$SECONDS
# This subshell and all it starts are in the governed cgroup: every connection psql makes,
# \connect's included, is redirected to gatewayd, which logs in upstream itself.
(
    echo "$BASHPID" >"$CG/cgroup.procs"
    unset PGPASSWORD
    run_tests gateway
)
GATEWAY_S=$((SECONDS - started))

# --- audit ---------------------------------------------------------------------------------
for _ in $(seq 100); do
    [[ $(ctl --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["active_sessions"])') == 0 ]] && break
    sleep 0.1
done
ctl --json sessions list --limit 100000 >"$OUT/sessions.json"
: >"$OUT/audit.jsonl"
python3 -c 'import json,sys; [print(s["id"]) for s in json.load(open(sys.argv[1]))]' "$OUT/sessions.json" |
    while read -r id; do
        ctl --json sessions show "$id" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' >>"$OUT/audit.jsonl"
    done
cp "$PG_DIR/a.log" "$OUT/direct/postgres.log"
cp "$PG_DIR/b.log" "$OUT/gateway/postgres.log"
cp "$GW_DIR/gatewayd.log" "$OUT/gateway/gatewayd.log"
printf '%s\n' "${TESTS[@]}" >"$OUT/tests"

# --- report --------------------------------------------------------------------------------
{
    printf 'bench/pg_regress.sh %s | kernel %s | PostgreSQL %s | gateway %s\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(uname -r)" "$PG_VERSION" "$BUILT_FROM"
    printf 'regression SQL from %s: %s tests of parallel_schedule run serially; skipped: %s\n' \
        "$REGRESS_DIR" "${#TESTS[@]}" "${SKIP:-none}"
    printf 'direct run %s s, gateway run %s s\n' "$DIRECT_S" "$GATEWAY_S"
} >"$OUT/header"
python3 - "$REGRESS_DIR/sql" "$OUT" <<'PYEOF'
import bisect, collections, difflib, json, os, re, sys

sqldir, out = sys.argv[1:]
tests = open(os.path.join(out, "tests")).read().split()

def read_lines(path):
    with open(path, "rb") as f:
        data = f.read().decode("utf-8", "surrogateescape")
    lines = data.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines

# --- statements of a file, as psql splits them (enough of its lexer for these files) ---------
GO_META = {"g", "gx", "gset", "gexec", "gdesc", "crosstabview", "watch"}
SET_SCS = re.compile(r"\s*set\s+(session\s+|local\s+)?standard_conforming_strings\s*(=|to)\s*'?(on|off|true|false)", re.I)

def statements(lines):
    """([(start_line, end_line, text, kind)], noecho): kind is sql or meta; line numbers from
    1. noecho: the lines psql -a -f does not echo (COPY ... FROM stdin data, which it reads
    without echo from a file, and lines read while ECHO is not `all`)."""
    out, std_strings, noecho, echo = [], True, set(), True
    state, cdepth, depth, start, buf = None, 0, 0, None, []
    words, begin_depth = [], 0  # psql's BEGIN ATOMIC ... END heuristic, as in psqlscan.l
    copy_data = False
    for no, line in enumerate(lines, 1):
        if not echo:
            noecho.add(no)
        if copy_data:
            noecho.add(no)
            if line == "\\.":
                copy_data = False
            continue
        j, n = 0, len(line)
        while j < n:
            c = line[j]
            if state == "comment":
                if line.startswith("*/", j):
                    cdepth -= 1
                    j += 2
                    if cdepth == 0:
                        state = None
                elif line.startswith("/*", j):
                    cdepth += 1
                    j += 2
                else:
                    j += 1
                continue
            if state in ("sq", "esq", "usq"):
                buf.append(c)
                if c == "\\" and (state == "esq" or (state == "sq" and not std_strings)):
                    buf.append(line[j + 1:j + 2])
                    j += 2
                    continue
                if c == "'":
                    if line[j + 1:j + 2] == "'":
                        buf.append("'")
                        j += 2
                        continue
                    state = None
                j += 1
                continue
            if state == "dq":
                buf.append(c)
                if c == '"':
                    state = None
                j += 1
                continue
            if isinstance(state, tuple):
                tag = state[1]
                if line.startswith(tag, j):
                    buf.append(tag)
                    j += len(tag)
                    state = None
                else:
                    buf.append(c)
                    j += 1
                continue
            if line.startswith("--", j):
                break
            if line.startswith("/*", j):
                state, cdepth = "comment", 1
                j += 2
                continue
            if c == "\\":
                m = re.match(r"\\([A-Za-z]+|;|\\)?", line[j:])
                name = m.group(1) or ""
                if name == ";":           # a semicolon that does not end the statement
                    buf.append(";")
                    j += 2
                    continue
                if name == "\\":          # separates two meta-commands on a line
                    j += 2
                    continue
                text = "".join(buf).strip()
                if text:
                    if name in GO_META:
                        out.append((start, no, text + " " + line[j:].strip(), "sql"))
                        buf, start, depth, words, begin_depth = [], None, 0, [], 0
                else:
                    out.append((no, no, line[j:].strip(), "meta"))
                    m = re.match(r"\\set\s+ECHO\s+(\S+)", line[j:])
                    if m:
                        echo = m.group(1).strip("'") == "all"
                    if name == "copy" and re.search(r"\bfrom\s+stdin\b", line[j:], re.I):
                        copy_data = True
                break                      # a meta-command runs to the end of the line
            if start is None and not c.isspace():
                start = no
            if c == "'":
                prev2 = line[j - 2:j - 1] if j >= 2 else ""
                if j >= 1 and line[j - 1] in "eE" and not (prev2.isalnum() or prev2 == "_"):
                    state = "esq"
                elif line[j - 2:j] in ("U&", "u&"):  # never backslash escapes
                    state = "usq"
                else:
                    state = "sq"
            elif c == '"':
                state = "dq"
            elif c == "$":
                m = re.match(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$", line[j:])
                prev = line[j - 1:j] if j else ""
                if m and not (prev and (prev.isalnum() or prev in "_$")):
                    state = ("dollar", m.group(0))
                    buf.append(m.group(0))
                    j += len(m.group(0))
                    continue
            elif c.isalpha() or c == "_":
                word = re.match(r"[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*", line[j:]).group(0)
                w = word.lower()
                words.append(w)
                # CREATE [OR REPLACE] FUNCTION|PROCEDURE: BEGIN (ATOMIC) ... END holds semicolons.
                head = [x for x in words[:5] if x in ("create", "or", "replace", "function", "procedure")]
                if (head[:1] == ["create"] and len(head) > 1 and head[1] in ("function", "procedure", "or")
                        and (head[1] != "or" or head[3:4] in (["function"], ["procedure"]))
                        and depth == 0):
                    if w == "begin":
                        begin_depth += 1
                    elif w == "case" and begin_depth:
                        begin_depth += 1
                    elif w == "end" and begin_depth:
                        begin_depth -= 1
                buf.append(word)
                j += len(word)
                continue
            elif c == "(":
                depth += 1
            elif c == ")":
                depth = max(0, depth - 1)
            elif c == ";" and depth == 0 and begin_depth == 0:
                text = "".join(buf).strip()
                if text:
                    out.append((start, no, text + ";", "sql"))
                    m = SET_SCS.match(text)
                    if m:
                        std_strings = m.group(3).lower() in ("on", "true")
                    if re.match(r"copy\b", text, re.I) and re.search(r"\bfrom\s+stdin\b", text, re.I):
                        copy_data = True
                buf, start, words = [], None, []
                j += 1
                continue
            buf.append(c)
            j += 1
        if start is not None or state is not None:
            buf.append("\n")
    return out, noecho

# --- psql's output, cut into blocks: what it printed after each statement --------------------
PREFIX = re.compile(r"psql:(.*?):(\d+): (.*)$")

def blocks(out_lines, src_lines, src_path, ends, noecho):
    """{end line of a statement: [lines psql printed for it]}. psql -a echoes each nonempty
    input line as it reads it; what it prints after a statement's last line belongs to that statement.
    Errors carry their line (psql:FILE:LINE:), and that prefix is taken off."""
    res = collections.defaultdict(list)
    ptr = 0
    for line in out_lines:
        # psql does not echo empty lines (but inside a quoted string), nor noecho's.
        while (ptr < len(src_lines) and (src_lines[ptr] == "" or ptr + 1 in noecho)
               and line != src_lines[ptr]):
            ptr += 1
        if ptr < len(src_lines) and line == src_lines[ptr]:
            ptr += 1
            continue
        at = ptr
        m = PREFIX.match(line)
        if m and m.group(1) == src_path:
            at, line = int(m.group(2)), m.group(3)
        i = bisect.bisect_right(ends, at) - 1
        res[ends[i] if i >= 0 else 0].append(line)
    return res

REFUSAL = re.compile(r"^(?:ERROR|FATAL):\s+(gatewayd: policy .*)$")
SQLSTATE_ONLY = re.compile(r"^(?:ERROR|FATAL):\s+42501$")
ERROR = re.compile(r"^(?:ERROR|FATAL):\s+")
# What a fault of the gateway (not a refusal) would look like on its side.
GATEWAY_TROUBLE = re.compile(r"gatewayd(?!: policy)|server closed the connection|connection to server .* (?:lost|failed)|"
                             r"no connection to the server|lost synchronization|unexpected (?:message|response)", re.I)

def category(msg):
    # "gatewayd: policy NAME refuses ..." without the policy's name, quoted names and numbers.
    msg = re.sub(r"^gatewayd: policy \S+ ", "", msg)
    msg = re.sub(r'"[^"]*"', '"…"', msg)
    return msg

def detail_category(detail):
    d = re.sub(r"\s*at Line: \d+, Column:? \d+", "", detail)
    d = re.sub(r"\bLine: \d+, Column:? \d+", "", d)
    return d.strip()

def lead(text):
    # The statement's first words, for grouping: CREATE FUNCTION, ALTER TABLE, SELECT, \d ...
    t = re.sub(r"^\s*(--[^\n]*\n|/\*.*?\*/)*", "", text, flags=re.S).strip()
    words = re.findall(r"^\\\S+|[A-Za-z_]+", t)[:3]
    if not words:
        return "?"
    if words[0].startswith("\\"):
        return words[0]
    w = [x.upper() for x in words]
    two = {"CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "SECURITY", "REFRESH", "IMPORT", "REASSIGN"}
    if w[0] in two and len(w) > 1:
        if w[1] in ("OR", "UNIQUE", "TEMP", "TEMPORARY", "UNLOGGED", "GLOBAL", "LOCAL", "DEFAULT", "IF", "CONSTRAINT", "TRUSTED", "PROCEDURAL", "RECURSIVE") and len(w) > 2:
            return " ".join(w[:3]) if w[1] != "OR" else f"{w[0]} OR REPLACE {w[2] if len(w) > 2 else ''}".strip()
        return " ".join(w[:2])
    return w[0]

def one_line(text, width=160):
    t = re.sub(r"\s+", " ", text).strip()
    return t if len(t) <= width else t[:width - 1] + "…"

# --- statements ok per run, from the server logs ---------------------------------------------
def ok_counts(path):
    per = collections.Counter()
    pat = re.compile(r"^@@pg_regress/(\S+?)@@ LOG:  duration: [0-9.]+ ms  (?:statement|execute|fastpath)")
    with open(path, "rb") as f:
        for raw in f:
            m = pat.match(raw.decode("utf-8", "replace"))
            if m:
                per[m.group(1)] += 1
    return per

ok_direct = ok_counts(os.path.join(out, "direct", "postgres.log"))
ok_gateway = ok_counts(os.path.join(out, "gateway", "postgres.log"))

def statuses(mode):
    res = {}
    for line in open(os.path.join(out, mode, "status")):
        t, rc = line.split()
        res[t] = int(rc)
    return res

st_direct, st_gateway = statuses("direct"), statuses("gateway")

# --- the gateway's own account: its audit --------------------------------------------------
# Each psql session is the agent of one audited session whose command line names the test file;
# its refused statements, in order, are the refusals psql printed for that test, in order.
audit_verdicts, audit_rules, audit_statements, sessions = collections.Counter(), collections.Counter(), 0, 0
audit_denied = collections.defaultdict(list)
try:
    for line in sorted(open(os.path.join(out, "audit.jsonl")), key=lambda l: json.loads(l)["id"]):
        s = json.loads(line)
        sessions += 1
        m = re.search(r"/([^/\s]+)\.sql$", (s.get("agent") or {}).get("cmdline") or "")
        for e in sorted(s.get("events", []), key=lambda e: e.get("seq", 0)):
            if e.get("verdict") is None:
                continue
            audit_statements += 1
            audit_verdicts[e["verdict"]] += 1
            if e["verdict"] != "allow":
                audit_rules[e.get("rule")] += 1
                if m:
                    audit_denied[m.group(1)].append(e.get("rule"))
except FileNotFoundError:
    pass

refusals = []        # refusals of statements that completed directly: R
failed_directly = [] # refusals of statements that failed directly as well
differing = []       # statements not refused whose output differs: D
per_test = []
unmatched = []       # tests whose printed refusals do not pair with their audited ones
run_refused = False  # a refusal earlier in the run (its state may differ from then on)
for t in tests:
    src_path = os.path.join(sqldir, t + ".sql")
    src = read_lines(src_path)
    stmts, noecho = statements(src)
    ends = sorted({s[1] for s in stmts})
    by_end = {}
    for s in stmts:
        by_end.setdefault(s[1], []).append(s)
    d_blocks = blocks(read_lines(os.path.join(out, "direct", t + ".out")), src, src_path, ends, noecho)
    g_blocks = blocks(read_lines(os.path.join(out, "gateway", t + ".out")), src, src_path, ends, noecho)
    test_refused = False
    n_ref = n_diff = 0
    in_order = []     # every refusal of this test, in psql's order
    for key in sorted(set(d_blocks) | set(g_blocks)):
        d, g = d_blocks.get(key, []), g_blocks.get(key, [])
        text = "\n".join(s[2] for s in by_end.get(key, [])) or f"(output at line {key})"
        refused = []
        for i, l in enumerate(g):
            m = REFUSAL.match(l)
            if m:
                refused.append((i, m.group(1)))
            elif SQLSTATE_ONLY.match(l) and l not in d:
                # psql's VERBOSITY sqlstate prints the code alone.
                refused.append((i, "(only SQLSTATE 42501 shown: psql VERBOSITY sqlstate)"))
        if refused:
            d_errors = sum(1 for l in d if ERROR.match(l))
            for n, (i, msg) in enumerate(refused):
                detail = ""
                for l in g[i + 1:i + 4]:
                    if l.startswith("DETAIL:"):
                        detail = l[len("DETAIL:"):].strip()
                        break
                r = {"test": t, "line": key, "message": msg, "category": category(msg),
                     "detail": detail, "lead": lead(text), "sql": text, "rule": None,
                     "after": "test" if test_refused else "run" if run_refused else None}
                (failed_directly if n < d_errors else refusals).append(r)
                in_order.append(r)
                n_ref += n >= d_errors
                test_refused = run_refused = True
            continue
        if d == g:
            continue
        n_diff += 1
        d_err = any(ERROR.match(l) for l in d)
        g_err = any(ERROR.match(l) for l in g)
        if g_err and not d_err:
            how = "failed only through the gateway"
        elif d_err and not g_err:
            how = "failed only directly"
        else:
            how = "output differs"
        delta = [l for l in difflib.unified_diff(d, g, "direct", "gateway", n=1, lineterm="")][2:]
        added = [l[1:] for l in delta if l.startswith("+")]
        if any(GATEWAY_TROUBLE.search(l) for l in added):
            cls = "gateway"
        elif test_refused:
            cls = "test"
        elif run_refused:
            cls = "run"
        else:
            cls = "none"
        differing.append({"test": t, "line": key, "sql": text, "how": how, "class": cls, "diff": delta})
    if len(audit_denied.get(t, [])) == len(in_order):
        for r, rule in zip(in_order, audit_denied.get(t, [])):
            r["rule"] = rule
    else:
        unmatched.append(f"{t} ({len(in_order)} printed, {len(audit_denied.get(t, []))} audited)")
    per_test.append((t, ok_direct.get(t, 0), n_ref, n_diff, st_direct.get(t), st_gateway.get(t)))

N = sum(ok_direct.get(t, 0) for t in tests)
R = len(refusals)
D = len(differing)
P = 100.0 * R / N if N else 0.0
R_after = collections.Counter(r["after"] for r in refusals)
D_class = collections.Counter(e["class"] for e in differing)
CLASSES = [
    ("gateway", "the gateway's side shows a gatewayd error other than a policy refusal, or a lost connection"),
    ("none", "no refusal anywhere before them in the run: unexplained"),
    ("run", "after refusals in earlier tests only (state they left behind, e.g. objects a refused statement would have dropped)"),
    ("test", "after a refusal earlier in the same test"),
]

W = open(os.path.join(out, "report.txt"), "w")
def p(*a):
    print(*a, file=W)

p(open(os.path.join(out, "header")).read().rstrip())
p()
p(f"N  statements ok directly (the direct server's `duration:` lines of the psql sessions): {N}")
p(f"R  refused by the gateway, of those: {R} ({P:.2f}%): {R_after[None]} before any other refusal in "
  f"the run, {R_after['run']} after refusals in earlier tests only, {R_after['test']} after a refusal "
  f"earlier in the same test (which may have caused them)")
p(f"   refused by the gateway, but failed directly as well (not in R): {len(failed_directly)}")
p(f"D  statements not refused whose output differs: {D}")
for k, what in CLASSES:
    p(f"   {D_class[k]:6d}  {what}")
p(f"   statements ok through the gateway (the gateway server's log): {sum(ok_gateway.get(t, 0) for t in tests)}")
p(f"   gateway audit: {sessions} sessions, {audit_statements} judged statements, verdicts "
  + ", ".join(f"{k} {v}" for k, v in audit_verdicts.most_common())
  + ("; refusing rules " + ", ".join(f"{k} {v}" for k, v in audit_rules.most_common()) if audit_rules else ""))
bad = [f"{t} (direct {st_direct.get(t)}, gateway {st_gateway.get(t)})" for t in tests
       if st_direct.get(t) in (124, 137) or st_gateway.get(t) in (124, 137)]
if bad:
    p("   timed out: " + ", ".join(bad))
if unmatched:
    p("   refusals printed and audited do not pair (no rule shown for them): " + ", ".join(unmatched))

def examples(rows, k=3):
    # Those least likely to be a consequence of an earlier refusal first.
    seen, res = set(), []
    rank = {None: 0, "run": 0, "test": 1}
    for r in sorted(rows, key=lambda r: rank[r["after"]]):
        if r["sql"] in seen:
            continue
        seen.add(r["sql"])
        res.append(f"      {r['test']}.sql:{r['line']}: {one_line(r['sql'])}"
                   + (" (after a refusal in this test)" if r["after"] == "test" else ""))
        if len(res) == k:
            break
    return res

p()
p(f"== Refusals by category (R = {R}) ==")
by_cat = collections.defaultdict(list)
for r in refusals:
    by_cat[f"[rule {r['rule']}] {r['category']}" if r["rule"] else r["category"]].append(r)
for cat, rows in sorted(by_cat.items(), key=lambda kv: -len(kv[1])):
    p(f"{len(rows):6d}  {cat}")
    by_detail = collections.defaultdict(list)
    for r in rows:
        by_detail[detail_category(r["detail"]) or "(no detail)"].append(r)
    if len(by_detail) > 1 or "(no detail)" not in by_detail:
        p("        by detail:")
        for det, drows in sorted(by_detail.items(), key=lambda kv: -len(kv[1]))[:25]:
            p(f"    {len(drows):6d}  {one_line(det, 120)}")
            for e in examples(drows, 2):
                p("  " + e)
    else:
        for e in examples(rows, 3):
            p(e)
    by_lead = collections.Counter(r["lead"] for r in rows)
    p("        by statement: " + ", ".join(f"{k} {v}" for k, v in by_lead.most_common(25)))

p()
p(f"== Refusals by test ==")
for t, n, r, d, sd, sg in sorted(per_test, key=lambda x: -x[2]):
    if r:
        p(f"{r:6d}  of {n:5d} ok directly  {t}")

p()
p(f"== Differing statements (D = {D}), by class; the last class one line each ==")
order = {k: i for i, (k, _) in enumerate(CLASSES)}
for e in sorted(differing, key=lambda e: (order[e["class"]], tests.index(e["test"]), e["line"])):
    if e["class"] == "test":
        p(f"-- {e['test']}.sql:{e['line']}: [{e['class']}] {e['how']}: {one_line(e['sql'], 120)}")
        continue
    p(f"-- {e['test']}.sql:{e['line']}: [{e['class']}] {e['how']}")
    p(f"   {one_line(e['sql'], 300)}")
    for l in e["diff"][:10]:
        p(f"   {l}")
    if len(e["diff"]) > 10:
        p(f"   ... ({len(e['diff']) - 10} more diff lines)")

p()
p("== Every refusal in R (test.sql:line  [rule] category | detail | statement) ==")
for r in refusals:
    p(f"{r['test']}.sql:{r['line']}  [{r['rule']}] {r['category']} | {one_line(r['detail'], 100)} | {one_line(r['sql'], 200)}"
      + (" (after a refusal in this test)" if r["after"] == "test" else ""))
if failed_directly:
    p()
    p("== Refused, but failed directly as well ==")
    for r in failed_directly:
        p(f"{r['test']}.sql:{r['line']}  [{r['rule']}] {r['category']} | {one_line(r['sql'], 200)}")

p()
p("== Per test: ok directly, refused, differing, psql exit codes (direct, gateway) ==")
for t, n, r, d, sd, sg in per_test:
    p(f"{t:24s} {n:6d} {r:5d} {d:5d}   {sd} {sg}")
W.close()

with open(os.path.join(out, "summary"), "w") as f:
    f.write(f"regress: {N} statements ok directly, {R} refused by the gateway ({P:.2f}%), {D} differing "
            f"({D_class['gateway']} with gateway errors, {D_class['none']} before any refusal)\n")
PYEOF

# The report's head: the figures and the largest categories.
awk '/^== Refusals by test/{exit} {print}' "$OUT/report.txt" | sed -n '1,60p'
log "report: $OUT/report.txt (outputs of both runs under $OUT/direct and $OUT/gateway)"
cat "$OUT/summary"
