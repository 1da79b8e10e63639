#!/usr/bin/env bash
# The login storm through pgbouncer (session pooling) beside a healthy session, for
# bench/LOGIN_STORM.md: 1,000 logins, 50 at once, with `pg-agent storm`, and `pg-agent latency`
# beside them, against pgbouncer in front of a server of its own (127.10.0.13:5433, SCRAM), which
# it logs in to as storm_app. As root, after `cargo build -p gateway-tests --bins`. Everything it
# started or created is removed on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --)
PG= PGB=
T=$(mktemp -d /tmp/gwstorm.XXXXXX); chmod 755 "$T"; chown postgres "$T"
trap 'kill -INT $PGB $PG 2>/dev/null; wait $PGB $PG; rm -rf "$T"' EXIT
echo super-pw >"$T/pw"
"${AS_PG[@]}" "$PGBIN/initdb" -D "$T/data" -U postgres --auth=scram-sha-256 --pwfile="$T/pw" \
    -E UTF8 --locale=C >/dev/null
"${AS_PG[@]}" "$PGBIN/postgres" -D "$T/data" -k "$T" -c listen_addresses=127.10.0.13 -p 5433 \
    -c fsync=off -c log_min_messages=warning >"$T/pg.log" 2>&1 & PG=$!
until "$PGBIN/pg_isready" -q -h "$T" -p 5433; do sleep 0.1; done
PGPASSWORD=super-pw "$PGBIN/psql" -X -q -h 127.10.0.13 -p 5433 -U postgres \
    -c "CREATE ROLE storm_app LOGIN PASSWORD 'app-pw'" -c "CREATE DATABASE storm OWNER storm_app"
cat >"$T/pgbouncer.ini" <<INI
[databases]
storm = host=127.10.0.13 port=5433 dbname=storm user=storm_app password=app-pw
[pgbouncer]
listen_addr = 127.10.0.14
listen_port = 6433
unix_socket_dir =
auth_type = any
pool_mode = session
max_client_conn = 100
default_pool_size = 60
logfile = $T/pgbouncer.log
pidfile = $T/pgbouncer.pid
INI
chown postgres "$T/pgbouncer.ini"
"${AS_PG[@]}" pgbouncer "$T/pgbouncer.ini" >/dev/null 2>&1 & PGB=$!
until "$PGBIN/pg_isready" -q -h 127.10.0.14 -p 6433 -d storm; do sleep 0.1; done
URL="host=127.10.0.14 port=6433 user=agent dbname=storm sslmode=disable"
# The healthy session measures until its stdin, fd 3 here, is closed after the storm.
exec 3> >(target/debug/pg-agent latency "$URL" stdin | sed 's/^/healthy: /')
LATENCY=$!
sleep 1
echo "storm: $(target/debug/pg-agent storm "$URL" 1000 50)"
exec 3>&-
wait "$LATENCY"
echo "server backends at the end: $(PGPASSWORD=super-pw "$PGBIN/psql" -X -A -t -h 127.10.0.13 -p 5433 -U postgres -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")"
