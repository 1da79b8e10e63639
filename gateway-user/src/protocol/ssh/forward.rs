//! What SSH carries besides commands: forwarded TCP connections both ways (`ssh -L/-D/-W`,
//! `ssh -R`), the agent's own SSH agent (`ssh -A`), X11 and environment variables. Each is
//! refused unless a rule of the target allows its kind. A forwarded destination must also be
//! reachable under the agent's own connection policy as a plain `tcp` target (a PostgreSQL or
//! SSH target reached through a forward would carry its statements past their judge), or,
//! for an address on the host itself (loopback, link-local...), one of the target's
//! `host_forwards`: the agent's policy speaks of its own machine, not the host's. Allowed
//! forwards are relayed through the host, as SSH does, and recorded like any channel.

use std::net::{IpAddr, SocketAddr};

use russh::{
    Channel, ChannelMsg, ChannelOpenFailure, client,
    server::{self, ChannelOpenHandle},
};

use super::{
    config::SshTarget,
    grants::HostChannel,
    record::{Recorder, detail},
    rules::{RequestKind, SshRequest},
    session::record,
    upstream::Upstream,
};
use crate::{
    approval::Decision,
    audit::Stream,
    identity::Who,
    rules::{Action, DEFAULT_RULE, Verdict, decide},
    session::{
        HANDSHAKE_STEP, Phase, Session, SessionError,
        hold::{HoldEnd, hold},
    },
    target::Protocol,
};

/// The verdict on a request the rules see under several spellings (as the agent wrote it, and
/// as the address it resolves to): a named deny of any wins, then a hold, a mask, an allow,
/// and the default last, so a rule cannot be sidestepped by writing an address another way.
pub(super) fn judge(target: &SshTarget, who: &Who, kind: RequestKind, texts: &[String]) -> Verdict {
    let rank = |v: &Verdict| match v.action {
        Action::Deny if v.rule != DEFAULT_RULE => 4,
        Action::Hold => 3,
        Action::Mask => 2,
        Action::Allow => 1,
        Action::Deny => 0,
    };
    let mut best: Option<Verdict> = None;
    for text in texts {
        let request = SshRequest {
            kind,
            text: text.clone(),
            words: None,
        };
        let v = decide(&target.rules, who, &request);
        if best.as_ref().is_none_or(|b| rank(&v) > rank(b)) {
            best = Some(v);
        }
    }
    best.unwrap_or_else(|| {
        decide(
            &target.rules,
            who,
            &SshRequest {
                kind,
                text: String::new(),
                words: None,
            },
        )
    })
}

/// A request answered on the spot (a channel's env, agent and X11 requests, a listening
/// port): the rule that let it through, or the rule and why not. A hold cannot wait here (SSH
/// wants the answer before the next message), so a hold rule refuses; a mask rule too, since
/// a forwarded stream is not read, so nothing in it could be masked.
pub(super) fn judge_now(
    target: &SshTarget,
    who: &Who,
    kind: RequestKind,
    texts: &[String],
) -> Result<String, (String, &'static str)> {
    let v = judge(target, who, kind, texts);
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

/// A listening address as rules see it, besides its spelling: every wildcard (`""`, `*`,
/// `0.0.0.0`, `::`) as `*`, an address in its canonical form.
pub(super) fn listen_spellings(address: &str, port: u32) -> Vec<String> {
    let canonical = match address {
        "" | "*" | "0.0.0.0" | "::" | "[::]" => "*".to_owned(),
        a => a
            .parse::<IpAddr>()
            .map_or_else(|_| a.to_owned(), |ip| ip.to_canonical().to_string()),
    };
    let mut texts = vec![format!("{address}:{port}")];
    let other = format!("{canonical}:{port}");
    if other != texts[0] {
        texts.push(other);
    }
    texts
}

/// Whether an address names the host itself or its link rather than a place on the network:
/// the host reaching it reaches itself, which the agent's connection policy says nothing of.
fn on_the_host(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.octets()[0] == 0
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// The agent's `direct-tcpip` channel (`ssh -L`, `-D`, `-W`): its destination resolved here
/// and checked (the agent's connection policy, or the target's `host_forwards`), then judged
/// by the rules under both spellings (and held if they say so), then opened by the host to the
/// address checked (not the name, which the host might resolve elsewhere), accepted, relayed
/// and recorded.
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
    let asked = format!("{}:{}", to.0, to.1);
    let port = match u16::try_from(to.1) {
        Ok(p) if p != 0 => p,
        _ => {
            return refuse(
                s,
                ch,
                FORWARD_RULE,
                &asked,
                format!("{asked}: not a TCP port"),
                reply,
            )
            .await;
        }
    };
    let addr = match reachable(s, target, &to.0, port).await {
        Ok(addr) => addr,
        Err(why) => return refuse(s, ch, FORWARD_RULE, &asked, why, reply).await,
    };
    let checked = SocketAddr::new(addr.ip().to_canonical(), port).to_string();
    let shown = if checked == asked {
        asked.clone()
    } else {
        format!("{asked} ({checked})")
    };
    let verdict = judge(
        target,
        s.who(),
        RequestKind::DirectTcpip,
        &[asked.clone(), checked],
    );
    match verdict.action {
        Action::Allow => {}
        Action::Deny => {
            return refuse(
                s,
                ch,
                &verdict.rule,
                &shown,
                format!("forward to {shown} denied"),
                reply,
            )
            .await;
        }
        Action::Mask => {
            let why = "masked, but a forward is not read: a mask rule refuses it".to_owned();
            return refuse(s, ch, &verdict.rule, &shown, why, reply).await;
        }
        Action::Hold => {
            let req = target.hold_request(&verdict.rule, format!("forward to {shown}"));
            // The agent waits for the channel's answer: nothing of it to read meanwhile.
            let waiting = std::future::pending::<std::io::Result<()>>();
            let held = hold(s, req, std::future::pending(), waiting)
                .await
                .map_err(|e| SessionError::agent(Phase::Serve, e))?;
            let approved = matches!(held.end, HoldEnd::Decided(Decision::Approved { .. }));
            let mut e = s.event(
                Action::Hold,
                &verdict.rule,
                detail(ch, RequestKind::DirectTcpip, &shown, 0, 0),
            );
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
    let up = match host
        .channel_open_direct_tcpip(
            addr.ip().to_canonical().to_string(),
            u32::from(port),
            from.0,
            from.1,
        )
        .await
    {
        Ok(up) => up,
        Err(e) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            let mut ev = s.event(
                Action::Allow,
                &verdict.rule,
                detail(ch, RequestKind::DirectTcpip, &shown, 0, 0),
            );
            ev.error = Some(format!("the host could not reach {addr}: {e}"));
            return record(s, ev);
        }
    };
    reply.accept().await;
    if verdict.action != Action::Hold {
        let e = s.event(
            Action::Allow,
            &verdict.rule,
            detail(ch, RequestKind::DirectTcpip, &shown, 0, 0),
        );
        record(s, e)?;
    }
    let (bytes_in, bytes_out) = pump(s, rec, ch, &verdict.rule, agent, up, true).await?;
    let d = detail(ch, RequestKind::DirectTcpip, &shown, bytes_in, bytes_out);
    record(s, s.event(Action::Allow, &verdict.rule, d))
}

/// Refuses a `direct-tcpip` channel and audits why.
async fn refuse(
    s: &Session,
    ch: u32,
    rule: &str,
    shown: &str,
    why: String,
    reply: ChannelOpenHandle,
) -> Result<(), SessionError> {
    reply
        .reject(ChannelOpenFailure::AdministrativelyProhibited)
        .await;
    tracing::info!(session.id = s.admitted.id, to = %shown, why, "SSH forward refused");
    let mut e = s.event(
        Action::Deny,
        rule,
        detail(ch, RequestKind::DirectTcpip, shown, 0, 0),
    );
    e.error = Some(why);
    record(s, e)
}

/// The rule named when a forward's destination, not a rule, refuses it.
const FORWARD_RULE: &str = "forward-destination";

/// The first address of `host` a forward may reach: on the host itself, one of the target's
/// `host_forwards`; elsewhere, a plain `tcp` target of the agent's own connection policy.
async fn reachable(
    s: &Session,
    target: &SshTarget,
    host: &str,
    port: u16,
) -> Result<SocketAddr, String> {
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
        let addr = SocketAddr::new(addr.ip().to_canonical(), port);
        if on_the_host(addr.ip()) {
            if target
                .host_forwards
                .iter()
                .any(|(net, p)| *p == port && net.contains(&addr.ip()))
            {
                return Ok(addr);
            }
            why = format!(
                "{addr} is on the host itself (loopback, link-local...), where the agent's policy does not reach: only the target's host_forwards are"
            );
            continue;
        }
        match (s.admitted.reach)(addr) {
            Some((_, Protocol::Tcp)) => return Ok(addr),
            Some((name, protocol)) => {
                why = format!(
                    "{addr} is target {name}, a {} target: through a forward its commands would not be judged; connect to it directly",
                    protocol.as_str()
                );
            }
            None => {}
        }
    }
    Err(why)
}

/// A channel the host opened and the session granted, opened on towards the agent, audited
/// before any byte of it moves, relayed and audited again with its byte counts.
pub(super) async fn from_host(
    s: &Session,
    rec: &Recorder,
    agent: &server::Handle,
    opened: HostChannel,
    rule: String,
) -> Result<(), SessionError> {
    let (kind, shown) = (opened.kind(), opened.describe());
    let (channel, opening) = match opened {
        HostChannel::Agent(c) => (c, agent.channel_open_agent().await),
        HostChannel::X11 {
            channel,
            from,
            from_port,
        } => (channel, agent.channel_open_x11(from, from_port).await),
        HostChannel::Forwarded {
            channel,
            address,
            port,
            from,
            from_port,
        } => {
            let opening = agent
                .channel_open_forwarded_tcpip(address, port, from, from_port)
                .await;
            (channel, opening)
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
    record(
        s,
        s.event(Action::Allow, &rule, detail(ch, kind, &shown, 0, 0)),
    )?;
    // An SSH agent's or X11's bytes are counted, not kept: signatures and pixels, not commands.
    let verbatim = kind == RequestKind::TcpipForward;
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
        // The agent's policy: a tcp target on 10.0.0.7:7000, a PostgreSQL one on :5432.
        let reach: Reach =
            Arc::new(
                |dst: SocketAddr| match (dst.ip().to_string().as_str(), dst.port()) {
                    ("10.0.0.7", 7000) => Some(("echo".into(), Protocol::Tcp)),
                    ("10.0.0.7", 5432) => Some(("db".into(), Protocol::Postgres)),
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

    fn target(extra: &str) -> SshTarget {
        let text = format!("user = \"deploy\"\nkey_file = \"/k\"\nknown_hosts = \"/kh\"\n{extra}");
        SshTarget::validate(toml::from_str(&text).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn forwards_reach_plain_tcp_targets_of_the_agents_policy_or_the_hosts_own_list() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(dir.path());
        let t = target("host_forwards = [\"127.0.0.1:5432\"]");
        let ok = "10.0.0.7:7000".parse::<SocketAddr>().unwrap();
        assert_eq!(reachable(&s, &t, "10.0.0.7", 7000).await, Ok(ok));
        assert_eq!(
            reachable(&s, &t, "::ffff:10.0.0.7", 7000).await,
            Ok(ok),
            "v4-mapped"
        );
        let why = reachable(&s, &t, "10.0.0.7", 5432).await.unwrap_err();
        assert!(why.contains("target db, a postgres target"), "{why}");
        let why = reachable(&s, &t, "10.0.0.8", 7000).await.unwrap_err();
        assert!(why.contains("admits no target"), "{why}");
        // On the host itself only what the target lists, whatever the agent's policy says of
        // its own loopback or of the cloud's metadata address.
        let local = "127.0.0.1:5432".parse::<SocketAddr>().unwrap();
        assert_eq!(reachable(&s, &t, "127.0.0.1", 5432).await, Ok(local));
        assert_eq!(
            reachable(&s, &t, "localhost", 5432).await,
            Ok(local),
            "a name resolved here"
        );
        for (host, port) in [
            ("127.0.0.1", 22),
            ("169.254.169.254", 80),
            ("0.0.0.0", 5432),
            ("::1", 5432),
            ("fe80::1", 22),
            ("224.0.0.1", 7000),
        ] {
            let why = reachable(&s, &t, host, port).await.unwrap_err();
            assert!(
                why.contains("on the host itself") || why.contains("admits no target"),
                "{host}: {why}"
            );
        }
        for hostile in ["no-such-host.invalid", "", "a\0b", &"x".repeat(4096)] {
            assert!(
                reachable(&s, &t, hostile, 7000).await.is_err(),
                "{hostile:?}"
            );
        }
    }

    #[test]
    fn rules_see_every_spelling_of_a_destination() {
        let t = target(
            "[[rules]]\nname = \"tunnels\"\naction = \"allow\"\nkinds = [\"direct_tcpip\"]\n\
             [[rules]]\nname = \"not-db\"\naction = \"deny\"\nkinds = [\"direct_tcpip\"]\ntargets = [\"10.0.0.5:*\"]\n\
             [[rules]]\nname = \"hold-web\"\naction = \"hold\"\ntargets = [\"web.internal:*\"]\n",
        );
        let who = Who::default();
        let v = |texts: &[&str]| {
            let texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
            let v = judge(&t, &who, RequestKind::DirectTcpip, &texts);
            (v.action, v.rule)
        };
        assert_eq!(v(&["10.0.0.6:80"]), (Action::Allow, "tunnels".into()));
        // Another spelling of the denied address is denied by the address it resolved to.
        assert_eq!(
            v(&["167772165:80", "10.0.0.5:80"]),
            (Action::Deny, "not-db".into())
        );
        // The held name, dialled by its address or under its name, is held either way.
        assert_eq!(
            v(&["web.internal:443", "10.0.0.9:443"]),
            (Action::Hold, "hold-web".into())
        );
        assert_eq!(listen_spellings("0.0.0.0", 80), ["0.0.0.0:80", "*:80"]);
        assert_eq!(listen_spellings("", 80), [":80", "*:80"]);
        assert_eq!(listen_spellings("127.0.0.1", 80), ["127.0.0.1:80"]);
        assert_eq!(
            listen_spellings("::ffff:127.0.0.1", 80),
            ["::ffff:127.0.0.1:80", "127.0.0.1:80"]
        );
    }
}
