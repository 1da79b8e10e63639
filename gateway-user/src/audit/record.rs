//! What the audit keeps of a session. The store encodes these; nothing else does.

use serde::{Deserialize, Serialize};

use crate::{rules::Action, sql::SqlKind, target::Protocol};

pub use crate::identity::Agent;

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
    /// The daemon itself failed (a task ended without an answer): a bug, logged with detail.
    Internal(String),
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
    pub token: Option<crate::identity::TokenIdentity>,
}

/// One command of a session (a statement, a refused protocol step, later an SSH exec or an
/// HTTP request), in the order the agent sent them: what every protocol records alike, and
/// the protocol's own [`Detail`].
///
/// Stored as one JSON object with the detail's fields beside the common ones and `detail`
/// naming its kind; lines written before details existed (PostgreSQL's only, without
/// `detail`) read as [`Detail::Sql`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EventWire")]
pub struct Event {
    pub session_id: u64,
    /// 1, 2, ... within the session.
    pub seq: u64,
    pub at_ms: u64,
    pub verdict: Action,
    pub rule: String,
    /// From forwarding to the upstream's completion.
    pub duration_us: u64,
    /// How many values were masked; never the values themselves.
    pub masked: u64,
    pub error: Option<String>,
    /// For a held command: the approval it waited for and how that ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Box<ApprovalRecord>>,
    #[serde(flatten)]
    pub detail: Detail,
}

/// What a protocol adds to an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "detail", rename_all = "snake_case")]
pub enum Detail {
    Sql(SqlDetail),
    /// An SSH request (exec, shell, subsystem, forward...) on one channel.
    Ssh(SshDetail),
    /// A chunk of a channel's recorded data, or a window resize.
    Output(OutputDetail),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlDetail {
    /// The protocol step that carried it.
    pub step: SqlStep,
    pub kind: SqlKind,
    /// The SQL, with literals replaced by `?` unless the policy keeps them.
    pub sql: String,
    pub rows: Option<u64>,
}

/// The PostgreSQL message that carried a statement; `*_sent` events are written before a
/// statement is forwarded under `before-forward` durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlStep {
    #[serde(rename = "query")]
    Query,
    #[serde(rename = "parse")]
    Parse,
    #[serde(rename = "bind")]
    Bind,
    #[serde(rename = "execute")]
    Execute,
    #[serde(rename = "query:sent")]
    QuerySent,
    #[serde(rename = "execute:sent")]
    ExecuteSent,
}

impl SqlStep {
    pub fn as_str(self) -> &'static str {
        match self {
            SqlStep::Query => "query",
            SqlStep::Parse => "parse",
            SqlStep::Bind => "bind",
            SqlStep::Execute => "execute",
            SqlStep::QuerySent => "query:sent",
            SqlStep::ExecuteSent => "execute:sent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshDetail {
    pub channel: u32,
    pub request: SshRequestKind,
    /// The command as the agent sent it, the subsystem's name, the forward's destination.
    pub command: String,
    /// When the channel ended: the command's exit status, and the bytes each way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
}

/// What an SSH request asks of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshRequestKind {
    /// A command (`ssh host cmd`, legacy `scp -t/-f`, `rsync --server`, git over SSH).
    Exec,
    /// An interactive login shell (with or without a terminal).
    Shell,
    /// A subsystem (`sftp`, which OpenSSH 9's scp uses too).
    Subsystem,
    /// A forwarded TCP connection (`ssh -L`, `-D`, `-W`).
    DirectTcpip,
    /// A listening port on the host (`ssh -R`).
    TcpipForward,
    /// The agent's SSH agent offered to the host (`ssh -A`).
    AgentForward,
    X11,
    /// An environment variable set for the command (`SendEnv`, `SetEnv`).
    Env,
    /// An SFTP request that reads a path (open for reading, stat, list, readlink...).
    SftpRead,
    /// An SFTP request that writes a path (open for writing, remove, rename, mkdir, setstat...).
    SftpWrite,
}

/// One piece of a channel's recording. `data` is the bytes as UTF-8 (invalid sequences as
/// U+FFFD: a recording is for reading and replay, not a byte-exact copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDetail {
    pub channel: u32,
    pub stream: Stream,
    pub data: String,
    /// For a resize: the new size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// What the agent typed or sent.
    Input,
    Output,
    Error,
    Resize,
    /// The session's recording bound was reached: what follows is counted, not kept.
    Truncated,
    /// A line the agent typed in a shell (at Enter, backspaces applied): an aid for reading,
    /// not a record of what the shell ran.
    Typed,
}

/// How an event reads from the store, in either layout.
#[derive(Deserialize)]
struct EventWire {
    session_id: u64,
    seq: u64,
    at_ms: u64,
    verdict: Action,
    rule: String,
    duration_us: u64,
    masked: u64,
    error: Option<String>,
    #[serde(default)]
    approval: Option<Box<ApprovalRecord>>,
    #[serde(flatten)]
    detail: DetailWire,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DetailWire {
    Tagged(Detail),
    /// Before `detail` was written: every event was PostgreSQL's.
    Untagged(SqlDetail),
}

impl From<EventWire> for Event {
    fn from(w: EventWire) -> Event {
        Event {
            session_id: w.session_id,
            seq: w.seq,
            at_ms: w.at_ms,
            verdict: w.verdict,
            rule: w.rule,
            duration_us: w.duration_us,
            masked: w.masked,
            error: w.error,
            approval: w.approval,
            detail: match w.detail {
                DetailWire::Tagged(d) => d,
                DetailWire::Untagged(sql) => Detail::Sql(sql),
            },
        }
    }
}

/// What the audit keeps of one approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub id: u64,
    pub outcome: ApprovalOutcome,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalOutcome {
    Approved,
    Denied,
    Expired,
    Withdrawn,
}

impl ApprovalOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalOutcome::Approved => "approved",
            ApprovalOutcome::Denied => "denied",
            ApprovalOutcome::Expired => "expired",
            ApprovalOutcome::Withdrawn => "withdrawn",
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as stores written before events had details hold it (flat SQL fields, the
    /// chain's `prev` appended): it reads as an SQL event, and writes back in the new layout.
    #[test]
    fn events_stored_before_details_still_read() {
        let old = r#"{"session_id":7,"seq":2,"at_ms":1700000000000,"step":"query:sent","kind":"unparsed","sql":"(12 bytes, not kept)","verdict":"deny","rule":"unparsed","duration_us":0,"rows":null,"masked":0,"error":null,"approval":{"id":3,"outcome":"expired","by":null,"by_uid":null,"note":null,"waited_ms":120000},"prev":"00"}"#;
        let e: Event = serde_json::from_str(old).unwrap();
        assert_eq!((e.session_id, e.seq, e.verdict), (7, 2, Action::Deny));
        assert_eq!(
            e.detail,
            Detail::Sql(SqlDetail {
                step: SqlStep::QuerySent,
                kind: SqlKind::UNPARSED,
                sql: "(12 bytes, not kept)".into(),
                rows: None,
            })
        );
        assert_eq!(
            e.approval.as_ref().map(|a| a.outcome),
            Some(ApprovalOutcome::Expired)
        );
        let new = serde_json::to_value(&e).unwrap();
        assert_eq!(new["detail"], "sql");
        // The SQL fields stay where readers of the old layout look for them.
        assert_eq!(
            (new["step"].as_str(), new["kind"].as_str()),
            (Some("query:sent"), Some("unparsed"))
        );
        assert_eq!(serde_json::from_value::<Event>(new).unwrap(), e);
        // A kind or step no version wrote is an error, not a guess.
        assert!(serde_json::from_str::<Event>(&old.replace("query:sent", "shout")).is_err());
    }
}
