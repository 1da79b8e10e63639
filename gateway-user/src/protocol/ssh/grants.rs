//! What an SSH session granted that lets the host open channels back to the agent: an agent or
//! X11 channel while a channel whose agent or X11 request was allowed (and sent on) is open,
//! and a forwarded connection on a port the agent was allowed to have the host listen on.
//! Anything else the host opens is refused (russh's client would accept it).

use std::sync::{Mutex, PoisonError};

use russh::{Channel, client};

use super::{agent::Slot, rules::RequestKind};

/// Listening ports one session may have the host hold (each is a socket there).
pub const MAX_LISTENS: usize = 16;

/// Channels the host may have open towards the agent at once (within the session's
/// [`super::agent::MAX_CHANNELS`]), so that a host cannot take every channel of the agent's.
pub const MAX_HOST_CHANNELS: usize = 8;

/// What the host's side tells the serve loop.
pub enum HostNote {
    /// A channel it opened that the session granted, with the rule that did and its places
    /// (among the host's channels, and among the session's).
    Opened(HostChannel, String, [Slot; 2]),
    /// A channel it opened that nothing granted: refused, for the audit.
    Refused { kind: RequestKind, what: String },
}

/// A channel the host opened towards the agent.
pub enum HostChannel {
    Agent(Channel<client::Msg>),
    X11 {
        channel: Channel<client::Msg>,
        from: String,
        from_port: u32,
    },
    Forwarded {
        channel: Channel<client::Msg>,
        address: String,
        port: u32,
        from: String,
        from_port: u32,
    },
}

impl HostChannel {
    pub(super) fn kind(&self) -> RequestKind {
        match self {
            HostChannel::Agent(_) => RequestKind::AgentForward,
            HostChannel::X11 { .. } => RequestKind::X11,
            HostChannel::Forwarded { .. } => RequestKind::TcpipForward,
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            HostChannel::Agent(_) => String::new(),
            HostChannel::X11 {
                from, from_port, ..
            } => format!("{from}:{from_port}"),
            HostChannel::Forwarded {
                address,
                port,
                from,
                from_port,
                ..
            } => format!("{address}:{port} from {from}:{from_port}"),
        }
    }
}

/// A listening port asked of the host: `port` 0 until the host says which it picked.
struct Listen {
    id: u64,
    address: String,
    port: u32,
    rule: String,
}

#[derive(Default)]
struct Grants {
    /// The rules of the open channels whose agent (or X11) request was allowed and sent on.
    agent: Vec<String>,
    x11: Vec<String>,
    listens: Vec<Listen>,
    next_id: u64,
}

#[derive(Default)]
pub struct Granted(Mutex<Grants>);

impl Granted {
    fn with<T>(&self, f: impl FnOnce(&mut Grants) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A channel sent the host an allowed agent or X11 request: until it ends
    /// ([`Granted::revoke`]), the host may open such channels back.
    pub(super) fn grant(&self, kind: RequestKind, rule: &str) {
        self.with(|g| {
            if let Some(slot) = g.slot(kind) {
                slot.push(rule.to_owned());
            }
        });
    }

    pub(super) fn revoke(&self, kind: RequestKind, rule: &str) {
        self.with(|g| {
            if let Some(slot) = g.slot(kind)
                && let Some(i) = slot.iter().position(|r| r == rule)
            {
                slot.remove(i);
            }
        });
    }

    /// Reserves a listening port before the host is asked for it (the host may open the first
    /// connection back before its answer arrives); refused past [`MAX_LISTENS`] or for a port
    /// already held.
    pub(super) fn reserve(&self, address: &str, port: u32, rule: &str) -> Result<u64, String> {
        self.with(|g| {
            if g.listens.len() >= MAX_LISTENS {
                return Err(format!(
                    "the session holds {MAX_LISTENS} listening ports already"
                ));
            }
            if port != 0
                && g.listens
                    .iter()
                    .any(|l| l.address == address && l.port == port)
            {
                return Err("the session listens there already".into());
            }
            g.next_id += 1;
            g.listens.push(Listen {
                id: g.next_id,
                address: address.to_owned(),
                port,
                rule: rule.to_owned(),
            });
            Ok(g.next_id)
        })
    }

    /// The host said which port it listens on.
    pub(super) fn confirm(&self, id: u64, port: u32) {
        self.with(|g| {
            if let Some(l) = g.listens.iter_mut().find(|l| l.id == id) {
                l.port = port;
            }
        });
    }

    /// The host refused (or will no longer hold) the reservation `id`.
    pub(super) fn release(&self, id: u64) {
        self.with(|g| g.listens.retain(|l| l.id != id));
    }

    /// The reservation of `address:port`, for a cancel.
    pub(super) fn find(&self, address: &str, port: u32) -> Option<u64> {
        self.with(|g| {
            g.listens
                .iter()
                .find(|l| l.address == address && l.port == port)
                .map(|l| l.id)
        })
    }

    /// The rule that granted what the host opens, if anything did.
    pub(super) fn rule_for(&self, opened: &HostChannel) -> Option<String> {
        match opened {
            HostChannel::Agent(_) | HostChannel::X11 { .. } => self.with(|g| {
                // A rule that grants it now: of a channel still open.
                g.slot(opened.kind())?.last().cloned()
            }),
            HostChannel::Forwarded { address, port, .. } => self.listening(address, *port),
        }
    }

    /// The rule that let the host listen on `address:port`.
    fn listening(&self, address: &str, port: u32) -> Option<String> {
        self.with(|g| {
            g.listens
                .iter()
                // Port 0: the host picks it, and may use it before saying which it picked.
                .find(|l| l.address == address && (l.port == port || l.port == 0))
                .map(|l| l.rule.clone())
        })
    }
}

impl Grants {
    fn slot(&mut self, kind: RequestKind) -> Option<&mut Vec<String>> {
        match kind {
            RequestKind::AgentForward => Some(&mut self.agent),
            RequestKind::X11 => Some(&mut self.x11),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_ports_are_reserved_confirmed_and_bounded() {
        let g = Granted::default();
        let rule = |port| g.listening("127.0.0.1", port);
        assert_eq!(rule(8080), None);
        let id = g.reserve("127.0.0.1", 8080, "listen").unwrap();
        assert_eq!(rule(8080).as_deref(), Some("listen"));
        assert_eq!(rule(8081), None);
        assert_eq!(g.listening("127.0.0.2", 8080), None, "another address");
        // The same port twice: refused, and the first reservation stays.
        assert!(g.reserve("127.0.0.1", 8080, "listen").is_err());
        assert_eq!(g.find("127.0.0.1", 8080), Some(id));
        g.release(id);
        assert_eq!(rule(8080), None);
        // A port the host is to pick: any port of that address until it says which.
        let picked = g.reserve("127.0.0.1", 0, "listen").unwrap();
        assert_eq!(rule(41234).as_deref(), Some("listen"));
        g.confirm(picked, 41234);
        assert_eq!(rule(41234).as_deref(), Some("listen"));
        assert_eq!(rule(41235), None);
        // Bounded, port 0 included: a full session cannot reserve and release its way past.
        for port in 1..MAX_LISTENS as u32 {
            g.reserve("127.0.0.1", 9000 + port, "listen").unwrap();
        }
        assert!(g.reserve("127.0.0.1", 0, "listen").is_err());
        assert!(g.reserve("127.0.0.1", 1, "listen").is_err());
    }

    #[test]
    fn agent_and_x11_channels_only_while_a_grant_is_open() {
        let g = Granted::default();
        let agent = |g: &Granted| g.with(|g| g.slot(RequestKind::AgentForward)?.last().cloned());
        g.grant(RequestKind::AgentForward, "agent-a");
        g.grant(RequestKind::AgentForward, "agent-b");
        assert_eq!(agent(&g).as_deref(), Some("agent-b"));
        assert!(
            g.with(|g| g.x11.is_empty()),
            "granting one grants nothing else"
        );
        // The channel that asked under agent-b ends: agent-a's still grants.
        g.revoke(RequestKind::AgentForward, "agent-b");
        assert_eq!(agent(&g).as_deref(), Some("agent-a"));
        g.revoke(RequestKind::AgentForward, "agent-a");
        g.revoke(RequestKind::AgentForward, "agent-a");
        assert_eq!(agent(&g), None, "revoked with the channels that asked");
        // Other kinds are not granted this way.
        g.grant(RequestKind::Exec, "x");
        assert!(g.with(|g| g.slot(RequestKind::Exec).is_none()));
    }
}
