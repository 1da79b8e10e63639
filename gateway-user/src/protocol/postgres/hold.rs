//! A held statement: the session files it with the approval broker and waits, reading on from
//! the agent meanwhile (only to notice it leave; what it sends waits its turn), and turns the
//! decision into the judgement the relay then carries out: forward the statement, or refuse it
//! with the approver's reason.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::{
    codec::{backend::ErrorFields, frame::MAX_AGENT_MESSAGE},
    judge::{Judged, POLICY_DENIED},
    relay::Ctx,
};
use crate::{
    approval::{Ask, Decision},
    audit::ApprovalRecord,
};

/// How a hold ended, as the relay acts on it.
pub enum Held {
    /// The judgement to carry out now: no refusal if approved, the approver's refusal if not.
    Decided(Arc<Judged>),
    /// The agent left while waiting; the request is withdrawn, the judgement is for the audit.
    AgentLeft(Arc<Judged>),
}

pub async fn wait<R>(
    ctx: &Ctx,
    judged: &Arc<Judged>,
    sql: &str,
    agent: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Held>
where
    R: AsyncRead + Unpin,
{
    let terms = judged.hold.expect("a hold has its terms");
    let mut waiting = ctx.approvals.ask(Ask {
        session_id: ctx.session_id,
        policy: ctx.policy.clone(),
        target: ctx.target_name.clone(),
        protocol: "postgres",
        agent: ctx.agent.clone(),
        subject: ctx.who.subject.clone(),
        command: sql.to_owned(),
        rule: judged.rule.clone(),
        timeout: terms.timeout,
        scope: terms.scope,
    });
    tracing::info!(
        session.id = ctx.session_id,
        approval.id = waiting.request.id,
        rule = %judged.rule,
        "statement held for approval"
    );
    let started = std::time::Instant::now();
    let decision = loop {
        tokio::select! {
            d = waiting.decision() => break d,
            // The agent's cancel (psql's Ctrl-C) withdraws the request, answered as PostgreSQL
            // answers a cancelled statement.
            () = ctx.cancelled.notified() => {
                let id = waiting.request.id;
                drop(waiting);
                let mut record = record(id, &Decision::Withdrawn, started);
                record.note = Some("cancelled by the agent".into());
                let refusal = ErrorFields::error("57014", "canceling statement due to user request")
                    .with_detail(format!("gatewayd: it was waiting for approval {id} and was not run."));
                return Ok(Held::Decided(decided(judged, Some(refusal), record)));
            }
            // What the agent pipelines meanwhile waits in `buf`, up to a bound; past it the
            // session stops reading (and so stops noticing a departure) until the decision.
            n = agent.read_buf(buf), if buf.len() < MAX_AGENT_MESSAGE => {
                if n? == 0 {
                    let id = waiting.request.id;
                    drop(waiting);
                    let record = record(id, &Decision::Withdrawn, started);
                    return Ok(Held::AgentLeft(decided(judged, None, record)));
                }
            }
        }
    };
    let id = waiting.request.id;
    let record = record(id, &decision, started);
    let refusal = match &decision {
        Decision::Approved { .. } => None,
        Decision::Denied { by, reason } => Some(
            ErrorFields::error(
                POLICY_DENIED,
                format!(
                    "gatewayd: {} denied this statement (approval {id}, rule {}): {reason}",
                    by.user, judged.rule
                ),
            )
            .with_detail("It was not run."),
        ),
        Decision::Expired => Some(
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
        Decision::Withdrawn => judged.refusal.clone(),
    };
    Ok(Held::Decided(decided(judged, refusal, record)))
}

fn decided(judged: &Judged, refusal: Option<ErrorFields>, record: ApprovalRecord) -> Arc<Judged> {
    Arc::new(Judged {
        refusal,
        approval: Some(record),
        ..judged.clone()
    })
}

fn record(id: u64, decision: &Decision, started: std::time::Instant) -> ApprovalRecord {
    let waited_ms = started.elapsed().as_millis() as u64;
    let (outcome, by, note, covered_by) = match decision {
        Decision::Approved {
            by,
            note,
            covered_by,
        } => ("approved", Some(by), note.clone(), *covered_by),
        Decision::Denied { by, reason } => ("denied", Some(by), Some(reason.clone()), None),
        Decision::Expired => ("expired", None, None, None),
        Decision::Withdrawn => ("withdrawn", None, None, None),
    };
    ApprovalRecord {
        id,
        outcome: outcome.into(),
        by: by.map(|b| b.user.clone()),
        by_uid: by.map(|b| b.uid),
        note,
        waited_ms,
        covered_by,
    }
}
