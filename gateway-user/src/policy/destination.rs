//! Where a target lives: `db.internal:5432`, `10.0.0.5:5432`, `10.0.0.0/24:5432`,
//! `[fd00::5]:5432`, `[fd00::/64]:5432`. Parsed once, when the policy file is read.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Destination {
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An address or a network; a single address is a /32 or /128.
    Net(IpNet),
    /// A DNS name the daemon resolves and keeps fresh.
    Name(String),
}

impl Destination {
    /// Whether `dst` is this destination, given the current addresses of named hosts.
    pub fn matches(&self, dst: SocketAddr, resolved: &[IpAddr]) -> bool {
        if dst.port() != self.port {
            return false;
        }
        let ip = canonical(dst.ip());
        match &self.host {
            Host::Net(net) => net.contains(&ip),
            Host::Name(_) => resolved.iter().any(|r| canonical(*r) == ip),
        }
    }
}

/// IPv4-mapped IPv6 compares as the IPv4 address it carries.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            format!(
                "invalid destination {s:?}: {why} (expected HOST:PORT, e.g. db.internal:5432, 10.0.0.0/24:5432 or [fd00::5]:5432)"
            )
        };
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(|| bad("missing ]:PORT"))?;
            (host, port)
        } else {
            s.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?
        };
        let port: u16 = port
            .parse()
            .map_err(|_| bad("port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        let host = if let Ok(net) = host.parse::<IpNet>() {
            Host::Net(net.trunc())
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Host::Net(IpNet::from(canonical(ip)))
        } else if is_hostname(host) {
            Host::Name(host.to_ascii_lowercase())
        } else {
            return Err(bad("host is neither an address, a network nor a DNS name"));
        };
        Ok(Destination { host, port })
    }
}

impl TryFrom<String> for Destination {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Net(IpNet::V6(n)) if n.prefix_len() == 128 => {
                write!(f, "[{}]:{}", n.addr(), self.port)
            }
            Host::Net(IpNet::V6(n)) => write!(f, "[{n}]:{}", self.port),
            Host::Net(n) if n.prefix_len() == 32 => write!(f, "{}:{}", n.addr(), self.port),
            Host::Net(n) => write!(f, "{n}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Destination {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_form() {
        let cases = [
            ("db.internal:5432", "db.internal:5432"),
            ("DB.Internal:5432", "db.internal:5432"),
            ("10.0.0.5:5432", "10.0.0.5:5432"),
            ("10.0.0.7/24:5432", "10.0.0.0/24:5432"),
            ("[fd00::5]:22", "[fd00::5]:22"),
            ("[fd00::1/64]:22", "[fd00::/64]:22"),
            ("[::ffff:10.0.0.5]:80", "10.0.0.5:80"),
        ];
        for (input, shown) in cases {
            assert_eq!(d(input).to_string(), shown, "{input}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "db.internal",
            "db:0",
            "db:65536",
            "db:x",
            "[fd00::5:22",
            "bad_host:1",
            "1.2.3:80",
            "-a.b:1",
            ":80",
        ] {
            assert!(bad.parse::<Destination>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_table() {
        let v4 = |s: &str| s.parse::<SocketAddr>().unwrap();
        let named = [IpAddr::from([127, 10, 0, 5])];
        let cases: &[(&str, &str, &[IpAddr], bool)] = &[
            ("127.10.0.5:5432", "127.10.0.5:5432", &[], true),
            ("127.10.0.5:5432", "127.10.0.5:5433", &[], false),
            ("127.10.0.5:5432", "127.10.0.6:5432", &[], false),
            ("127.10.0.0/24:80", "127.10.0.200:80", &[], true),
            ("127.10.0.0/24:80", "127.10.1.1:80", &[], false),
            ("127.10.0.5:80", "[::ffff:127.10.0.5]:80", &[], true),
            ("[::1]:80", "[::1]:80", &[], true),
            ("[::1]:80", "127.0.0.1:80", &[], false),
            ("db.internal:5432", "127.10.0.5:5432", &named, true),
            ("db.internal:5432", "[::ffff:127.10.0.5]:5432", &named, true),
            ("db.internal:5432", "127.10.0.6:5432", &named, false),
            ("db.internal:5432", "127.10.0.5:5432", &[], false),
        ];
        for (dest, dst, resolved, want) in cases {
            assert_eq!(d(dest).matches(v4(dst), resolved), *want, "{dest} vs {dst}");
        }
    }
}
