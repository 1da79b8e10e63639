//! A held command, for every protocol: filed with the approval broker under the session's
//! identity, then waited on until an approver decides, the rule's timeout passes (a deny), the
//! agent cancels, or the agent leaves (the request is withdrawn). The result carries the
//! approval's audit record; each protocol turns the decision into its own wire answer.

use std::{future::Future, time::Duration};

use super::Session;
use crate::{
    approval::{Ask, Decision, Scope},
    audit::{ApprovalOutcome, ApprovalRecord},
};

/// How long a hold waits and how far an approval reaches, from the rule that held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldTerms {
    pub timeout: Duration,
    pub scope: Scope,
}

/// What approvers are asked to decide.
pub struct HoldRequest {
    /// The exact command: approvers must see what they approve.
    pub command: String,
    /// The command as the audit keeps it, for those who may not see literal values.
    pub command_redacted: String,
    pub rule: String,
    pub terms: HoldTerms,
}

pub enum HoldEnd {
    Decided(Decision),
    /// The agent cancelled the command while it waited.
    Cancelled,
    /// The agent left while it waited.
    AgentLeft,
}

pub struct Held {
    pub id: u64,
    pub end: HoldEnd,
    /// For the command's audit event.
    pub record: ApprovalRecord,
}

/// Files `request` and waits. `cancelled` resolves when the agent cancels the command (it
/// must already be listening: a cancel announced before it listens is lost); `left` when the
/// agent's connection ends, or with the error that ended it.
pub async fn hold<C, L>(
    session: &Session,
    request: HoldRequest,
    cancelled: C,
    left: L,
) -> std::io::Result<Held>
where
    C: Future<Output = ()>,
    L: Future<Output = std::io::Result<()>>,
{
    let mut waiting = session.approvals.ask(Ask {
        session_id: session.admitted.id,
        policy: session.admitted.policy.clone(),
        target: session.admitted.target.clone(),
        protocol: session.admitted.protocol.as_str(),
        agent: session.admitted.agent.clone(),
        subject: session.token().map(|t| t.subject.clone()),
        command: request.command,
        command_redacted: request.command_redacted,
        rule: request.rule.clone(),
        timeout: request.terms.timeout,
        scope: request.terms.scope,
    });
    let id = waiting.request.id;
    tracing::info!(
        session.id = session.admitted.id,
        approval.id = id,
        rule = %request.rule,
        "command held for approval"
    );
    let started = std::time::Instant::now();
    tokio::pin!(cancelled, left);
    let end = tokio::select! {
        d = waiting.decision() => HoldEnd::Decided(d),
        () = &mut cancelled => HoldEnd::Cancelled,
        r = &mut left => {
            r?;
            HoldEnd::AgentLeft
        }
    };
    // Dropping the request before a decision withdraws it.
    drop(waiting);
    let record = record(id, &end, started.elapsed());
    Ok(Held { id, end, record })
}

fn record(id: u64, end: &HoldEnd, waited: Duration) -> ApprovalRecord {
    let withdrawn = (ApprovalOutcome::Withdrawn, None, None, None);
    let (outcome, by, note, covered_by) = match end {
        HoldEnd::Decided(Decision::Approved {
            by,
            note,
            covered_by,
        }) => (
            ApprovalOutcome::Approved,
            Some(by),
            note.clone(),
            *covered_by,
        ),
        HoldEnd::Decided(Decision::Denied { by, reason }) => (
            ApprovalOutcome::Denied,
            Some(by),
            Some(reason.clone()),
            None,
        ),
        HoldEnd::Decided(Decision::Expired) => (ApprovalOutcome::Expired, None, None, None),
        HoldEnd::Decided(Decision::Withdrawn) | HoldEnd::AgentLeft => withdrawn,
        HoldEnd::Cancelled => (
            ApprovalOutcome::Withdrawn,
            None,
            Some("cancelled by the agent".to_owned()),
            None,
        ),
    };
    ApprovalRecord {
        id,
        outcome,
        by: by.map(|b| b.user.clone()),
        by_uid: by.map(|b| b.uid),
        note,
        waited_ms: waited.as_millis() as u64,
        covered_by,
    }
}
