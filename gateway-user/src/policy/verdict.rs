//! The connection verdict: a pure function of the policy, the resolved host names and the
//! destination the agent dialled. Everything with side effects happens around it.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use super::{Policy, Protocol};

/// Current addresses of the host names that policies use.
pub type Resolved = HashMap<String, Vec<IpAddr>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Allow { target: String, protocol: Protocol },
    Deny(Denial),
}

/// Why a connection was refused; each one names where the refusal came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Denial {
    /// The kernel left no record of the connection: it did not come through the redirect.
    UnknownOrigin,
    /// The agent's cgroup is not (or no longer) governed by any loaded policy.
    NoPolicy,
    /// The policy names no target at that destination: its default of deny applies.
    NoTarget,
}

impl Verdict {
    /// The rule that decided, as shown in audits and logs (`targets.billing-db`, `default`).
    pub fn rule(&self) -> String {
        match self {
            Verdict::Allow { target, .. } => format!("targets.{target}"),
            Verdict::Deny(Denial::NoTarget) => "default".into(),
            Verdict::Deny(Denial::NoPolicy) => "no-policy".into(),
            Verdict::Deny(Denial::UnknownOrigin) => "no-origin".into(),
        }
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

pub fn decide(policy: Option<&Policy>, resolved: &Resolved, dst: SocketAddr) -> Verdict {
    let Some(policy) = policy else {
        return Verdict::Deny(Denial::NoPolicy);
    };
    let empty = Vec::new();
    policy
        .targets
        .iter()
        .find(|t| {
            let addrs = match &t.destination.host {
                super::Host::Name(n) => resolved.get(n).unwrap_or(&empty),
                super::Host::Net(_) => &empty,
            };
            t.destination.matches(dst, addrs)
        })
        .map_or(Verdict::Deny(Denial::NoTarget), |t| Verdict::Allow {
            target: t.name.clone(),
            protocol: t.kind.protocol(),
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn policy() -> Policy {
        Policy::parse(
            Path::new("t.toml"),
            r#"
name = "bot"
cgroup = "agents/bot"
[[targets]]
name = "db"
address = "db.internal:5432"
protocol = "tcp"
[[targets]]
name = "web"
address = "127.10.0.0/16:80"
protocol = "tcp"
[[targets]]
name = "v6"
address = "[::1]:8080"
protocol = "tcp"
"#,
        )
        .unwrap()
    }

    #[test]
    fn verdict_table() {
        let p = policy();
        let mut resolved = Resolved::new();
        resolved.insert("db.internal".into(), vec![IpAddr::from([127, 10, 0, 5])]);
        let allow = |t: &str| Verdict::Allow {
            target: t.into(),
            protocol: Protocol::Tcp,
        };
        let cases = [
            (Some(&p), "127.10.0.5:5432", allow("db")),
            (Some(&p), "[::ffff:127.10.0.5]:5432", allow("db")),
            (Some(&p), "127.10.0.6:5432", Verdict::Deny(Denial::NoTarget)),
            (Some(&p), "127.10.9.9:80", allow("web")),
            (Some(&p), "127.11.0.1:80", Verdict::Deny(Denial::NoTarget)),
            (Some(&p), "[::1]:8080", allow("v6")),
            (Some(&p), "127.0.0.1:8080", Verdict::Deny(Denial::NoTarget)),
            (None, "127.10.0.5:5432", Verdict::Deny(Denial::NoPolicy)),
        ];
        for (policy, dst, want) in cases {
            assert_eq!(
                decide(policy, &resolved, dst.parse().unwrap()),
                want,
                "{dst}"
            );
        }
    }

    #[test]
    fn unresolved_names_match_nothing() {
        let p = policy();
        let v = decide(
            Some(&p),
            &Resolved::new(),
            "127.10.0.5:5432".parse().unwrap(),
        );
        assert_eq!(v, Verdict::Deny(Denial::NoTarget));
        assert_eq!(v.rule(), "default");
    }
}
