//! Packets go only where the hooks judged: a governed socket may not set options that route
//! a packet elsewhere (an IPv6 segment routing header, an IPv4 source route, interface and
//! mark options), and what it sends with such headers as ancillary data is dropped at the
//! cgroup's egress. The "remote" host is a network namespace this test creates, joined to the
//! host by a veth pair; its counters show what arrived.

use std::process::Command;

use gateway_tests::{Gateway, output_json};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/support/route_agent.py");

/// A network namespace with two IPv4 and two IPv6 addresses behind a veth pair; deleted (with
/// the pair) on drop.
struct Remote {
    ns: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Remote {
    fn create() -> Remote {
        let id = std::process::id() % 100_000;
        let ns = format!("gwroute-{id}");
        let (host, peer) = (format!("gwh{id}"), format!("gwp{id}"));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        let remote = Remote { ns: ns.clone() };
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", &peer, "netns", &ns,
        ]);
        ip(&["addr", "add", "10.250.77.1/24", "dev", &host]);
        ip(&["-6", "addr", "add", "fd77::1/64", "dev", &host, "nodad"]);
        ip(&["link", "set", &host, "up"]);
        for a in ["10.250.77.2/24", "10.250.77.3/24"] {
            ip(&["-n", &ns, "addr", "add", a, "dev", &peer]);
        }
        for a in ["fd77::2/64", "fd77::3/64"] {
            ip(&["-n", &ns, "-6", "addr", "add", a, "dev", &peer, "nodad"]);
        }
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        // Source-routed packets would be accepted here: only the gateway can stop them.
        for key in ["all", peer.as_str()] {
            remote.sysctl(&format!("net.ipv4.conf.{key}.accept_source_route"), "1");
        }
        // Neighbours resolved before counting (one datagram each from outside the cgroup), so
        // that only the test's packets count.
        for a in ["10.250.77.2", "10.250.77.3", "fd77::2", "fd77::3"] {
            let out = output_json(&mut script(&["plain", a, "9"]));
            assert_eq!(out["sendto"], "ok", "{a}: {out}");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        remote
    }

    fn sysctl(&self, key: &str, value: &str) {
        ip(&[
            "netns",
            "exec",
            &self.ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ]);
    }

    /// (IPv4 packets received, IPv6 UDP datagrams received or refused for want of a port).
    fn counters(&self) -> (u64, u64) {
        let read = |file: &str| {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.ns, "cat", file])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let snmp = read("/proc/net/snmp");
        let mut ip_lines = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip_lines.next().unwrap(), ip_lines.next().unwrap());
        let col = names
            .split_whitespace()
            .position(|n| n == "InReceives")
            .unwrap();
        let v4 = values.split_whitespace().nth(col).unwrap().parse().unwrap();
        let snmp6 = read("/proc/net/snmp6");
        let v6 = snmp6
            .lines()
            .filter_map(|l| l.split_once(char::is_whitespace))
            .filter(|(k, _)| *k == "Udp6InDatagrams" || *k == "Udp6NoPorts")
            .map(|(_, v)| v.trim().parse::<u64>().unwrap())
            .sum();
        (v4, v6)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn script(args: &[&str]) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT).args(args);
    cmd
}

/// What a run printed, and how much the remote's counters moved meanwhile.
type Seen = (Value, (u64, u64));

/// Runs the script inside the governed cgroup and outside it: (inside, outside), each with
/// how the remote's counters moved.
fn both(gw: &Gateway, remote: &Remote, args: &[&str]) -> (Seen, Seen) {
    let run = |governed: bool| {
        let before = remote.counters();
        let out = if governed {
            output_json(&mut gw.cgroup.command(script(args)))
        } else {
            output_json(&mut script(args))
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        let after = remote.counters();
        (out, (after.0 - before.0, after.1 - before.1))
    };
    (run(true), run(false))
}

#[test]
fn routing_headers_and_source_routes_never_take_a_packet_past_the_hooks() {
    let remote = Remote::create();
    let gw = Gateway::start(
        "routing",
        "dns_resolvers = [\"10.250.77.2:53\", \"[fd77::2]:53\"]\n",
    );

    // The controls: a plain datagram to a resolver arrives, from inside and outside.
    let ((inside, moved), _) = both(&gw, &remote, &["plain", "10.250.77.2", "53"]);
    assert_eq!(inside["sendto"], "ok", "{inside}");
    assert!(moved.0 >= 1, "the resolver got nothing: {moved:?}");
    let ((inside, moved), _) = both(&gw, &remote, &["plain", "fd77::2", "53"]);
    assert_eq!(inside["sendto"], "ok", "{inside}");
    assert!(moved.1 >= 1, "the resolver got nothing: {moved:?}");

    // A segment routing header would send to fd77::3 what the hooks judged as for fd77::2.
    let ((inside, _), (outside, _)) = both(&gw, &remote, &["srh6", "fd77::2", "53", "fd77::3"]);
    eprintln!("srh6 inside {inside} outside {outside}");
    assert_eq!(inside["udp_setsockopt"], "EPERM", "{inside}");
    assert_eq!(inside["tcp_setsockopt"], "EPERM", "{inside}");
    assert_eq!(
        outside["udp_setsockopt"], "ok",
        "the option is real: {outside}"
    );

    // An IPv4 loose source route: refused as an option; as ancillary data of one datagram
    // (which no setsockopt hook sees) it is dropped at the cgroup's egress.
    let ((inside, moved_in), (outside, moved_out)) =
        both(&gw, &remote, &["lsrr4", "10.250.77.2", "53", "10.250.77.3"]);
    eprintln!("lsrr4 inside {inside} {moved_in:?}, outside {outside} {moved_out:?}");
    assert_eq!(inside["setsockopt"], "EPERM", "{inside}");
    assert_eq!(outside["setsockopt"], "ok", "{outside}");
    assert_eq!(
        moved_in.0, 0,
        "a source-routed packet left the cgroup: {inside}"
    );
    assert!(
        moved_out.0 >= 1,
        "the same packet from outside must arrive: {outside}"
    );

    // An IPv6 extension header as ancillary data: dropped at egress.
    let ((inside, moved_in), (outside, moved_out)) =
        both(&gw, &remote, &["hopopts6", "fd77::2", "53"]);
    eprintln!("hopopts6 inside {inside} {moved_in:?}, outside {outside} {moved_out:?}");
    assert_eq!(
        moved_in.1, 0,
        "a packet with an extension header left: {inside}"
    );
    assert!(
        moved_out.1 >= 1,
        "the same packet from outside must arrive: {outside}"
    );
}
