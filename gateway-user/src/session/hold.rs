//! A held command, for every protocol: filed with the approval broker under the session's
//! identity, then waited on until an approver decides, the rule's timeout passes (a deny), the
//! agent cancels, or the agent leaves (the request is withdrawn). The result carries the
//! approval's audit record; each protocol turns the decision into its own wire answer.

use std::{future::Future, time::Duration};

use super::Session;
use crate::{
    approval::{Ask, Decision, Scope},
    audit::{ApprovalOutcome, ApprovalRecord},
    rules::DEFAULT_HOLD_SECS,
};

/// How long a hold waits and how far an approval reaches, from the rule that held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldTerms {
    pub timeout: Duration,
    pub scope: Scope,
}

impl HoldTerms {
    /// From a hold rule's `timeout_secs` and `approval` (defaults: [`DEFAULT_HOLD_SECS`],
    /// once).
    pub fn of_rule(timeout_secs: Option<u64>, approval: Option<Scope>) -> HoldTerms {
        HoldTerms {
            timeout: Duration::from_secs(timeout_secs.unwrap_or(DEFAULT_HOLD_SECS)),
            scope: approval.unwrap_or_default(),
        }
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        approval::{Approver, Broker},
        audit::AuditStore,
        session::Admitted,
        target::Protocol,
    };

    fn session(dir: &std::path::Path) -> Session {
        Session::new(
            Admitted {
                id: 9,
                policy: "p".into(),
                target: "t".into(),
                protocol: Protocol::Tcp,
                governed_cgroup_id: 1,
                agent: None,
                reach: Arc::new(crate::session::Nowhere),
            },
            AuditStore::open(dir).unwrap(),
            Arc::new(Broker::default()),
        )
    }

    fn request(secs: u64) -> HoldRequest {
        HoldRequest {
            command: "rm -rf /srv/x".into(),
            command_redacted: "rm ? ?".into(),
            rule: "hold-rm".into(),
            terms: HoldTerms {
                timeout: Duration::from_secs(secs),
                scope: Scope::Once,
            },
        }
    }

    #[tokio::test]
    async fn every_way_a_hold_ends() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(dir.path());
        let never = || std::future::pending::<()>();
        let stays = || std::future::pending::<std::io::Result<()>>();

        // An approver decides: the request approvers saw is the session's, the record says who.
        let approve = async {
            loop {
                if let Some(r) = s.approvals.pending().first() {
                    assert_eq!((r.session_id, r.protocol.as_str()), (9, "tcp"));
                    assert_eq!(
                        (r.command.as_str(), r.rule.as_str()),
                        ("rm -rf /srv/x", "hold-rm")
                    );
                    let by = Approver {
                        uid: 1000,
                        user: "ana".into(),
                    };
                    let decision = Decision::Approved {
                        by,
                        note: Some("ok".into()),
                        covered_by: None,
                    };
                    s.approvals.decide(r.id, decision).unwrap();
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        let (held, ()) = tokio::join!(hold(&s, request(60), never(), stays()), approve);
        let held = held.unwrap();
        assert!(matches!(
            held.end,
            HoldEnd::Decided(Decision::Approved { .. })
        ));
        assert_eq!(held.record.outcome, ApprovalOutcome::Approved);
        assert_eq!(
            (held.record.by.as_deref(), held.record.by_uid),
            (Some("ana"), Some(1000))
        );

        // The agent cancels: withdrawn, and the record says so.
        let held = hold(&s, request(60), async {}, stays()).await.unwrap();
        assert!(matches!(held.end, HoldEnd::Cancelled));
        assert_eq!(held.record.outcome, ApprovalOutcome::Withdrawn);
        assert_eq!(held.record.note.as_deref(), Some("cancelled by the agent"));
        assert!(s.approvals.pending().is_empty(), "withdrawn from approvers");

        // The agent leaves, or its connection fails.
        let held = hold(&s, request(60), never(), async { Ok(()) })
            .await
            .unwrap();
        assert!(matches!(held.end, HoldEnd::AgentLeft));
        let failed = hold(&s, request(60), never(), async {
            Err(std::io::ErrorKind::ConnectionReset.into())
        })
        .await;
        assert!(failed.is_err());
        assert!(s.approvals.pending().is_empty());

        // Nobody decides within the rule's timeout: a deny.
        let held = hold(&s, request(1), never(), stays()).await.unwrap();
        assert!(matches!(held.end, HoldEnd::Decided(Decision::Expired)));
        assert_eq!(held.record.outcome, ApprovalOutcome::Expired);
    }
}
