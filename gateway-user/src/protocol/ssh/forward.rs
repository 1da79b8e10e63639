//! What SSH carries besides commands: forwarded TCP connections both ways (`ssh -L/-D/-W`,
//! `ssh -R`), the agent's own SSH agent (`ssh -A`), X11 and environment variables. Each is
//! refused unless a rule of the target allows its kind. A forwarded destination must also be
//! reachable under the agent's own connection policy as a plain `tcp` target (a PostgreSQL or
//! SSH target reached through a forward would carry its statements past their judge), or,
//! for an address on the host itself (loopback, link-local...), one of the target's
//! `host_forwards`: the agent's policy speaks of its own machine, not the host's. Allowed
//! forwards are relayed through the host, as SSH does, and recorded like any channel.

use std::{
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
};

use russh::{
    Channel, ChannelMsg, ChannelOpenFailure, client,
    server::{self, ChannelOpenHandle},
};

use super::{
    agent::MAX_REFUSALS,
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
        Phase, Reached, Session, SessionError,
        hold::{HoldEnd, hold},
    },
    target::Protocol,
};

/// The verdict on a request the rules see under several spellings (as the agent wrote it, and
/// as the address it resolves to): a named rule's over the default, then the strictest (deny >
/// hold > mask > allow), so a rule cannot be sidestepped by writing an address another way.
pub(super) fn judge(target: &SshTarget, who: &Who, kind: RequestKind, texts: &[String]) -> Verdict {
    texts
        .iter()
        .map(|text| {
            let request = SshRequest {
                kind,
                text: text.clone(),
                words: None,
            };
            decide(&target.rules, who, &request)
        })
        .max_by_key(|v| (v.rule != DEFAULT_RULE, v.action.strictness()))
        .unwrap_or_else(|| Verdict {
            action: Action::Deny,
            rule: DEFAULT_RULE.to_owned(),
            masks: Vec::new(),
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
        Action::Mask => Err((v.rule, MASK_REFUSES)),
    }
}

/// A listening address as rules see it: as the agent spelled it and, for a wildcard (`""`,
/// `*`, `0.0.0.0`, `::` and every other spelling of an unspecified address), as `*`, an
/// address in its canonical form. `None` for anything else but `localhost`: sshd would resolve
/// a name (`0`, `0x0` and `00.0.0.0` all bind the wildcard), so names are refused.
pub(super) fn listen_spellings(address: &str, port: u32) -> Option<Vec<String>> {
    let canonical = match address {
        "" | "*" => "*".to_owned(),
        "localhost" => "localhost".to_owned(),
        a => match a
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) if ip.to_canonical().is_unspecified() => "*".to_owned(),
            Ok(ip) => ip.to_canonical().to_string(),
            Err(_) => return None,
        },
    };
    let mut texts = vec![format!("{address}:{port}")];
    let other = format!("{canonical}:{port}");
    if other != texts[0] {
        texts.push(other);
    }
    Some(texts)
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
                // Azure's host-local endpoint (its metadata service is link-local).
                || v4 == std::net::Ipv4Addr::new(168, 63, 129, 16)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                // AWS's metadata service over IPv6.
                || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// What a session's forwards share: the session, its target, the host's connection, its
/// recording, and the count of requests refused so far (past [`MAX_REFUSALS`] the session is
/// ended: refusals cost the agent nothing, and each is an audit event).
pub(super) struct Forwards<'a> {
    pub s: &'a Session,
    pub target: &'a SshTarget,
    pub host: &'a Upstream,
    pub rec: &'a Recorder,
    pub refusals: &'a AtomicUsize,
}

impl Forwards<'_> {
    /// Refuses a `direct-tcpip` channel and audits why.
    async fn refuse(
        &self,
        ch: u32,
        rule: &str,
        shown: &str,
        why: String,
        reply: ChannelOpenHandle,
    ) -> Result<(), SessionError> {
        let s = self.s;
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
        record(s, e)?;
        if self.refusals.fetch_add(1, Ordering::Relaxed) + 1 > MAX_REFUSALS {
            let why = format!("past {MAX_REFUSALS} refused requests the session is ended");
            return Err(SessionError::agent(Phase::Serve, why));
        }
        Ok(())
    }

    /// The agent's `direct-tcpip` channel (`ssh -L`, `-D`, `-W`): its destination checked
    /// first (the agent's connection policy, or the target's `host_forwards`), then judged by
    /// the rules under both spellings (and held if they say so), audited, then opened by the
    /// host to the address checked (not the name, which the host might resolve elsewhere),
    /// accepted, relayed and audited again with its byte counts.
    pub(super) async fn direct(
        &self,
        agent: Channel<server::Msg>,
        reply: ChannelOpenHandle,
        to: (String, u32),
        from: (String, u32),
    ) -> Result<(), SessionError> {
        let (s, target) = (self.s, self.target);
        let ch = u32::from(agent.id());
        let asked = format!("{}:{}", to.0, to.1);
        let Some(port) = u16::try_from(to.1).ok().filter(|p| *p != 0) else {
            let why = format!("{asked}: not a TCP port");
            return self.refuse(ch, FORWARD_RULE, &asked, why, reply).await;
        };
        let addr = match reachable(s, target, &to.0, port) {
            Ok(addr) => addr,
            Err(why) => return self.refuse(ch, FORWARD_RULE, &asked, why, reply).await,
        };
        let checked = addr.to_string();
        let shown = if checked == asked {
            asked.clone()
        } else {
            format!("{asked} ({checked})")
        };
        let kind = RequestKind::DirectTcpip;
        let verdict = judge(target, s.who(), kind, &[asked, checked]);
        let event = |action| s.event(action, &verdict.rule, detail(ch, kind, &shown, 0, 0));
        match verdict.action {
            Action::Allow => record(s, event(Action::Allow))?,
            Action::Deny => {
                let why = format!("forward to {shown} denied");
                return self.refuse(ch, &verdict.rule, &shown, why, reply).await;
            }
            Action::Mask => {
                let why = format!("forward to {shown} {MASK_REFUSES}");
                return self.refuse(ch, &verdict.rule, &shown, why, reply).await;
            }
            Action::Hold => {
                let req = target.hold_request(&verdict.rule, format!("forward to {shown}"));
                // The agent waits for the channel's answer: nothing of it to read meanwhile.
                let waiting = std::future::pending::<std::io::Result<()>>();
                let held = hold(s, req, std::future::pending(), waiting)
                    .await
                    .map_err(|e| SessionError::agent(Phase::Serve, e))?;
                let approved = matches!(held.end, HoldEnd::Decided(Decision::Approved { .. }));
                let mut e = event(Action::Hold);
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
        // Audited above, before the host is asked to connect.
        let (ip, port) = (addr.ip().to_string(), u32::from(port));
        let up = match self
            .host
            .channel_open_direct_tcpip(ip, port, from.0, from.1)
            .await
        {
            Ok(up) => up,
            Err(e) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                let mut ev = event(Action::Allow);
                ev.error = Some(format!("the host could not reach {addr}: {e}"));
                return record(s, ev);
            }
        };
        reply.accept().await;
        let (bytes_in, bytes_out) = pump(s, self.rec, ch, &verdict.rule, agent, up, true).await?;
        let d = detail(ch, kind, &shown, bytes_in, bytes_out);
        record(s, s.event(Action::Allow, &verdict.rule, d))
    }
}

/// The rule named when a forward's destination, not a rule, refuses it.
const FORWARD_RULE: &str = "forward-destination";

/// Why a mask verdict refuses a forward or a request answered at once.
const MASK_REFUSES: &str = "masked, but a forward is not read: a mask rule refuses it";

/// The first address of `host` a forward may reach: on the host itself, one of the target's
/// `host_forwards`; elsewhere, a plain `tcp` target of the agent's own policy that names one
/// host (a network admitted for the agent's own dials, `10.0.0.0/8:443`, would let a forward
/// from the host roam the host's network). A name is one the policy uses, as the daemon
/// resolved it; the daemon looks up no name the agent makes up.
fn reachable(s: &Session, target: &SshTarget, host: &str, port: u16) -> Result<SocketAddr, String> {
    let ips: Vec<IpAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
        vec![ip]
    } else if host.eq_ignore_ascii_case("localhost") {
        vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ]
    } else {
        match s.admitted.reach.addresses(&host.to_ascii_lowercase()) {
            Some(ips) if !ips.is_empty() => ips,
            _ => {
                return Err(format!(
                    "{host} is not a host name of policy {}: forward to an address, or to a name its targets use",
                    s.admitted.policy
                ));
            }
        }
    };
    let mut why = format!(
        "policy {} admits no target at {host}:{port}",
        s.admitted.policy
    );
    for ip in ips {
        let addr = SocketAddr::new(ip.to_canonical(), port);
        if on_the_host(addr.ip()) {
            if target
                .host_forwards
                .iter()
                .any(|(net, p)| *p == port && net.contains(&addr.ip()))
            {
                return Ok(addr);
            }
            why = format!(
                "{addr} is on the host itself (loopback, link-local, metadata...), where the agent's policy does not reach: only the target's host_forwards are"
            );
            continue;
        }
        match s.admitted.reach.target_at(addr) {
            Some(Reached {
                protocol: Protocol::Tcp,
                one_host: true,
                ..
            }) => return Ok(addr),
            Some(Reached {
                target,
                protocol: Protocol::Tcp,
                ..
            }) => {
                why = format!(
                    "{addr} is admitted by target {target}, a network: a forward from the host would reach the host's network through it; only a target naming one host admits a forward"
                );
            }
            Some(Reached {
                target, protocol, ..
            }) => {
                why = format!(
                    "{addr} is target {target}, a {} target: through a forward its commands would not be judged; connect to it directly",
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
    // Each direction on its own: russh grants window as messages arrive, not as they are read,
    // so one loop blocked writing one way could leave the other way's messages unread until
    // the connection's queue fills and no window grant gets through either.
    let up = async {
        loop {
            match a_rd.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    from_agent += data.len() as u64;
                    s.add_up(data.len() as u64);
                    if verbatim {
                        rec.chunk(s, ch, Stream::Input, &data, rule)?;
                    }
                    if h_wr.data_bytes(data).await.is_err() {
                        return Ok(());
                    }
                }
                Some(ChannelMsg::Eof) => {
                    let _ = h_wr.eof().await;
                }
                None | Some(ChannelMsg::Close) => return Ok::<(), SessionError>(()),
                Some(_) => {}
            }
        }
    };
    let down = async {
        loop {
            match h_rd.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    from_host += data.len() as u64;
                    s.add_down(data.len() as u64);
                    if verbatim {
                        rec.chunk(s, ch, Stream::Output, &data, rule)?;
                    }
                    if a_wr.data_bytes(data).await.is_err() {
                        return Ok(());
                    }
                }
                Some(ChannelMsg::Eof) => {
                    let _ = a_wr.eof().await;
                }
                None | Some(ChannelMsg::Close) => return Ok::<(), SessionError>(()),
                Some(_) => {}
            }
        }
    };
    // Either side's close ends both: nothing more can be delivered to it.
    let ended = tokio::select! {
        r = up => r,
        r = down => r,
    };
    ended?;
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

    /// The agent's policy: `echo` on 10.0.0.7:7000, `db` (PostgreSQL) on 10.0.0.7:5432, `lan`
    /// the network 10.9.0.0/16:443, and with `everywhere` every other address too (so that
    /// only the host-itself check can refuse); `echo.internal` resolves to 10.0.0.7.
    struct Policy {
        everywhere: bool,
    }

    impl Reach for Policy {
        fn target_at(&self, dst: SocketAddr) -> Option<Reached> {
            let reached = |target: &str, protocol, one_host| {
                Some(Reached {
                    target: target.into(),
                    protocol,
                    one_host,
                })
            };
            match (dst.ip().to_string().as_str(), dst.port()) {
                ("10.0.0.7", 7000) => reached("echo", Protocol::Tcp, true),
                ("10.0.0.7", 5432) => reached("db", Protocol::Postgres, true),
                (ip, 443) if ip.starts_with("10.9.") => reached("lan", Protocol::Tcp, false),
                _ if self.everywhere => reached("any", Protocol::Tcp, true),
                _ => None,
            }
        }

        fn addresses(&self, name: &str) -> Option<Vec<IpAddr>> {
            (name == "echo.internal").then(|| vec![IpAddr::from([10, 0, 0, 7])])
        }
    }

    fn session(dir: &std::path::Path, everywhere: bool) -> Session {
        let reach: Arc<dyn Reach> = Arc::new(Policy { everywhere });
        Session::new(
            Admitted {
                id: 1,
                policy: "p".into(),
                target: "web".into(),
                protocol: Protocol::Ssh,
                governed_cgroup_id: 1,
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

    #[test]
    fn forwards_reach_one_host_tcp_targets_of_the_agents_policy_or_the_hosts_own_list() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(dir.path(), false);
        let t = target("host_forwards = [\"127.0.0.1:5432\"]");
        let ok = "10.0.0.7:7000".parse::<SocketAddr>().unwrap();
        assert_eq!(reachable(&s, &t, "10.0.0.7", 7000), Ok(ok));
        assert_eq!(
            reachable(&s, &t, "::ffff:10.0.0.7", 7000),
            Ok(ok),
            "v4-mapped"
        );
        // A name the policy uses, as the daemon resolved it; no other name is looked up.
        assert_eq!(reachable(&s, &t, "ECHO.internal", 7000), Ok(ok));
        let why = reachable(&s, &t, "example.com", 7000).unwrap_err();
        assert!(why.contains("not a host name of policy p"), "{why}");
        let why = reachable(&s, &t, "10.0.0.7", 5432).unwrap_err();
        assert!(why.contains("target db, a postgres target"), "{why}");
        let why = reachable(&s, &t, "10.0.0.8", 7000).unwrap_err();
        assert!(why.contains("admits no target"), "{why}");
        // A network the agent may dial is no licence to roam the host's network.
        let why = reachable(&s, &t, "10.9.1.2", 443).unwrap_err();
        assert!(why.contains("target lan, a network"), "{why}");
        // On the host itself only what the target lists.
        let local = "127.0.0.1:5432".parse::<SocketAddr>().unwrap();
        assert_eq!(reachable(&s, &t, "127.0.0.1", 5432), Ok(local));
        assert_eq!(reachable(&s, &t, "localhost", 5432), Ok(local));
        for hostile in ["", "a\0b", &"x".repeat(4096)] {
            assert!(reachable(&s, &t, hostile, 7000).is_err(), "{hostile:?}");
        }
        // Whatever the agent's policy admits, what means the host itself is the host's list's:
        // this policy admits every address, and each of these is still refused.
        let s = session(dir.path().join("b").as_path(), true);
        for (host, port) in [
            ("127.0.0.1", 22),
            ("127.10.0.9", 5432),
            ("169.254.169.254", 80),
            ("168.63.129.16", 80),
            ("0.0.0.0", 5432),
            ("0.1.2.3", 5432),
            ("255.255.255.255", 80),
            ("224.0.0.1", 7000),
            ("::1", 5432),
            ("::", 5432),
            ("::ffff:127.0.0.1", 22),
            ("fe80::1", 22),
            ("fd00:ec2::254", 80),
            ("ff02::1", 80),
        ] {
            let why = reachable(&s, &t, host, port).unwrap_err();
            assert!(why.contains("on the host itself"), "{host}: {why}");
        }
        assert!(
            reachable(&s, &t, "192.0.2.1", 22).is_ok(),
            "the same policy admits the rest"
        );
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
        let spelt = |a: &str| listen_spellings(a, 80);
        assert_eq!(spelt("0.0.0.0").unwrap(), ["0.0.0.0:80", "*:80"]);
        assert_eq!(spelt("").unwrap(), [":80", "*:80"]);
        assert_eq!(
            spelt("0:0:0:0:0:0:0:0").unwrap(),
            ["0:0:0:0:0:0:0:0:80", "*:80"]
        );
        assert_eq!(spelt("[::]").unwrap(), ["[::]:80", "*:80"]);
        assert_eq!(spelt("127.0.0.1").unwrap(), ["127.0.0.1:80"]);
        assert_eq!(spelt("localhost").unwrap(), ["localhost:80"]);
        assert_eq!(
            spelt("::ffff:127.0.0.1").unwrap(),
            ["::ffff:127.0.0.1:80", "127.0.0.1:80"]
        );
        // What sshd would resolve to the wildcard (or anything else) is not read: refused.
        for name in ["0", "0x0", "00.0.0.0", "example.com", "127.1"] {
            assert_eq!(spelt(name), None, "{name}");
        }
    }
}
