//! Human approval of held commands, for every protocol. A session that meets a `hold` verdict
//! asks the [`Broker`] and waits; approvers list, approve and deny through the admin API; the
//! decision (or the rule's timeout, or the agent leaving) ends the wait. Every request and
//! decision is also published, for `gatewayctl approvals watch` and the webhook.
//!
//! The broker knows nothing of PostgreSQL: a request carries the command as text and who asked.
//! Approvals can cover more than the one command (the rule's [`Scope`]): the same command text
//! again in the same session, or from the same cgroup to the same target for a while.

pub mod webhook;

use std::{
    collections::BTreeMap,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use crate::audit::{Agent, now_ms};

/// How far one approval reaches, as a hold rule's `approval` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum Scope {
    /// This command, this time.
    #[default]
    Once,
    /// The same command text for the rest of the session.
    Session,
    /// The same command text from the same cgroup to the same target, for this long.
    Window(Duration),
}

impl TryFrom<String> for Scope {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "once" => Ok(Scope::Once),
            "session" => Ok(Scope::Session),
            window => humantime::parse_duration(window)
                .map(Scope::Window)
                .map_err(|e| {
                    format!("approval must be \"once\", \"session\" or a duration such as \"15m\": {window:?}: {e}")
                }),
        }
    }
}

/// What a session asks approvers to decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub session_id: u64,
    pub policy: String,
    pub target: String,
    pub protocol: String,
    /// The agent as the kernel attested it at connect.
    pub agent: Option<Agent>,
    /// The subject of the agent's verified token, if it presented one.
    pub subject: Option<String>,
    /// The exact command: approvers must see what they approve.
    pub command: String,
    /// The command as the audit keeps it (literals hidden unless the policy keeps them): what
    /// read-only auditors and the webhook get.
    #[serde(default)]
    pub command_redacted: String,
    pub rule: String,
    pub requested_at_ms: u64,
    pub expires_at_ms: u64,
}

impl Request {
    /// This request as someone who may not see literal values reads it.
    pub fn redacted(mut self) -> Request {
        self.command = std::mem::take(&mut self.command_redacted);
        self
    }
}

/// Who decided, from the admin socket's peer credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approver {
    pub uid: u32,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    Approved {
        by: Approver,
        note: Option<String>,
        /// Set when an earlier approval covered this command (its request id).
        covered_by: Option<u64>,
    },
    Denied {
        by: Approver,
        reason: String,
    },
    /// Nobody decided within the rule's timeout: a deny.
    Expired,
    /// The agent left while waiting.
    Withdrawn,
}

impl Event {
    /// The event with its request [`Request::redacted`].
    pub fn redacted(self) -> Event {
        match self {
            Event::Pending { request } => Event::Pending {
                request: request.redacted(),
            },
            Event::Decided {
                request,
                decision,
                waited_ms,
            } => Event::Decided {
                request: request.redacted(),
                decision,
                waited_ms,
            },
        }
    }
}

impl Decision {
    pub fn approved(&self) -> bool {
        matches!(self, Decision::Approved { .. })
    }
}

/// Published for watchers and the webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Pending {
        request: Request,
    },
    Decided {
        request: Request,
        decision: Decision,
        waited_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    #[error("no pending approval {0}")]
    NotFound(u64),
    #[error("uid {0} is the agent's own uid: an agent cannot approve its own request")]
    OwnRequest(u32),
}

/// What a session knows when it holds a command; the broker adds id and times.
pub struct Ask {
    pub session_id: u64,
    pub policy: String,
    pub target: String,
    pub protocol: &'static str,
    pub agent: Option<Agent>,
    pub subject: Option<String>,
    pub command: String,
    pub command_redacted: String,
    pub rule: String,
    pub timeout: Duration,
    pub scope: Scope,
}

struct Pending {
    request: Request,
    scope: Scope,
    started: Instant,
    answer: oneshot::Sender<Decision>,
}

/// An approval that covers later commands too.
struct Grant {
    request_id: u64,
    by: Approver,
    /// The session it is limited to, for [`Scope::Session`].
    session_id: Option<u64>,
    cgroup: Option<String>,
    target: String,
    command: String,
    until: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    pending: BTreeMap<u64, Pending>,
    grants: Vec<Grant>,
}

pub struct Broker {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    events: broadcast::Sender<Event>,
}

impl Default for Broker {
    fn default() -> Self {
        Broker {
            inner: Mutex::default(),
            // Ids restart with the daemon; the audit ties them to sessions.
            next_id: AtomicU64::new(1),
            events: broadcast::Sender::new(1024),
        }
    }
}

impl Broker {
    /// The broker's state, even if a thread panicked holding it: `Drop for Waiting` takes this
    /// lock, and a panic there while unwinding would abort the daemon.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a decision on `ask`. Dropping the future (the agent left) withdraws it.
    pub async fn hold(&self, ask: Ask) -> (Request, Decision) {
        let mut waiting = self.ask(ask);
        let decision = waiting.decision().await;
        (waiting.request.clone(), decision)
    }

    /// Files `ask` (or finds it covered by an earlier approval). The request is pending until
    /// [`Waiting::decision`] returns, or withdrawn when the [`Waiting`] is dropped first.
    pub fn ask(&self, ask: Ask) -> Waiting<'_> {
        let now = now_ms();
        let request = Request {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            session_id: ask.session_id,
            policy: ask.policy,
            target: ask.target,
            protocol: ask.protocol.into(),
            agent: ask.agent,
            subject: ask.subject,
            command: ask.command,
            command_redacted: ask.command_redacted,
            rule: ask.rule,
            requested_at_ms: now,
            expires_at_ms: now + ask.timeout.as_millis() as u64,
        };
        if let Some(covered) = self.covered(&request) {
            return Waiting {
                broker: self,
                request,
                state: Wait::Done(Some(covered)),
            };
        }
        let (answer, decided) = oneshot::channel();
        {
            let mut inner = self.lock();
            inner.pending.insert(
                request.id,
                Pending {
                    request: request.clone(),
                    scope: ask.scope,
                    started: Instant::now(),
                    answer,
                },
            );
        }
        let _ = self.events.send(Event::Pending {
            request: request.clone(),
        });
        Waiting {
            broker: self,
            request,
            state: Wait::Pending {
                decided,
                deadline: tokio::time::Instant::now() + ask.timeout,
            },
        }
    }

    /// Approves or denies a pending request on behalf of `by`.
    pub fn decide(&self, id: u64, decision: Decision) -> Result<Request, DecideError> {
        let by_uid = match &decision {
            Decision::Approved { by, .. } | Decision::Denied { by, .. } => Some(by.uid),
            _ => None,
        };
        {
            let inner = self.lock();
            let p = inner.pending.get(&id).ok_or(DecideError::NotFound(id))?;
            // An agent whose uid is unknown could be anyone's: only root decides for it.
            let agent_uid = p.request.agent.as_ref().map_or(0, |a| a.uid);
            if let Some(uid) = by_uid
                && agent_uid == uid
            {
                return Err(DecideError::OwnRequest(uid));
            }
        }
        self.finish(id, decision).ok_or(DecideError::NotFound(id))
    }

    pub fn pending(&self) -> Vec<Request> {
        let inner = self.lock();
        inner.pending.values().map(|p| p.request.clone()).collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Removes a pending request, answers its waiter, records a grant, publishes.
    fn finish(&self, id: u64, decision: Decision) -> Option<Request> {
        let p = {
            let mut inner = self.lock();
            let p = inner.pending.remove(&id)?;
            let cgroup = p.request.agent.as_ref().and_then(|a| a.cgroup.clone());
            // A window covers one cgroup: without a known one it covers nothing more.
            let grantable = match p.scope {
                Scope::Once => false,
                Scope::Session => true,
                Scope::Window(_) => cgroup.is_some(),
            };
            if let Decision::Approved { by, .. } = &decision
                && grantable
            {
                let now = Instant::now();
                inner.grants.retain(|g| g.until.is_none_or(|u| u > now));
                inner.grants.push(Grant {
                    request_id: id,
                    by: by.clone(),
                    session_id: (p.scope == Scope::Session).then_some(p.request.session_id),
                    cgroup,
                    target: p.request.target.clone(),
                    command: p.request.command.clone(),
                    until: match p.scope {
                        Scope::Window(d) => Some(now + d),
                        _ => None,
                    },
                });
            }
            p
        };
        let waited_ms = p.started.elapsed().as_millis() as u64;
        let _ = p.answer.send(decision.clone());
        let _ = self.events.send(Event::Decided {
            request: p.request.clone(),
            decision,
            waited_ms,
        });
        Some(p.request)
    }

    fn covered(&self, r: &Request) -> Option<Decision> {
        let inner = self.lock();
        let now = Instant::now();
        let cgroup = r.agent.as_ref().and_then(|a| a.cgroup.as_ref());
        inner
            .grants
            .iter()
            .find(|g| {
                g.command == r.command
                    && g.target == r.target
                    && g.until.is_none_or(|u| u > now)
                    && match g.session_id {
                        Some(s) => s == r.session_id,
                        None => g.cgroup.as_ref() == cgroup,
                    }
            })
            .map(|g| Decision::Approved {
                by: g.by.clone(),
                note: None,
                covered_by: Some(g.request_id),
            })
    }

    /// Session-scoped grants end with their session.
    pub fn session_ended(&self, session_id: u64) {
        let mut inner = self.lock();
        inner.grants.retain(|g| g.session_id != Some(session_id));
    }
}

/// One filed request, until it is decided.
pub struct Waiting<'a> {
    broker: &'a Broker,
    pub request: Request,
    state: Wait,
}

enum Wait {
    Pending {
        decided: oneshot::Receiver<Decision>,
        deadline: tokio::time::Instant,
    },
    Done(Option<Decision>),
}

impl Waiting<'_> {
    /// The decision; an expired deadline is [`Decision::Expired`]. Cancel-safe: the deadline
    /// stays where it was when this future is dropped and called again.
    pub async fn decision(&mut self) -> Decision {
        let decision = match &mut self.state {
            Wait::Done(d) => return d.clone().unwrap_or(Decision::Expired),
            Wait::Pending { decided, deadline } => {
                match tokio::time::timeout_at(*deadline, &mut *decided).await {
                    Ok(d) => d.unwrap_or(Decision::Expired),
                    // A deny, published as such, unless a decision just beat the deadline.
                    Err(_) => match self.broker.finish(self.request.id, Decision::Expired) {
                        Some(_) => Decision::Expired,
                        None => decided.await.unwrap_or(Decision::Expired),
                    },
                }
            }
        };
        self.state = Wait::Done(Some(decision.clone()));
        decision
    }
}

impl Drop for Waiting<'_> {
    /// Dropped before a decision: the agent left, the request is withdrawn.
    fn drop(&mut self) {
        if matches!(self.state, Wait::Pending { .. }) {
            self.broker.finish(self.request.id, Decision::Withdrawn);
        }
    }
}

#[cfg(test)]
mod tests;
