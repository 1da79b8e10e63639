//! A held statement: the session files it with the approval broker and waits, reading on from
//! the agent meanwhile (only to notice it leave; what it sends waits its turn), and turns the
//! decision into the judgement the relay then carries out: forward the statement, or refuse it
//! with the approver's reason.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::Ctx;
use crate::protocol::postgres::{
    codec::backend::ErrorFields,
    judge::{Judged, POLICY_DENIED},
};
use crate::{
    approval::Decision,
    audit::ApprovalRecord,
    session::hold::{HoldEnd, HoldRequest, hold},
};

/// How a hold ended, as the relay acts on it.
pub enum Held {
    /// The judgement to carry out now: no refusal if approved, the approver's refusal if not.
    Decided(Arc<Judged>),
    /// The agent left while waiting; the request is withdrawn, the judgement is for the audit.
    AgentLeft(Arc<Judged>),
}

pub async fn wait<R>(
    ctx: &Ctx<'_>,
    judged: &Arc<Judged>,
    sql: &str,
    agent: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Held>
where
    R: AsyncRead + Unpin,
{
    let terms = judged.hold.expect("a hold has its terms");
    // Listening for the agent's cancel before the request is filed, and across the whole wait:
    // a CancelRequest is announced once, to whoever listens at that moment.
    let cancelled = ctx.cancelled.notified();
    tokio::pin!(cancelled);
    cancelled.as_mut().enable();
    // What the agent pipelines meanwhile waits in `buf`, up to what a session may hold
    // without a lease on the memory budget; past it the session stops reading (and so stops
    // noticing a departure) until the decision.
    let left = async {
        loop {
            if buf.len() >= crate::memory::FREE_MESSAGE {
                std::future::pending::<()>().await;
            }
            if agent.read_buf(buf).await? == 0 {
                return Ok(());
            }
        }
    };
    let request = HoldRequest {
        command: sql.to_owned(),
        command_redacted: judged
            .statements
            .iter()
            .map(|(_, text)| text.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        rule: judged.rule.clone(),
        terms,
    };
    let held = hold(ctx.session, request, cancelled, left).await?;
    let id = held.id;
    let refusal = match &held.end {
        HoldEnd::AgentLeft => return Ok(Held::AgentLeft(decided(judged, None, held.record))),
        // The agent's cancel (psql's Ctrl-C) withdraws the request, answered as PostgreSQL
        // answers a cancelled statement.
        HoldEnd::Cancelled => Some(
            ErrorFields::error("57014", "canceling statement due to user request").with_detail(
                format!("gatewayd: it was waiting for approval {id} and was not run."),
            ),
        ),
        HoldEnd::Decided(Decision::Approved { .. }) => None,
        HoldEnd::Decided(Decision::Denied { by, reason }) => Some(
            ErrorFields::error(
                POLICY_DENIED,
                format!(
                    "gatewayd: {} denied this statement (approval {id}, rule {}): {reason}",
                    by.user, judged.rule
                ),
            )
            .with_detail("It was not run."),
        ),
        HoldEnd::Decided(Decision::Expired) => Some(
            ErrorFields::error(
                POLICY_DENIED,
                format!(
                    "gatewayd: no approver decided within {}s (approval {id}, rule {})",
                    terms.timeout.as_secs(),
                    judged.rule
                ),
            )
            .with_detail("It was not run: an unanswered hold counts as a deny."),
        ),
        HoldEnd::Decided(Decision::Withdrawn) => judged.refusal.clone(),
    };
    Ok(Held::Decided(decided(judged, refusal, held.record)))
}

fn decided(judged: &Judged, refusal: Option<ErrorFields>, record: ApprovalRecord) -> Arc<Judged> {
    Arc::new(Judged {
        refusal,
        approval: Some(record),
        ..judged.clone()
    })
}

/// A held prepared statement as its approver reads it: the SQL, then the values its Bind gave
/// the parameters (text values quoted, binary ones by length), since what `$1` is decides what
/// the statement does.
pub fn with_parameters(sql: &str, bind: &[u8]) -> String {
    match bind_parameters(bind) {
        Some(values) if !values.is_empty() => {
            let shown: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, v)| format!("${} = {v}", i + 1))
                .collect();
            format!("{sql}\n-- parameters: {}", shown.join(", "))
        }
        _ => sql.to_owned(),
    }
}

/// The parameter values of a Bind body, for display; None if it is malformed (the upstream
/// will say so).
fn bind_parameters(body: &[u8]) -> Option<Vec<String>> {
    let mut rest = body;
    for _ in 0..2 {
        let end = rest.iter().position(|&b| b == 0)?;
        rest = &rest[end + 1..];
    }
    let take = |rest: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (head, tail) = rest.split_at_checked(n)?;
        *rest = tail;
        Some(head.to_vec())
    };
    let i16_at = |rest: &mut &[u8]| -> Option<i16> {
        Some(i16::from_be_bytes(take(rest, 2)?.try_into().ok()?))
    };
    let formats: Vec<i16> = (0..i16_at(&mut rest)?)
        .map(|_| i16_at(&mut rest))
        .collect::<Option<_>>()?;
    let count = i16_at(&mut rest)?;
    let mut values = Vec::new();
    for i in 0..count as usize {
        let len = i32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?);
        let binary = match formats.as_slice() {
            [] => false,
            [one] => *one == 1,
            many => many.get(i).copied() == Some(1),
        };
        values.push(if len < 0 {
            "NULL".to_owned()
        } else {
            let raw = take(&mut rest, len as usize)?;
            let quoted = |t: &str| format!("'{}'", t.replace('\'', "''"));
            match std::str::from_utf8(&raw) {
                Ok(text) if !binary => quoted(text),
                // Text types are their UTF-8 bytes in binary format too.
                Ok(text) if !text.chars().any(char::is_control) => {
                    format!("{} (binary)", quoted(text))
                }
                _ => format!(
                    "0x{} (binary)",
                    raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            }
        });
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_shown_as_bound() {
        let mut body = BytesMut::new();
        postgres_protocol::message::frontend::bind(
            "p",
            "s",
            [0i16, 0, 1],
            [Some("o'k"), None::<&str>, Some("x")],
            |v, out| match v {
                Some(v) => {
                    out.extend_from_slice(v.as_bytes());
                    Ok(postgres_protocol::IsNull::No)
                }
                None => Ok(postgres_protocol::IsNull::Yes),
            },
            [0i16],
            &mut body,
        )
        .map_err(|_| ())
        .unwrap();
        // Skip the message tag and length the encoder writes.
        let shown = with_parameters("UPDATE t SET a = $1 WHERE b = $2 AND c = $3", &body[5..]);
        assert_eq!(
            shown,
            "UPDATE t SET a = $1 WHERE b = $2 AND c = $3\n-- parameters: $1 = 'o''k', $2 = NULL, $3 = 'x' (binary)"
        );
        assert_eq!(with_parameters("SELECT 1", b"garbage"), "SELECT 1");
    }
}
