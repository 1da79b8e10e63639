//! What the audit keeps of a session. The store encodes these; nothing else does.

use serde::{Deserialize, Serialize};

use crate::policy::Protocol;

/// Who opened a connection: attested by the kernel (pid, uid, cgroup) and read from /proc at
/// accept time (names, executable, command line), since the process may be gone later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    /// cgroup2 path of the process (`/agents/bot/job-1`).
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Allow,
    Deny,
}

/// How a session ended, and on which side a failure was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum SessionEnd {
    /// The policy refused the connection.
    Refused,
    /// Both sides finished normally.
    Closed,
    /// The agent side failed (reset, timeout).
    AgentError(String),
    /// The upstream could not be reached.
    UpstreamUnreachable(String),
    /// The upstream failed mid-session.
    UpstreamError(String),
    /// The audit store could not record the session's opening, so it was refused unrun; or it
    /// could not record one of its events, so it was stopped.
    AuditUnavailable(String),
    /// The daemon stopped (crashed, was killed) before the session's end was written; sealed
    /// at the next start with the events the store had.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: u64,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    /// `None` when the kernel had no record of the connection (it was refused).
    pub agent: Option<Agent>,
    /// The agent's end of the connection as the daemon saw it.
    pub peer: String,
    pub policy: Option<String>,
    /// The address the agent dialled.
    pub destination: Option<String>,
    pub target: Option<String>,
    pub protocol: Option<Protocol>,
    pub verdict: VerdictKind,
    /// The rule that decided (`targets.db`, `default`, `no-policy`, `no-origin`).
    pub rule: String,
    /// Bytes from the agent to the upstream, and back.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub end: Option<SessionEnd>,
    /// A verified agent token (subject, issuer, groups), when the target asked for one.
    #[serde(default)]
    pub token: Option<crate::protocol::postgres::TokenIdentity>,
}

/// One statement (or refused protocol step) of a session, in the order the agent sent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementEvent {
    pub session_id: u64,
    /// 1, 2, ... within the session.
    pub seq: u64,
    pub at_ms: u64,
    /// The protocol step that carried it: `query`, `parse`, `bind`, `execute`.
    pub step: String,
    /// The statement kind (`select`, `update`, ...), or `unparsed`.
    pub kind: String,
    /// The SQL, with literals replaced by `?` unless the policy keeps them.
    pub sql: String,
    /// `allow`, `deny`, `mask` or `hold`.
    pub verdict: String,
    pub rule: String,
    /// From forwarding to the upstream's completion.
    pub duration_us: u64,
    pub rows: Option<u64>,
    /// How many values were masked; never the values themselves.
    pub masked: u64,
    pub error: Option<String>,
    /// For a held statement: the approval it waited for and how that ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Box<ApprovalRecord>>,
}

/// What the audit keeps of one approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub id: u64,
    /// `approved`, `denied`, `expired` or `withdrawn`.
    pub outcome: String,
    /// The approver's user name and uid, from the admin socket's peer credentials.
    pub by: Option<String>,
    pub by_uid: Option<u32>,
    /// The approver's note, or the reason of a deny.
    pub note: Option<String>,
    pub waited_ms: u64,
    /// When an earlier approval covered this statement: that approval's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<u64>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
