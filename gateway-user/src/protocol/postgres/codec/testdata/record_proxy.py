#!/usr/bin/env python3
"""A recording TCP proxy: LISTEN_PORT -> UPSTREAM_PORT on 127.0.0.1.

Each accepted connection N writes what the client sent to OUTDIR/N.frontend.bin and what
the server sent to OUTDIR/N.backend.bin, byte for byte. Used to capture the fixtures in
this directory (see README.txt); not part of the build.

usage: record_proxy.py LISTEN_PORT UPSTREAM_PORT OUTDIR
"""

import itertools
import os
import socket
import sys
import threading


def pump(src, dst, path):
    with open(path, "wb") as log:
        while True:
            data = src.recv(65536)
            if not data:
                break
            log.write(data)
            log.flush()
            dst.sendall(data)
    # Pass the close on, so each side sees the other's end as it happened.
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main():
    listen_port, upstream_port, outdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.makedirs(outdir, exist_ok=True)
    srv = socket.create_server(("127.0.0.1", listen_port))
    for n in itertools.count(1):
        client, _ = srv.accept()
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        base = os.path.join(outdir, str(n))
        for src, dst, side in ((client, upstream, "frontend"), (upstream, client, "backend")):
            threading.Thread(
                target=pump, args=(src, dst, f"{base}.{side}.bin"), daemon=True
            ).start()


if __name__ == "__main__":
    main()
