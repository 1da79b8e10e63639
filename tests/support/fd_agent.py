"""fd-agent: uses, from inside a governed cgroup, sockets and processes from outside it, and
prints what the kernel answered as JSON (errno names). Started outside the cgroup; each mode
moves itself (or a child) in by writing to PROCS, the cgroup's cgroup.procs.

  fd_agent.py premove PROCS HOST PORT
      A TCP and a UDP socket made before the move, then used after it.
  fd_agent.py passed PROCS HOST PORT
      A TCP connection made outside, handed over SCM_RIGHTS to a child that moved in.
  fd_agent.py ptrace PROCS PID
      After the move: ptrace attach, and pidfd_getfd of fd 0, on PID (outside the cgroup).
  fd_agent.py fresh PROCS HOST PORT
      The control: a TCP socket made after the move.
"""

import ctypes
import errno
import json
import os
import socket
import sys


def name(e):
    return errno.errorcode.get(e, str(e))


def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return name(e.errno)


def move(procs):
    with open(procs, "w") as f:
        f.write(str(os.getpid()))


def tcp_roundtrip(s):
    # The echo server answers once the request is complete (our write side shut).
    s.settimeout(10)
    s.sendall(b"x")
    s.shutdown(socket.SHUT_WR)
    if not s.recv(64):
        raise OSError(errno.ECONNRESET, "no answer")


def main():
    mode, procs = sys.argv[1], sys.argv[2]
    out = {}
    if mode == "premove":
        host, port = sys.argv[3], int(sys.argv[4])
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        move(procs)
        out["connect"] = attempt(lambda: tcp.connect((host, port)))
        out["sendto"] = attempt(lambda: udp.sendto(b"x", (host, port)))
    elif mode == "passed":
        host, port = sys.argv[3], int(sys.argv[4])
        conn = socket.create_connection((host, port))
        parent, child = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent.close()
            move(procs)
            _, fds, _, _ = socket.recv_fds(child, 16, 1)
            passed = socket.socket(fileno=fds[0])
            out["send"] = attempt(lambda: tcp_roundtrip(passed))
            print(json.dumps(out), flush=True)
            os._exit(0)
        child.close()
        socket.send_fds(parent, [b"fd"], [conn.fileno()])
        os.waitpid(pid, 0)
        return
    elif mode == "ptrace":
        target = int(sys.argv[3])
        move(procs)
        libc = ctypes.CDLL(None, use_errno=True)
        PTRACE_ATTACH, PTRACE_DETACH = 16, 17
        if libc.ptrace(PTRACE_ATTACH, target, None, None) == 0:
            out["ptrace"] = "ok"
            libc.ptrace(PTRACE_DETACH, target, None, None)
        else:
            out["ptrace"] = name(ctypes.get_errno())
        pidfd = os.pidfd_open(target)
        SYS_pidfd_getfd = 438
        fd = libc.syscall(SYS_pidfd_getfd, pidfd, 0, 0)
        out["pidfd_getfd"] = "ok" if fd >= 0 else name(ctypes.get_errno())
    elif mode == "fresh":
        host, port = sys.argv[3], int(sys.argv[4])
        move(procs)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        out["connect"] = attempt(lambda: tcp.connect((host, port)))
        out["send"] = attempt(lambda: tcp_roundtrip(tcp))
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


main()
