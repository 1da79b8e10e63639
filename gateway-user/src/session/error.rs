//! One error type for a session, saying where a failure came from (the agent, the upstream,
//! the policy, the audit, the daemon itself) and in which phase, as pingora's errors do. The
//! daemon turns it into how the session ended; a handler turns it into its protocol's own
//! refusal.

use std::fmt;

use crate::audit::SessionEnd;

/// Who caused the failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Agent,
    Upstream,
    Audit,
    Internal,
}

/// The phases of a session, in order (the daemon runs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The opening record, written before any byte reaches the upstream.
    Open,
    /// The agent's side of the protocol up to where the upstream is needed (startup, token).
    Handshake,
    /// Reaching the upstream and logging in with the daemon's credential.
    Connect,
    /// Commands judged and relayed.
    Serve,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError {
    pub source: Source,
    pub phase: Phase,
    /// What happened, for the audit and the daemon's log; never a secret or a path of one.
    pub what: String,
}

impl SessionError {
    pub fn new(source: Source, phase: Phase, what: impl fmt::Display) -> SessionError {
        SessionError {
            source,
            phase,
            what: what.to_string(),
        }
    }

    pub fn agent(phase: Phase, what: impl fmt::Display) -> SessionError {
        SessionError::new(Source::Agent, phase, what)
    }

    pub fn upstream(phase: Phase, what: impl fmt::Display) -> SessionError {
        SessionError::new(Source::Upstream, phase, what)
    }

    pub fn audit(phase: Phase, what: impl fmt::Display) -> SessionError {
        SessionError::new(Source::Audit, phase, what)
    }

    /// How the session ended, as its closing record says.
    pub fn end(&self) -> SessionEnd {
        let what = self.what.clone();
        match (self.source, self.phase) {
            (Source::Agent, _) => SessionEnd::AgentError(what),
            (Source::Upstream, Phase::Connect) => SessionEnd::UpstreamUnreachable(what),
            (Source::Upstream, _) => SessionEnd::UpstreamError(what),
            (Source::Audit, _) => SessionEnd::AuditUnavailable(what),
            (Source::Internal, _) => SessionEnd::Internal(what),
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            Source::Agent => "agent",
            Source::Upstream => "upstream",
            Source::Audit => "audit",
            Source::Internal => "internal",
        };
        write!(f, "{source} ({:?}): {}", self.phase, self.what)
    }
}

impl std::error::Error for SessionError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_say_which_side_failed() {
        let cases = [
            (SessionError::agent(Phase::Serve, "reset"), "agent_error"),
            (
                SessionError::upstream(Phase::Connect, "refused"),
                "upstream_unreachable",
            ),
            (
                SessionError::upstream(Phase::Serve, "closed"),
                "upstream_error",
            ),
            (
                SessionError::audit(Phase::Open, "full"),
                "audit_unavailable",
            ),
            (
                SessionError::new(Source::Internal, Phase::Serve, "panic"),
                "internal",
            ),
        ];
        for (e, kind) in cases {
            let end = serde_json::to_value(e.end()).unwrap();
            assert_eq!(end["kind"], kind, "{e}");
            assert_eq!(end["detail"], e.what.as_str());
        }
    }
}
