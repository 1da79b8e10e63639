//! One accepted connection, from the kernel's record of it to the audit's last word.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use tokio::net::TcpStream;

use crate::{
    audit::{SessionEnd, SessionRecord, VerdictKind, now_ms},
    identity,
    kernel::origins::destination,
    policy::{Denial, Protocol, Verdict, decide},
    protocol::{
        postgres,
        tcp::{self, Side},
    },
};

use super::state::State;

pub async fn handle(state: &State, agent: TcpStream, peer: SocketAddr) {
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
    // Its statement events are in the store before its end is, and the end's flush takes
    // them to disk with it.
    if record.protocol == Some(Protocol::Postgres)
        && let Err(e) = state.audit.settle(false).await
    {
        tracing::error!(session.id = record.id, error = %e, "audit events not written");
    }
    // Durable before the session counts as over: a kill -9 right after must not lose how it
    // ended. Concurrent sessions share the flush (group commit).
    let written = state.audit.put_durable(&record).await;
    if let Err(e) = written {
        tracing::error!(session.id = record.id, error = %e, "audit write failed");
    }
}

/// Runs the session and returns its final record. The opening record is written before any
/// byte reaches the upstream.
async fn serve(state: &State, agent: TcpStream, peer: SocketAddr) -> SessionRecord {
    let id = state.audit.next_id().unwrap_or_else(|e| {
        tracing::error!(error = %e, "audit id");
        0
    });
    let origin = state.origins.take(&agent);
    let mut record = SessionRecord {
        id,
        started_at_ms: now_ms(),
        ended_at_ms: None,
        agent: origin.as_ref().map(identity::capture),
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
    let dst = destination(&origin);
    let policy = state
        .policies()
        .by_cgroup
        .get(&origin.governed_cgroup_id)
        .cloned();
    record.policy = policy.as_ref().map(|p| p.name.clone());
    let verdict = decide(policy.as_deref(), &state.resolved(), dst);
    let Verdict::Allow { target, protocol } = &verdict else {
        return refused(record, &agent, &verdict);
    };
    record.rule = verdict.rule();
    record.verdict = VerdictKind::Allow;
    record.target = Some(target.clone());
    record.protocol = Some(*protocol);
    let protocol = *protocol;
    // The audit must know of the session before the upstream sees a byte: an audit failure
    // refuses the session rather than let it run unrecorded.
    if let Err(e) = state.audit.put_durable(&record).await {
        tracing::error!(session.id = id, error = %e, "audit unavailable; refusing");
        // The verdict and rule stay as the opening record (which may have reached the store)
        // has them: they are under its hash. How it ended says why it did not run.
        if protocol == Protocol::Postgres {
            postgres::refuse_unrecorded(agent, &e.to_string()).await;
        } else {
            refuse(&agent);
        }
        record.end = Some(SessionEnd::AuditUnavailable(e.to_string()));
        record.ended_at_ms = Some(now_ms());
        return record;
    }
    let timeout = state.config.upstream_connect_timeout();
    match protocol {
        Protocol::Postgres => {
            let Some((pg, host)) = policy
                .as_ref()
                .and_then(|p| p.targets.iter().find(|t| &t.name == target))
                .and_then(|t| Some((t.postgres.clone()?, &t.destination.host)))
            else {
                unreachable!("a validated postgres target has its settings")
            };
            // Certificates are checked against the name the policy gives, or the address.
            let server_name = match host {
                crate::policy::Host::Name(n) => n.clone(),
                crate::policy::Host::Net(_) => dst.ip().to_string(),
            };
            let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
            let params = postgres::Params {
                policy: record.policy.clone().unwrap_or_default(),
                target_name: target.clone(),
                agent: record.agent.clone(),
                approvals: state.approvals.clone(),
                target: pg,
                audit: state.audit.clone(),
                session_id: id,
                cancels: &state.pg_cancels,
                governed_cgroup_id: origin.governed_cgroup_id,
                upstream_addr: dst,
                connect_timeout: timeout,
                server_name,
                bytes_up: &up,
                bytes_down: &down,
            };
            let _ = agent.set_nodelay(true);
            // PostgreSQL connects upstream itself, once the agent's startup is complete.
            let served = postgres::serve(params, agent).await;
            record.token = served.token;
            let outcome = served.outcome;
            record.bytes_up = up.load(Ordering::Relaxed);
            record.bytes_down = down.load(Ordering::Relaxed);
            record.end = Some(match outcome {
                postgres::Outcome::Closed | postgres::Outcome::Cancel => SessionEnd::Closed,
                postgres::Outcome::Agent(e) => SessionEnd::AgentError(e),
                postgres::Outcome::Upstream(e) => SessionEnd::UpstreamError(e),
                postgres::Outcome::UpstreamLogin(e) | postgres::Outcome::UpstreamUnreachable(e) => {
                    SessionEnd::UpstreamUnreachable(e)
                }
                postgres::Outcome::Audit(e) => SessionEnd::AuditUnavailable(e),
            });
        }
        Protocol::Tcp => {
            let upstream = match crate::protocol::connect_upstream(dst, timeout).await {
                Ok(s) => s,
                Err(why) => return unreachable(record, &agent, why),
            };
            let _ = agent.set_nodelay(true);
            let out = tcp::relay(agent, upstream).await;
            record.bytes_up = out.bytes_up;
            record.bytes_down = out.bytes_down;
            record.end = Some(match out.error {
                None => SessionEnd::Closed,
                Some((Side::Agent, e)) => SessionEnd::AgentError(e.to_string()),
                Some((Side::Upstream, e)) => SessionEnd::UpstreamError(e.to_string()),
            });
        }
    }
    record.ended_at_ms = Some(now_ms());
    record
}

fn unreachable(mut record: SessionRecord, agent: &TcpStream, why: String) -> SessionRecord {
    refuse(agent);
    record.end = Some(SessionEnd::UpstreamUnreachable(why));
    record.ended_at_ms = Some(now_ms());
    record
}

fn refused(mut record: SessionRecord, agent: &TcpStream, verdict: &Verdict) -> SessionRecord {
    refuse(agent);
    record.rule = verdict.rule();
    record.end = Some(SessionEnd::Refused);
    record.ended_at_ms = Some(now_ms());
    record
}

/// Plain TCP has no way to say why; a reset (not a clean close) at least tells the agent it
/// was refused rather than served an empty answer.
fn refuse(agent: &TcpStream) {
    let _ = socket2::SockRef::from(agent).set_linger(Some(std::time::Duration::ZERO));
}
