//! Which sessions a listing shows: a pure predicate over records.

use serde::{Deserialize, Serialize};

use super::record::{SessionRecord, VerdictKind};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFilter {
    /// The agent's cgroup or any ancestor of it (`/agents` matches `/agents/bot`).
    pub cgroup: Option<String>,
    /// A target name, or the destination as dialled (`127.10.0.5:5432`).
    pub target: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub verdict: Option<VerdictKind>,
}

impl SessionFilter {
    pub fn matches(&self, r: &SessionRecord) -> bool {
        let cgroup_ok = self.cgroup.as_deref().is_none_or(|want| {
            let want = want.trim_end_matches('/');
            r.agent
                .as_ref()
                .and_then(|a| a.cgroup.as_deref())
                .is_some_and(|have| {
                    have == want
                        || (have.starts_with(want)
                            && have.as_bytes().get(want.len()) == Some(&b'/'))
                        || want.is_empty()
                })
        });
        let target_ok = self.target.as_deref().is_none_or(|want| {
            r.target.as_deref() == Some(want) || r.destination.as_deref() == Some(want)
        });
        cgroup_ok
            && target_ok
            && self.since_ms.is_none_or(|t| r.started_at_ms >= t)
            && self.until_ms.is_none_or(|t| r.started_at_ms <= t)
            && self.verdict.is_none_or(|v| r.verdict == v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Agent;

    fn record(cgroup: &str, target: Option<&str>, at: u64, verdict: VerdictKind) -> SessionRecord {
        SessionRecord {
            id: 1,
            started_at_ms: at,
            ended_at_ms: None,
            agent: Some(Agent {
                pid: 1,
                tid: 1,
                uid: 0,
                gid: 0,
                user: None,
                exe: None,
                cmdline: None,
                cgroup: Some(cgroup.into()),
                cgroup_id: 9,
            }),
            peer: "127.0.0.1:4000".into(),
            policy: Some("p".into()),
            destination: Some("127.10.0.5:5432".into()),
            target: target.map(Into::into),
            protocol: None,
            verdict,
            rule: "default".into(),
            bytes_up: 0,
            bytes_down: 0,
            end: None,
            token: None,
        }
    }

    #[test]
    fn filter_table() {
        let r = record("/agents/bot/job", Some("db"), 1_000, VerdictKind::Allow);
        let f = |f: SessionFilter| f.matches(&r);
        assert!(f(SessionFilter::default()));
        assert!(f(SessionFilter {
            cgroup: Some("/agents".into()),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            cgroup: Some("/agents/bot/job".into()),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            cgroup: Some("/agents/".into()),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            cgroup: Some("/agents/bo".into()),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            cgroup: Some("/other".into()),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            target: Some("db".into()),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            target: Some("127.10.0.5:5432".into()),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            target: Some("web".into()),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            since_ms: Some(1_000),
            until_ms: Some(1_000),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            since_ms: Some(1_001),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            until_ms: Some(999),
            ..Default::default()
        }));
        assert!(f(SessionFilter {
            verdict: Some(VerdictKind::Allow),
            ..Default::default()
        }));
        assert!(!f(SessionFilter {
            verdict: Some(VerdictKind::Deny),
            ..Default::default()
        }));
    }
}
