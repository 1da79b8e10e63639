//! One accepted connection, in the phases every protocol shares: the kernel's record of it
//! (origin), who the agent is (identity), whether its policy lets it reach that destination
//! (connection verdict), the audit's opening record, the upstream it may reach, the
//! protocol's handler serving it, and the closing record. Everything protocol-specific is the
//! handler's ([`crate::session::Handler`]).

use std::{
    net::{IpAddr, SocketAddr},
    panic::AssertUnwindSafe,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use futures_util::FutureExt as _;
use tokio::net::TcpStream;

use crate::{
    audit::{SessionEnd, SessionRecord, VerdictKind, now_ms},
    identity,
    kernel::origins::destination,
    policy::{Denial, Host, Verdict, decide},
    session::{
        Admitted, Handler, Phase, Reach, Reached, Session, SessionError, Source, Upstream,
        handler::reset,
    },
};

use super::state::State;

pub async fn handle(state: &Arc<State>, agent: TcpStream, peer: SocketAddr) {
    state.active_sessions.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let record = serve(state, agent, peer).await;
    state.active_sessions.fetch_sub(1, Ordering::Relaxed);
    let agent = record.agent.as_ref();
    tracing::info!(
        session.id = record.id,
        agent.pid = agent.map(|a| a.pid),
        agent.uid = agent.map(|a| a.uid),
        agent.cgroup = agent.and_then(|a| a.cgroup.as_deref()),
        agent.exe = agent.and_then(|a| a.exe.as_deref()),
        target.name = record.target.as_deref(),
        target.addr = record.destination.as_deref(),
        policy.name = record.policy.as_deref(),
        policy.rule = %record.rule,
        verdict = ?record.verdict,
        bytes.up = record.bytes_up,
        bytes.down = record.bytes_down,
        end = ?record.end,
        duration_ms = started.elapsed().as_millis() as u64,
        "session complete"
    );
    // Durable before the session counts as over: a kill -9 right after must not lose how it
    // ended. Concurrent sessions share the flush (group commit).
    if let Err(e) = state.audit.put_durable(&record).await {
        tracing::error!(session.id = record.id, error = %e, "audit write failed");
    }
}

/// Runs the phases and returns the session's final record. The opening record is written
/// before any byte reaches the upstream.
async fn serve(state: &Arc<State>, agent: TcpStream, peer: SocketAddr) -> SessionRecord {
    let id = state.audit.next_id().unwrap_or_else(|e| {
        tracing::error!(error = %e, "audit id");
        0
    });
    // Origin: the kernel's record of where the agent meant to go, bound to this socket.
    let origin = state.origins.take(&agent);
    // Identity: what /proc says of the process, read off the async workers.
    let who = match &origin {
        Some(o) => identity::capture_off_workers(*o).await,
        None => None,
    };
    let mut record = SessionRecord {
        id,
        started_at_ms: now_ms(),
        ended_at_ms: None,
        agent: who,
        peer: peer.to_string(),
        policy: None,
        destination: origin.as_ref().map(|o| destination(o).to_string()),
        target: None,
        protocol: None,
        verdict: VerdictKind::Deny,
        rule: String::new(),
        bytes_up: 0,
        bytes_down: 0,
        end: None,
        token: None,
    };
    let Some(origin) = origin else {
        return refused(record, &agent, &Verdict::Deny(Denial::UnknownOrigin));
    };
    // Connection verdict: the policy pinned to the agent's cgroup, for this destination.
    let dst = destination(&origin);
    let policy = state
        .policies()
        .by_cgroup
        .get(&origin.governed_cgroup_id)
        .cloned();
    record.policy = policy.as_ref().map(|p| p.name.clone());
    let verdict = decide(policy.as_deref(), &state.resolved(), dst);
    let (Verdict::Allow { target, protocol }, Some(policy)) = (&verdict, &policy) else {
        return refused(record, &agent, &verdict);
    };
    let Some(target) = policy.targets.iter().find(|t| &t.name == target) else {
        return refused(record, &agent, &Verdict::Deny(Denial::NoTarget));
    };
    record.rule = verdict.rule();
    record.verdict = VerdictKind::Allow;
    record.target = Some(target.name.clone());
    record.protocol = Some(*protocol);
    let handler = state.handlers.for_target(&target.kind);
    // Opening record: the audit must know of the session before the upstream sees a byte;
    // an audit failure refuses the session rather than let it run unrecorded.
    if let Err(e) = state.audit.put_durable(&record).await {
        tracing::error!(session.id = id, error = %e, "audit unavailable; refusing");
        // The verdict and rule stay as the opening record (which may have reached the store)
        // has them: they are under its hash. How it ended says why it did not run.
        let why = SessionError::audit(Phase::Open, e);
        handler.refuse(agent, &why).await;
        return ended(record, Err(why));
    }
    let session = Session::new(
        Admitted {
            id,
            policy: policy.name.clone(),
            target: target.name.clone(),
            protocol: *protocol,
            governed_cgroup_id: origin.governed_cgroup_id,
            agent: record.agent.clone(),
            reach: Arc::new(PolicyReach {
                state: state.clone(),
                cgroup: origin.governed_cgroup_id,
            }),
        },
        state.audit.clone(),
        state.approvals.clone(),
    );
    let upstream = upstream(state, &target.destination.host, dst);
    let result = run(handler.as_ref(), &session, agent, upstream).await;
    // Approvals scoped to this session end with it, whatever its protocol.
    session.approvals.session_ended(id);
    record.token = session.token().cloned();
    record.bytes_up = session.bytes_up.load(Ordering::Relaxed);
    record.bytes_down = session.bytes_down.load(Ordering::Relaxed);
    // Closing record: the session's events are in the store before its end is, and the end's
    // flush takes them to disk with it.
    if session.has_events()
        && let Err(e) = state.audit.settle(false).await
    {
        tracing::error!(session.id = id, error = %e, "audit events not written");
    }
    ended(record, result)
}

/// The agent's connection policy as a [`Reach`]: the policy pinned to its cgroup and the
/// names resolved when asked, not when the session began.
struct PolicyReach {
    state: Arc<State>,
    cgroup: u64,
}

impl Reach for PolicyReach {
    fn target_at(&self, dst: SocketAddr) -> Option<Reached> {
        let policy = self.state.policies().by_cgroup.get(&self.cgroup).cloned()?;
        let Verdict::Allow { target, protocol } =
            decide(Some(&policy), &self.state.resolved(), dst)
        else {
            return None;
        };
        let t = policy.targets.iter().find(|t| t.name == target)?;
        let one_host = match &t.destination.host {
            Host::Name(_) => true,
            Host::Net(net) => net.prefix_len() == net.max_prefix_len(),
        };
        Some(Reached {
            target,
            protocol,
            one_host,
        })
    }

    fn addresses(&self, name: &str) -> Option<Vec<IpAddr>> {
        let policy = self.state.policies().by_cgroup.get(&self.cgroup).cloned()?;
        let named =
            |t: &&crate::policy::Target| matches!(&t.destination.host, Host::Name(n) if n == name);
        policy.targets.iter().find(named)?;
        self.state.resolved().get(name).cloned()
    }
}

/// Upstream: the address the agent dialled, checked by the verdict; certificates and host
/// keys are checked against the name the policy gives, or the address.
fn upstream(state: &State, host: &Host, dst: SocketAddr) -> Upstream {
    Upstream {
        addr: dst,
        timeout: state.config.upstream_connect_timeout(),
        server_name: match host {
            Host::Name(n) => n.clone(),
            Host::Net(_) => dst.ip().to_string(),
        },
    }
}

/// Serve: the handler, with a panic in it caught, so that it ends this session alone, as an
/// internal failure with its closing record, rather than the task and its record with it.
async fn run(
    handler: &(dyn Handler + '_),
    session: &Session,
    agent: TcpStream,
    upstream: Upstream,
) -> Result<(), SessionError> {
    // Polled in place (the handler borrows the session, so it cannot move to a task of its
    // own); on a panic its state is dropped, never polled again, so no broken invariant of it
    // can be observed.
    match AssertUnwindSafe(handler.serve(session, agent, upstream))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(payload) => {
            let what = crate::offload::panic_message(payload.as_ref());
            tracing::error!(session.id = session.admitted.id, panic = %what, "handler panicked");
            Err(SessionError::new(Source::Internal, Phase::Serve, what))
        }
    }
}

fn ended(mut record: SessionRecord, result: Result<(), SessionError>) -> SessionRecord {
    record.end = Some(match result {
        Ok(()) => SessionEnd::Closed,
        Err(e) => e.end(),
    });
    record.ended_at_ms = Some(now_ms());
    record
}

fn refused(mut record: SessionRecord, agent: &TcpStream, verdict: &Verdict) -> SessionRecord {
    reset(agent);
    record.rule = verdict.rule();
    record.end = Some(SessionEnd::Refused);
    record.ended_at_ms = Some(now_ms());
    record
}
