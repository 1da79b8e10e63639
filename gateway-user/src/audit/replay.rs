//! A session played back, and a session exported for other tools.
//!
//! Replay turns a record and its events into lines, each with the pause that preceded it in
//! the session (from the session's start to the first event, then between events, then to the
//! end), so that a player that sleeps those pauses shows the session at its own pace.
//! Export gives the record and event lines exactly as stored, chain hashes included: the
//! SHA-256 of each event line is the `prev` of the next one, so other tools can check them.

use std::time::Duration;

use super::{AuditError, AuditStore, Detail, Event, SessionEnd, SessionRecord};

/// One line of a replay and how long the session was quiet before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub pause: Duration,
    pub text: String,
}

/// The record's `show` form (record fields and `events`) split into its parts.
pub fn from_show(v: serde_json::Value) -> Result<(SessionRecord, Vec<Event>), String> {
    let events = serde_json::from_value(v.get("events").cloned().unwrap_or_default())
        .map_err(|e| format!("session events: {e}"))?;
    let record = serde_json::from_value(v).map_err(|e| format!("session record: {e}"))?;
    Ok((record, events))
}

/// The lines of a replay: a header, one per event (two when it has an error or approval), and
/// how the session ended.
pub fn steps(record: &SessionRecord, events: &[Event]) -> Vec<Step> {
    let start = record.started_at_ms;
    let offset = |at: u64| at.saturating_sub(start) as f64 / 1000.0;
    let mut out = vec![Step {
        pause: Duration::ZERO,
        text: header(record),
    }];
    let mut before = start;
    for e in events {
        // What the protocol's detail says: what carried the command, its count of results,
        // and the command itself.
        let (what, rows, command) = match &e.detail {
            Detail::Sql(d) => (
                format!("{}  {}", d.step.as_str(), d.kind.as_str()),
                d.rows,
                d.sql.clone(),
            ),
            Detail::Ssh(d) => (
                format!("ssh  {:?} #{}", d.request, d.channel).to_lowercase(),
                None,
                match d.exit_status {
                    Some(code) => format!("{}  (exit {code})", d.command),
                    None => d.command.clone(),
                },
            ),
            Detail::Output(d) => (
                format!("{:?} #{}", d.stream, d.channel).to_lowercase(),
                None,
                d.data.escape_debug().to_string(),
            ),
        };
        let mut text = format!(
            "+{:.3}s  #{}  {}  {} ({})  {:.1} ms",
            offset(e.at_ms),
            e.seq,
            what,
            e.verdict.as_str(),
            e.rule,
            e.duration_us as f64 / 1000.0
        );
        if let Some(rows) = rows {
            text.push_str(&format!("  rows {rows}"));
        }
        if e.masked > 0 {
            text.push_str(&format!("  masked {}", e.masked));
        }
        text.push_str(&format!("\n    {command}"));
        if let Some(err) = &e.error {
            text.push_str(&format!("\n    error: {err}"));
        }
        if let Some(a) = &e.approval {
            text.push_str(&format!("\n    approval #{} {}", a.id, a.outcome.as_str()));
            if let Some(by) = &a.by {
                text.push_str(&format!(" by {by}"));
            }
            if let Some(uid) = a.by_uid {
                text.push_str(&format!(" (uid {uid})"));
            }
            text.push_str(&format!(" after {} ms", a.waited_ms));
            if let Some(c) = a.covered_by {
                text.push_str(&format!(", covered by approval #{c}"));
            }
            if let Some(note) = &a.note {
                text.push_str(&format!(": {note}"));
            }
        }
        out.push(Step {
            pause: Duration::from_millis(e.at_ms.saturating_sub(before)),
            text,
        });
        before = before.max(e.at_ms);
    }
    let end = match &record.end {
        None => "still open".to_owned(),
        Some(SessionEnd::Refused) => "refused".into(),
        Some(SessionEnd::Closed) => "closed".into(),
        Some(SessionEnd::AgentError(e)) => format!("agent error: {e}"),
        Some(SessionEnd::UpstreamUnreachable(e)) => format!("upstream unreachable: {e}"),
        Some(SessionEnd::UpstreamError(e)) => format!("upstream error: {e}"),
        Some(SessionEnd::AuditUnavailable(e)) => format!("stopped, audit unavailable: {e}"),
        Some(SessionEnd::Interrupted) => "interrupted: the daemon stopped first".into(),
        Some(SessionEnd::Internal(e)) => format!("internal error: {e}"),
    };
    let ended = record.ended_at_ms.unwrap_or(before);
    out.push(Step {
        pause: Duration::from_millis(ended.saturating_sub(before)),
        text: format!(
            "+{:.3}s  end: {end}  ({} bytes up, {} down, {} events)",
            offset(ended),
            record.bytes_up,
            record.bytes_down,
            events.len()
        ),
    });
    out
}

fn header(r: &SessionRecord) -> String {
    let started = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(r.started_at_ms),
    );
    let who = r.agent.as_ref().map_or("unknown agent".to_owned(), |a| {
        format!(
            "pid {} uid {} {} in {}",
            a.pid,
            a.uid,
            a.exe.as_deref().unwrap_or("-"),
            a.cgroup.as_deref().unwrap_or("-")
        )
    });
    let mut text = format!(
        "session {} at {started}: {who} -> {} ({}), policy {}, {:?} by {}",
        r.id,
        r.target.as_deref().unwrap_or("-"),
        r.destination.as_deref().unwrap_or("-"),
        r.policy.as_deref().unwrap_or("-"),
        r.verdict,
        r.rule
    );
    if let Some(t) = &r.token {
        text.push_str(&format!("; token {t:?}"));
    }
    text
}

impl AuditStore {
    /// The session's record and its event lines, as stored (chain hashes included).
    pub fn export(&self, id: u64) -> Result<Option<Vec<String>>, AuditError> {
        let Some(record) = self.h()?.sessions.get(id.to_be_bytes())? else {
            return Ok(None);
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut out = vec![text(&record)];
        for item in self.h()?.events.scan_prefix(id.to_be_bytes()) {
            let (_, v) = item?;
            out.extend(v.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(text));
        }
        Ok(Some(out))
    }
}
