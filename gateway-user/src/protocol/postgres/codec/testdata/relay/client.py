#!/usr/bin/env python3
"""A raw PostgreSQL client for the relay fixtures (see README.txt): it sends, byte for byte,
what the gateway's relay forwards upstream in a scenario, so that the recorded answer is
what a real server gives to exactly those bytes. Encodes frames itself (struct), not with
the Rust encoders the relay uses, so the fixtures check those too. Not part of the build.

usage: client.py PORT extended|pipelined
"""

import socket
import struct
import sys

# relay/mod.rs: STAND_IN_SQL and STAND_IN_NAME.
STAND_IN_SQL = b"GATEWAYD POLICY REFUSAL"
STAND_IN_NAME = b"gatewayd refused statement"


def msg(tag, body):
    return tag + struct.pack("!i", len(body) + 4) + body


def cstr(s):
    return s + b"\0"


def query(sql):
    return msg(b"Q", cstr(sql))


def parse(name, sql, types):
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", len(types))
               + b"".join(struct.pack("!I", t) for t in types))


def bind(portal, statement, params):
    body = cstr(portal) + cstr(statement) + struct.pack("!hh", 1, 0)
    body += struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", len(p)) + p
    body += struct.pack("!hh", 1, 0)
    return msg(b"B", body)


def execute(portal):
    return msg(b"E", cstr(portal) + struct.pack("!i", 0))


SYNC = msg(b"S", b"")
TERMINATE = msg(b"X", b"")


def read_until_ready(sock, count):
    """Reads whole messages until `count` ReadyForQuery have arrived."""
    buf = b""
    while count:
        while len(buf) < 5 or len(buf) < 1 + struct.unpack("!i", buf[1:5])[0]:
            data = sock.recv(65536)
            if not data:
                raise SystemExit("server closed early")
            buf += data
        n = 1 + struct.unpack("!i", buf[1:5])[0]
        if buf[0:1] == b"Z":
            count -= 1
        buf = buf[n:]
    assert not buf, buf


SCENARIOS = {
    # An allowed Parse/Bind/Execute/Sync as the agent sends it; then what the relay sends for
    # a refused Parse of "s2" and the agent's Bind and Execute of it: the stand-ins.
    "extended": [
        [parse(b"s1", b"SELECT id, name FROM t WHERE id = $1", [23]),
         bind(b"", b"s1", [b"2"]), execute(b""), SYNC],
        [parse(b"s2", STAND_IN_SQL, []), bind(b"", STAND_IN_NAME, [b"2"]),
         execute(STAND_IN_NAME), SYNC],
    ],
    # Two simple queries in one write: an allowed one, then the stand-in of a refused one.
    "pipelined": [
        [query(b"SELECT id, name, note FROM t ORDER BY id"), query(STAND_IN_SQL)],
    ],
}


def main():
    port, scenario = int(sys.argv[1]), sys.argv[2]
    sock = socket.create_connection(("127.0.0.1", port))
    params = b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack("!ii", len(params) + 8, 196608) + params)
    read_until_ready(sock, 1)
    for batch in SCENARIOS[scenario]:
        sock.sendall(b"".join(batch))
        read_until_ready(sock, sum(m[0:1] in (b"S", b"Q") for m in batch))
    sock.sendall(TERMINATE)
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass


if __name__ == "__main__":
    main()
