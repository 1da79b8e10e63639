"""py-agent: Python agents for tests/postgres_clients.rs, run inside a governed cgroup with
Debian's /usr/bin/python3 (whose dist-packages hold python3-psycopg2).

  py_agent.py psycopg2 URL direct|agent
      One psycopg2 connection; prints what it saw as JSON. "direct" only reads; "agent"
      also writes, is refused, rolls back and reads masked columns.
  py_agent.py fire-and-close HOST PORT SQL [--terminate]
      Raw wire: logs in, writes one Query (and Terminate) and closes without waiting for
      the answer, as an agent that wants its statement run but not seen would.
"""

import json
import socket
import struct
import sys


def psycopg2_session(url, mode):
    import psycopg2

    conn = psycopg2.connect(url)
    cur = conn.cursor()
    out = {}
    # psycopg2 interpolates parameters client-side and opens a transaction implicitly.
    cur.execute(
        "SELECT id, customer_id, amount FROM invoices"
        " WHERE customer_id = %s AND amount > %s ORDER BY id",
        (1, 50),
    )
    out["rows"] = cur.fetchall()
    conn.rollback()
    if mode == "agent":
        cur.execute(
            "INSERT INTO invoices (customer_id, amount) VALUES (%s, %s) RETURNING id", (2, 7)
        )
        out["inserted"] = cur.fetchone()[0]
        conn.commit()
        # Written in the transaction the refusal below aborts: it must not survive.
        cur.execute("INSERT INTO invoices (customer_id, amount) VALUES (%s, %s)", (3, 1000))
        try:
            cur.execute("DELETE FROM invoices")
            out["denied"] = None
        except psycopg2.Error as e:
            out["denied"] = {
                "pgcode": e.pgcode,
                "class": type(e).__name__,
                "message": e.pgerror,
            }
            conn.rollback()
        cur.execute("SELECT count(*), sum(amount) FROM invoices")
        out["after_rollback"] = list(cur.fetchone())
        cur.execute("SELECT id, name, email, ssn, note FROM customers ORDER BY id")
        out["customers"] = cur.fetchall()
        conn.commit()
    conn.close()
    print(json.dumps(out))


def fire_and_close(host, port, sql, terminate):
    s = socket.create_connection((host, int(port)))
    params = b"user\0agent\0database\0x\0\0"
    s.sendall(struct.pack(">ii", 8 + len(params), 196608) + params)
    login = b""
    while not login.endswith(b"Z\0\0\0\x05I"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("closed during login: %r" % login)
        login += chunk
    body = sql.encode() + b"\0"
    message = b"Q" + struct.pack(">i", 4 + len(body)) + body
    if terminate:
        message += b"X\0\0\0\x04"
    s.sendall(message)
    s.close()


if __name__ == "__main__":
    if sys.argv[1] == "psycopg2":
        psycopg2_session(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "fire-and-close":
        fire_and_close(sys.argv[2], sys.argv[3], sys.argv[4], "--terminate" in sys.argv)
    else:
        sys.exit("unknown scenario " + sys.argv[1])
