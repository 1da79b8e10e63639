"""route-agent: tries to make the kernel send a governed socket's packets somewhere other than
the address the cgroup hooks judged, and prints what the kernel answered as JSON (errno names).

  route_agent.py srh6 RESOLVER6 PORT VIA6
      setsockopt(IPV6_RTHDR) with a segment routing header through VIA6, on a UDP and a TCP
      socket; then a datagram to RESOLVER6 on the UDP socket.
  route_agent.py lsrr4 RESOLVER4 PORT VIA4
      setsockopt(IP_OPTIONS) with a loose source route through VIA4; then the same route as
      ancillary data (IP_RETOPTS) on a datagram to RESOLVER4, which no setsockopt hook sees.
  route_agent.py hopopts6 RESOLVER6 PORT
      A datagram to RESOLVER6 carrying a hop-by-hop options header as ancillary data.
  route_agent.py plain HOST PORT
      A plain datagram: the control.
"""

import errno
import json
import socket
import struct
import sys

IP_RETOPTS = 7


def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))


def srh(via):
    # Type 4 with two segments: the kernel writes the real destination into segment 0 and sends
    # the packet to segment 1 first.
    head = struct.pack("!BBBBBBH", 0, 4, 4, 1, 1, 0, 0)
    return head + bytes(16) + socket.inet_pton(socket.AF_INET6, via)


def lsrr(via):
    # Loose source route: type, length, pointer, one hop; padded with a NOP.
    return bytes([0x83, 7, 4]) + socket.inet_aton(via) + b"\x01"


def hop_by_hop():
    # Next header (filled in by the kernel), length 0, then a PadN option of 4 bytes.
    return bytes([0, 0, 1, 4, 0, 0, 0, 0])


def main():
    mode, out = sys.argv[1], {}
    if mode == "srh6":
        dst, port, via = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        out["udp_setsockopt"] = attempt(
            lambda: udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh(via))
        )
        out["sendto"] = attempt(lambda: udp.sendto(b"srh", (dst, port)))
        tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        out["tcp_setsockopt"] = attempt(
            lambda: tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh(via))
        )
    elif mode == "lsrr4":
        dst, port, via = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out["setsockopt"] = attempt(
            lambda: udp.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, lsrr(via))
        )
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out["sendmsg"] = attempt(
            lambda: other.sendmsg(
                [b"lsrr"], [(socket.IPPROTO_IP, IP_RETOPTS, lsrr(via))], 0, (dst, port)
            )
        )
    elif mode == "hopopts6":
        dst, port = sys.argv[2], int(sys.argv[3])
        udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        out["sendmsg"] = attempt(
            lambda: udp.sendmsg(
                [b"hbh"], [(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, hop_by_hop())], 0, (dst, port)
            )
        )
    elif mode == "plain":
        host, port = sys.argv[2], int(sys.argv[3])
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        out["sendto"] = attempt(lambda: udp.sendto(b"plain", (host, port)))
    else:
        sys.exit(f"unknown mode {mode}")
    print(json.dumps(out))


main()
