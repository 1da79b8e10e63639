//! What SSH carries besides commands: forwarded TCP connections both ways (`ssh -L/-D/-W`,
//! `ssh -R`), the agent's own SSH agent (`ssh -A`), X11 and environment variables. Each is
//! refused unless a rule of the target allows its kind. A forwarded destination must also be
//! one the agent's own connection policy admits, as a plain `tcp` target: a PostgreSQL or SSH
//! target reached through a forward would carry its statements past their judge. Allowed
//! forwards are relayed through the host, as SSH does, and recorded like any channel.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{Mutex, PoisonError},
};

use russh::{
    Channel, ChannelMsg, ChannelOpenFailure, client,
    server::{self, ChannelOpenHandle},
};

use super::{
    config::SshTarget,
    record::Recorder,
    rules::{RequestKind, SshRequest},
    session::record,
    upstream::Upstream,
};
use crate::{
    approval::Decision,
    audit::{Detail, SshDetail, Stream},
    identity::Who,
    rules::{Action, decide},
    session::{
        HANDSHAKE_STEP, Phase, Session, SessionError,
        hold::{HoldEnd, HoldRequest, HoldTerms, hold},
    },
    target::Protocol,
};

/// A request answered on the spot (a channel's env, agent and X11 requests, a listening
/// port): the rule that let it through, or why not. A hold cannot wait here (SSH wants the
/// answer before the next message), so a hold rule refuses; a mask rule too, since a
/// forwarded stream is not read, so nothing in it could be masked.
pub(super) fn judge_now(
    target: &SshTarget,
    who: &Who,
    kind: RequestKind,
    text: &str,
) -> Result<String, (String, &'static str)> {
    let request = SshRequest {
        kind,
        text: text.to_owned(),
        words: None,
    };
    let v = decide(&target.rules, who, &request);
    match v.action {
        Action::Allow => Ok(v.rule),
        Action::Deny => Err((v.rule, "denied")),
        Action::Hold => Err((
            v.rule,
            "held, but SSH needs this answer at once: a hold rule refuses it",
        )),
        Action::Mask => Err((
            v.rule,
            "masked, but a forward is not read: a mask rule refuses it",
        )),
    }
}

/// Listening ports one session may have the host hold (each is a socket there).
pub const MAX_LISTENS: usize = 16;

/// What the session granted that lets the host open channels back to the agent: the host may
/// open an agent or X11 channel only after the agent's request for one was allowed, and a
/// forwarded connection only on a port the agent was allowed to have the host listen on.
/// Anything else the host opens is refused.
#[derive(Default)]
pub struct Granted {
    agent: Mutex<Option<String>>,
    x11: Mutex<Option<String>>,
    listens: Mutex<Vec<(String, u32, String)>>,
}

impl Granted {
    pub(super) fn grant(&self, kind: RequestKind, rule: &str) {
        let slot = match kind {
            RequestKind::AgentForward => &self.agent,
            RequestKind::X11 => &self.x11,
            _ => return,
        };
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(rule.to_owned());
    }

    /// Records a listening port the host is asked for; false past [`MAX_LISTENS`].
    pub(super) fn listen(&self, address: &str, port: u32, rule: &str) -> bool {
        let mut listens = self.listens.lock().unwrap_or_else(PoisonError::into_inner);
        if listens.len() >= MAX_LISTENS {
            return false;
        }
        listens.push((address.to_owned(), port, rule.to_owned()));
        true
    }

    pub(super) fn unlisten(&self, address: &str, port: u32) {
        self.listens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(a, p, _)| !(a == address && *p == port));
    }

    /// The rule that granted what the host opens, if anything did.
    pub(super) fn rule_for(&self, opened: &HostChannel) -> Option<String> {
        match opened {
            HostChannel::Agent(_) => self
                .agent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            HostChannel::X11 { .. } => self
                .x11
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            HostChannel::Forwarded { address, port, .. } => self.listening(address, *port),
        }
    }

    /// The rule that let the host listen on `address:port`.
    fn listening(&self, address: &str, port: u32) -> Option<String> {
        self.listens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            // Port 0: the host picks it, and may use it before saying which it picked.
            .find(|(a, p, _)| a == address && (*p == port || *p == 0))
            .map(|(_, _, rule)| rule.clone())
    }
}

impl HostChannel {
    pub(super) fn describe(&self) -> String {
        match self {
            HostChannel::Agent(_) => "auth-agent".into(),
            HostChannel::X11 {
                from, from_port, ..
            } => format!("x11 from {from}:{from_port}"),
            HostChannel::Forwarded { address, port, .. } => {
                format!("forwarded-tcpip {address}:{port}")
            }
        }
    }
}

/// A channel the host opened towards the agent, accepted because the session granted it.
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

/// The agent's `direct-tcpip` channel (`ssh -L`, `-D`, `-W`): judged by the rules (and held
/// if they say so), its destination resolved here and checked against the agent's connection
/// policy, then opened by the host to the address checked (not the name, which the host might
/// resolve elsewhere), accepted, relayed and recorded.
#[allow(clippy::too_many_arguments)]
pub(super) async fn direct(
    s: &Session,
    target: &SshTarget,
    host: &Upstream,
    rec: &Recorder,
    agent: Channel<server::Msg>,
    reply: ChannelOpenHandle,
    to: (String, u32),
    from: (String, u32),
) -> Result<(), SessionError> {
    let ch = u32::from(agent.id());
    let shown = format!("{}:{}", to.0, to.1);
    let event = |action, rule: &str, why: Option<String>| {
        let mut e = s.event(
            action,
            rule,
            detail(ch, RequestKind::DirectTcpip, &shown, 0, 0),
        );
        e.error = why;
        e
    };
    let refuse = |rule: &str, why: String| {
        tracing::info!(session.id = s.admitted.id, to = %shown, why, "SSH forward refused");
        record(s, event(Action::Deny, rule, Some(why)))
    };
    let request = SshRequest {
        kind: RequestKind::DirectTcpip,
        text: shown.clone(),
        words: None,
    };
    let verdict = decide(&target.rules, s.who(), &request);
    match verdict.action {
        Action::Allow => {}
        Action::Deny | Action::Mask => {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            let why = if verdict.action == Action::Deny {
                "denied"
            } else {
                "masked, but a forward is not read: a mask rule refuses it"
            };
            return refuse(&verdict.rule, format!("forward to {shown} {why}"));
        }
        Action::Hold => {
            let rule = target.rules.iter().find(|r| r.name == verdict.rule);
            let terms = HoldTerms::of_rule(
                rule.and_then(|r| r.timeout_secs),
                rule.and_then(|r| r.approval),
            );
            let req = HoldRequest {
                command: format!("forward to {shown}"),
                command_redacted: format!("forward to {shown}"),
                rule: verdict.rule.clone(),
                terms,
            };
            let pending = std::future::pending::<std::io::Result<()>>();
            let held = hold(s, req, std::future::pending(), pending)
                .await
                .map_err(|e| SessionError::agent(Phase::Serve, e))?;
            let approved = matches!(held.end, HoldEnd::Decided(Decision::Approved { .. }));
            let mut e = event(Action::Hold, &verdict.rule, None);
            e.approval = Some(Box::new(held.record));
            if !approved {
                e.error = Some(format!("approval {} did not approve it", held.id));
            }
            record(s, e)?;
            if !approved {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
        }
    }
    let port = match u16::try_from(to.1) {
        Ok(p) if p != 0 => p,
        _ => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return refuse(&verdict.rule, format!("{shown}: not a TCP port"));
        }
    };
    let addr = match admitted(s, &to.0, port).await {
        Ok(addr) => addr,
        Err(why) => {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return refuse(&verdict.rule, why);
        }
    };
    let up = match host
        .channel_open_direct_tcpip(addr.ip().to_string(), u32::from(port), from.0, from.1)
        .await
    {
        Ok(up) => up,
        Err(e) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return refuse(
                &verdict.rule,
                format!("the host could not reach {addr}: {e}"),
            );
        }
    };
    reply.accept().await;
    record(s, event(Action::Allow, &verdict.rule, None))?;
    let (bytes_in, bytes_out) = pump(s, rec, ch, &verdict.rule, agent, up, true).await?;
    let d = detail(ch, RequestKind::DirectTcpip, &shown, bytes_in, bytes_out);
    record(s, s.event(Action::Allow, &verdict.rule, d))
}

/// The first address of `host` that the agent's own policy admits as a plain TCP target.
async fn admitted(s: &Session, host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::time::timeout(HANDSHAKE_STEP, tokio::net::lookup_host((host, port)))
            .await
        {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(format!("{host} does not resolve: {e}")),
            Err(_) => return Err(format!("{host} did not resolve within {HANDSHAKE_STEP:?}")),
        },
    };
    let mut why = format!(
        "policy {} admits no target at {host}:{port}",
        s.admitted.policy
    );
    for addr in addrs {
        match (s.admitted.reach)(addr) {
            Some((_, Protocol::Tcp)) => return Ok(addr),
            Some((name, protocol)) => {
                let protocol = format!("{protocol:?}").to_lowercase();
                why = format!(
                    "{addr} is target {name}, a {protocol} target: through a forward its commands would not be judged; connect to it directly"
                );
            }
            None => {}
        }
    }
    Err(why)
}

/// A channel the host opened and the session granted, opened on towards the agent and relayed.
pub(super) async fn from_host(
    s: &Session,
    rec: &Recorder,
    agent: &server::Handle,
    opened: HostChannel,
    rule: String,
) -> Result<(), SessionError> {
    let (kind, shown, verbatim, channel, to_agent) = match opened {
        HostChannel::Agent(c) => (RequestKind::AgentForward, String::new(), false, c, None),
        HostChannel::X11 {
            channel,
            from,
            from_port,
        } => {
            let shown = format!("{from}:{from_port}");
            (
                RequestKind::X11,
                shown,
                false,
                channel,
                Some((from, from_port, None)),
            )
        }
        HostChannel::Forwarded {
            channel,
            address,
            port,
            from,
            from_port,
        } => {
            let shown = format!("{address}:{port} from {from}:{from_port}");
            (
                RequestKind::TcpipForward,
                shown,
                true,
                channel,
                Some((from, from_port, Some((address, port)))),
            )
        }
    };
    let opening = match to_agent {
        None => agent.channel_open_agent().await,
        Some((from, from_port, None)) => agent.channel_open_x11(from, from_port).await,
        Some((from, from_port, Some((address, port)))) => {
            agent
                .channel_open_forwarded_tcpip(address, port, from, from_port)
                .await
        }
    };
    let ch = u32::from(channel.id());
    let down = match opening {
        Ok(c) => c,
        Err(e) => {
            let mut ev = s.event(Action::Allow, &rule, detail(ch, kind, &shown, 0, 0));
            ev.error = Some(format!("the agent refused the channel: {e}"));
            let _ = channel.close().await;
            return record(s, ev);
        }
    };
    let (bytes_in, bytes_out) = pump(s, rec, ch, &rule, down, channel, verbatim).await?;
    record(
        s,
        s.event(
            Action::Allow,
            &rule,
            detail(ch, kind, &shown, bytes_in, bytes_out),
        ),
    )
}

fn detail(channel: u32, request: RequestKind, what: &str, bytes_in: u64, bytes_out: u64) -> Detail {
    Detail::Ssh(SshDetail {
        channel,
        request,
        command: what.to_owned(),
        exit_status: None,
        bytes_in,
        bytes_out,
    })
}

/// Relays a channel of the agent's with one of the host's until either closes; returns the
/// bytes from the agent and from the host. With `verbatim`, the bytes are recorded too
/// (within the session's bound): a forwarded connection is not a way around the recording.
async fn pump(
    s: &Session,
    rec: &Recorder,
    ch: u32,
    rule: &str,
    agent: Channel<server::Msg>,
    host: Channel<client::Msg>,
    verbatim: bool,
) -> Result<(u64, u64), SessionError> {
    let (mut a_rd, a_wr) = agent.split();
    let (mut h_rd, h_wr) = host.split();
    let (mut from_agent, mut from_host) = (0u64, 0u64);
    loop {
        tokio::select! {
            m = a_rd.wait() => match m {
                Some(ChannelMsg::Data { data }) => {
                    from_agent += data.len() as u64;
                    s.add_up(data.len() as u64);
                    if verbatim {
                        rec.chunk(s, ch, Stream::Input, &data, rule)?;
                    }
                    if h_wr.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    let _ = h_wr.eof().await;
                }
                None | Some(ChannelMsg::Close) => break,
                Some(_) => {}
            },
            m = h_rd.wait() => match m {
                Some(ChannelMsg::Data { data }) => {
                    from_host += data.len() as u64;
                    s.add_down(data.len() as u64);
                    if verbatim {
                        rec.chunk(s, ch, Stream::Output, &data, rule)?;
                    }
                    if a_wr.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    let _ = a_wr.eof().await;
                }
                None | Some(ChannelMsg::Close) => break,
                Some(_) => {}
            },
        }
    }
    let _ = a_wr.close().await;
    let _ = h_wr.close().await;
    Ok((from_agent, from_host))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        approval::Broker,
        audit::AuditStore,
        session::{Admitted, Reach},
    };

    fn session(dir: &std::path::Path) -> Session {
        // The agent's policy: a tcp target on 127.0.0.1:7000, a PostgreSQL one on :5432.
        let reach: Reach =
            Arc::new(
                |dst: SocketAddr| match (dst.ip().to_string().as_str(), dst.port()) {
                    ("127.0.0.1", 7000) => Some(("echo".into(), Protocol::Tcp)),
                    ("127.0.0.1", 5432) => Some(("db".into(), Protocol::Postgres)),
                    _ => None,
                },
            );
        Session::new(
            Admitted {
                id: 1,
                policy: "p".into(),
                target: "web".into(),
                protocol: Protocol::Ssh,
                governed_cgroup_id: 1,
                destination: "127.0.0.1:22".parse().unwrap(),
                agent: None,
                reach,
            },
            AuditStore::open(dir).unwrap(),
            Arc::new(Broker::default()),
        )
    }

    #[tokio::test]
    async fn forwards_reach_only_plain_tcp_targets_of_the_agents_policy() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(dir.path());
        let ok = "127.0.0.1:7000".parse::<SocketAddr>().unwrap();
        assert_eq!(admitted(&s, "127.0.0.1", 7000).await, Ok(ok));
        // A name is resolved here, and judged by the address it resolves to.
        assert_eq!(admitted(&s, "localhost", 7000).await, Ok(ok));
        let why = admitted(&s, "127.0.0.1", 5432).await.unwrap_err();
        assert!(why.contains("target db, a postgres target"), "{why}");
        let why = admitted(&s, "127.0.0.2", 7000).await.unwrap_err();
        assert!(why.contains("admits no target"), "{why}");
        for hostile in ["no-such-host.invalid", "", "a\0b", &"x".repeat(4096)] {
            assert!(admitted(&s, hostile, 7000).await.is_err(), "{hostile:?}");
        }
    }

    #[test]
    fn the_host_opens_only_what_the_session_granted() {
        let g = Granted::default();
        let rule = |port| g.listening("127.0.0.1", port);
        assert_eq!(rule(8080), None);
        assert!(g.listen("127.0.0.1", 8080, "listen"));
        assert_eq!(rule(8080).as_deref(), Some("listen"));
        assert_eq!(rule(8081), None);
        g.unlisten("127.0.0.1", 8080);
        assert_eq!(rule(8080), None);
        for port in 0..MAX_LISTENS as u32 {
            assert!(g.listen("127.0.0.1", 9000 + port, "listen"));
        }
        assert!(!g.listen("127.0.0.1", 1, "listen"), "bounded");
        assert_eq!(g.listening("127.0.0.2", 9000), None, "another address");
        // A port the host is to pick: any port of that address until it says which.
        let g = Granted::default();
        assert!(g.listen("127.0.0.1", 0, "listen"));
        assert_eq!(g.listening("127.0.0.1", 41234).as_deref(), Some("listen"));
        let g = Granted::default();
        assert!(g.agent.lock().unwrap().is_none());
        g.grant(RequestKind::AgentForward, "agent");
        assert_eq!(g.agent.lock().unwrap().as_deref(), Some("agent"));
        assert!(
            g.x11.lock().unwrap().is_none(),
            "granting one grants nothing else"
        );
    }
}
