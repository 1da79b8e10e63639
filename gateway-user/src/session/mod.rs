//! The protocol-independent core of a session. The daemon admits a connection and builds a
//! [`Session`] (who the agent is, where it meant to go, what decided); a protocol's
//! [`Handler`] serves it, judging commands with [`crate::rules`], holding them with [`hold`],
//! recording them as typed [`crate::audit::Event`]s, and reaching the upstream with the
//! daemon's own [`credential`] and [`tls`] settings. Failures are one [`SessionError`].

pub mod credential;
pub mod error;
pub mod handler;
pub mod hold;
pub mod tls;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

pub use error::{Phase, SessionError, Source};
pub use handler::{BoxFuture, HANDSHAKE_STEP, Handler, Upstream};

use crate::{
    approval::Broker,
    audit::{AuditError, AuditStore, Detail, Event, now_ms},
    identity::{Agent, TokenIdentity, Who},
    rules::Action,
    target::Protocol,
};

/// Everything a handler, the audit and the approval broker need to know of one session.
pub struct Session {
    /// Who the agent is and where it meant to go, as the daemon admitted it.
    pub admitted: Admitted,
    pub audit: AuditStore,
    pub approvals: Arc<Broker>,
    /// Bytes from the agent to the upstream, and back, as the handler forwarded them.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Set once, when the protocol carries a token and it verified.
    token: OnceLock<(TokenIdentity, Who)>,
    /// The last event's sequence number (a handler's halves may both write).
    seq: AtomicU64,
}

/// What the daemon's phases established before a handler runs.
pub struct Admitted {
    pub id: u64,
    pub policy: String,
    pub target: String,
    pub protocol: Protocol,
    /// The agent's governed cgroup (from the kernel's record): state that must not cross
    /// cgroups, such as cancel keys, is keyed on it.
    pub governed_cgroup_id: u64,
    /// The agent as the kernel attested it and /proc named it at accept.
    pub agent: Option<Agent>,
    /// The agent's connection policy, asked again for each connection a protocol carries
    /// inside this one (an SSH forward): it may reach only what it could dial itself.
    pub reach: Arc<dyn Reach>,
}

/// The agent's connection policy, asked again for each connection a protocol carries inside
/// this one (an SSH forward), as of now: policies reload and names re-resolve while a
/// session runs.
pub trait Reach: Send + Sync {
    /// The target the agent's policy admits at `dst`, or `None` where it denies.
    fn target_at(&self, dst: SocketAddr) -> Option<Reached>;
    /// The addresses of a host name the agent's policy uses, as the daemon resolved them;
    /// `None` for any other name (the daemon looks up no name an agent makes up).
    fn addresses(&self, name: &str) -> Option<Vec<IpAddr>>;
}

/// A target the agent's policy admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    pub target: String,
    pub protocol: Protocol,
    /// Whether the target names one host (an address or a name), not a network.
    pub one_host: bool,
}

/// A [`Reach`] that admits nothing, for sessions that carry no other connection.
pub struct Nowhere;

impl Reach for Nowhere {
    fn target_at(&self, _: SocketAddr) -> Option<Reached> {
        None
    }

    fn addresses(&self, _: &str) -> Option<Vec<IpAddr>> {
        None
    }
}

impl Session {
    pub fn new(admitted: Admitted, audit: AuditStore, approvals: Arc<Broker>) -> Session {
        Session {
            admitted,
            audit,
            approvals,
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            token: OnceLock::new(),
            seq: AtomicU64::new(0),
        }
    }

    /// Records the agent's verified token; its subject and groups feed the rules from now on.
    pub fn set_token(&self, token: TokenIdentity) {
        let who = token.who();
        let _ = self.token.set((token, who));
    }

    pub fn token(&self) -> Option<&TokenIdentity> {
        self.token.get().map(|(t, _)| t)
    }

    /// The agent as rules match it: empty unless it presented a verified token.
    pub fn who(&self) -> &Who {
        static NOBODY: Who = Who {
            subject: None,
            groups: Vec::new(),
        };
        self.token.get().map_or(&NOBODY, |(_, w)| w)
    }

    /// A new event of this session, numbered next, with nothing measured yet.
    pub fn event(&self, verdict: Action, rule: &str, detail: Detail) -> Event {
        Event {
            session_id: self.admitted.id,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at_ms: now_ms(),
            verdict,
            rule: rule.to_owned(),
            duration_us: 0,
            masked: 0,
            error: None,
            approval: None,
            detail,
        }
    }

    /// Hands an event to the audit writer (no I/O on the caller's path).
    pub fn record(&self, event: Event) -> Result<(), AuditError> {
        self.audit.append(event)
    }

    /// Whether this session recorded any event: its end must then wait for them.
    pub fn has_events(&self) -> bool {
        self.seq.load(Ordering::Relaxed) > 0
    }

    pub fn add_up(&self, n: u64) {
        self.bytes_up.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_down(&self, n: u64) {
        self.bytes_down.fetch_add(n, Ordering::Relaxed);
    }
}
