//! One SSH session through the gateway: the daemon logs in to the real host first (so an
//! unreachable host or a changed host key reaches the agent as an SSH disconnect naming why),
//! then answers the agent as that host with a certificate from its host CA, and serves each
//! session channel ([`super::channel`]) until the agent leaves.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock, atomic::AtomicUsize},
    time::Duration,
};

use futures_util::{StreamExt as _, stream::FuturesUnordered};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{Semaphore, mpsc},
};

use super::{
    agent::{AgentSide, MAX_CHANNELS, Note},
    ca::HostCa,
    channel,
    config::SshTarget,
    forward,
    grants::{Granted, HostNote, MAX_HOST_CHANNELS},
    record::{Recorder, detail},
    upstream,
};
use crate::{
    identity::Who,
    rules::Action,
    session::{BoxFuture, HANDSHAKE_STEP, Handler, Phase, Session, SessionError, Source, Upstream},
};

/// The ciphers offered to agents: AES-GCM only, which `ring` runs on the CPU's AES
/// instructions. OpenSSH clients pick the first of their own list the server offers, and
/// would otherwise pick ChaCha20-Poly1305 (a software cipher here), costing throughput on a
/// leg that is local anyway.
const AGENT_CIPHERS: &[russh::cipher::Name] =
    &[russh::cipher::AES_256_GCM, russh::cipher::AES_128_GCM];

/// What SSH sessions share: the host CA (or why it could not be loaded), loaded when the
/// first policy with an SSH target is, so a daemon without one never writes a CA.
pub struct Shared {
    path: PathBuf,
    ca: OnceLock<Result<HostCa, String>>,
}

impl Shared {
    pub fn new(path: &Path) -> Shared {
        Shared {
            path: path.to_owned(),
            ca: OnceLock::new(),
        }
    }

    pub fn ca(&self) -> Result<&HostCa, &str> {
        self.ca
            .get_or_init(|| {
                let ca = HostCa::load_or_create(&self.path);
                if let Err(e) = &ca {
                    tracing::error!(error = %e, "SSH targets will be refused");
                }
                ca
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

pub struct Ssh<'a> {
    shared: &'a Shared,
    target: Arc<SshTarget>,
}

impl<'a> Ssh<'a> {
    pub fn new(shared: &'a Shared, target: Arc<SshTarget>) -> Ssh<'a> {
        Ssh { shared, target }
    }
}

impl Handler for Ssh<'_> {
    fn serve<'a>(
        &'a self,
        session: &'a Session,
        agent: TcpStream,
        upstream: Upstream,
    ) -> BoxFuture<'a, Result<(), SessionError>> {
        Box::pin(run(self, session, agent, upstream))
    }

    fn refuse<'a>(&'a self, agent: TcpStream, why: &'a SessionError) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let text = match why.source {
                Source::Audit => "the audit store cannot record this session, so it does not run",
                _ => "the session was refused",
            };
            disconnect(agent, text).await;
        })
    }
}

async fn run(
    p: &Ssh<'_>,
    session: &Session,
    agent: TcpStream,
    up: Upstream,
) -> Result<(), SessionError> {
    let ca = match p.shared.ca() {
        Ok(ca) => ca,
        Err(e) => {
            disconnect(agent, "the gateway's SSH host CA is not available").await;
            return Err(SessionError::new(Source::Internal, Phase::Handshake, e));
        }
    };
    // The agent's version line first: a connection that does not speak SSH costs the host
    // no login. Then the daemon's own login, so the agent hears why in SSH's words if it fails.
    let mut agent = agent;
    let version = match tokio::time::timeout(HANDSHAKE_STEP, version_line(&mut agent)).await {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => return Err(SessionError::agent(Phase::Handshake, why)),
        Err(_) => {
            return Err(SessionError::agent(
                Phase::Handshake,
                "no SSH version line within the bound",
            ));
        }
    };
    let tcp = match up.connect().await {
        Ok(t) => t,
        Err(e) => {
            let what = format!(
                "upstream {} is unreachable: {}",
                session.admitted.target, e.what
            );
            disconnect(agent, &what).await;
            return Err(e);
        }
    };
    // Channels the host opens back (forwards the session granted) come through `back`.
    let open = Arc::new(Semaphore::new(MAX_CHANNELS));
    let host_open = Arc::new(Semaphore::new(MAX_HOST_CHANNELS));
    let granted = Arc::new(Granted::default());
    let (host_notes, mut from_host) = mpsc::unbounded_channel();
    let back = upstream::Back {
        granted: granted.clone(),
        notes: host_notes,
        open: open.clone(),
        host_open,
    };
    let login = upstream::login(&p.target, tcp, &up.server_name, up.addr.port(), back);
    let host = match tokio::time::timeout(HANDSHAKE_STEP, login).await {
        Ok(Ok(h)) => Arc::new(h),
        Ok(Err(e)) => {
            disconnect(agent, &format!("upstream {}: {e}", session.admitted.target)).await;
            return Err(SessionError::upstream(Phase::Connect, e));
        }
        Err(_) => {
            let what = format!("upstream login not complete within {HANDSHAKE_STEP:?}");
            disconnect(agent, &what).await;
            return Err(SessionError::upstream(Phase::Connect, what));
        }
    };
    let principals = principals(up.addr.ip(), &up.server_name);
    let cert = ca
        .certificate(&principals)
        .map_err(|e| SessionError::new(Source::Internal, Phase::Handshake, e))?;
    let config = Arc::new(russh::server::Config {
        keys: vec![ca.host_key().clone()],
        certificates: vec![cert],
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(AGENT_CIPHERS),
            ..Default::default()
        },
        ..Default::default()
    });
    let (notes, mut inbox) = mpsc::unbounded_channel();
    let refusals = Arc::new(AtomicUsize::new(0));
    let side = AgentSide {
        notes,
        jwt: p.target.jwt.clone().map(Arc::new),
        open: open.clone(),
        target: p.target.clone(),
        host: host.clone(),
        granted: granted.clone(),
        who: Who::default(),
        refusals: refusals.clone(),
    };
    let running = match tokio::time::timeout(
        HANDSHAKE_STEP,
        russh::server::run_stream(config, unread(version, agent), side),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(SessionError::agent(Phase::Handshake, e)),
        Err(_) => {
            return Err(SessionError::agent(
                Phase::Handshake,
                "SSH handshake not complete within the bound",
            ));
        }
    };
    let recorder = Recorder::new(p.target.record_limit);
    let to_agent = running.handle();
    let forwards = forward::Forwards {
        s: session,
        target: &p.target,
        host: &host,
        rec: &recorder,
        refusals: &refusals,
    };
    let mut channels: FuturesUnordered<BoxFuture<'_, Result<(), SessionError>>> =
        FuturesUnordered::new();
    tokio::pin!(running);
    let ended = loop {
        tokio::select! {
            r = &mut running => break r,
            Some(note) = inbox.recv() => match note {
                Note::Channel(c, slot) => {
                    let ch = channel::serve(session, &p.target, &host, c, &recorder, &granted);
                    channels.push(Box::pin(holding(slot, ch)));
                }
                Note::Direct { channel, slot, reply, to, from } => {
                    channels.push(Box::pin(holding(slot, forwards.direct(channel, reply, to, from))));
                }
                Note::Token(t) => session.set_token(t),
                Note::Judged { kind, what, rule, refused } => {
                    let verdict = if refused.is_some() { Action::Deny } else { Action::Allow };
                    let mut e = session.event(verdict, &rule, detail(0, kind, &what, 0, 0));
                    e.error = refused;
                    record(session, e)?;
                }
            },
            Some(note) = from_host.recv() => match note {
                HostNote::Opened(opened, rule, slots) => {
                    let f = forward::from_host(session, &recorder, &to_agent, opened, rule);
                    channels.push(Box::pin(holding(slots, f)));
                }
                HostNote::Refused { kind, what } => {
                    let mut e = session.event(Action::Deny, "not-granted", detail(0, kind, &what, 0, 0));
                    e.error = Some("the host opened a channel the session did not grant".into());
                    record(session, e)?;
                }
            },
            Some(r) = channels.next(), if !channels.is_empty() => r?,
        }
    };
    // The agent is gone: its channels end now; let them write how they ended.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(r) = channels.next().await {
            if let Err(e) = r {
                tracing::warn!(session.id = session.admitted.id, error = %e, "SSH channel");
            }
        }
    })
    .await;
    let _ = host
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    match ended {
        Ok(()) => Ok(()),
        Err(e) => Err(SessionError::agent(Phase::Serve, e)),
    }
}

/// The names the agent may have dialled the host by: its address, the policy's name for it,
/// and that name's first label (`ssh web-1` with a search domain, where the policy says
/// `web-1.internal`): OpenSSH checks the certificate against the name as typed.
fn principals(ip: std::net::IpAddr, name: &str) -> Vec<String> {
    let mut principals = vec![ip.to_string()];
    if name.parse::<std::net::IpAddr>().is_err() {
        principals.push(name.to_owned());
        if let Some((short, _)) = name.split_once('.') {
            principals.push(short.to_owned());
        }
    }
    principals
}

/// A channel's work, holding its places among the session's channels until it ends.
async fn holding<S, T>(slot: S, work: impl Future<Output = T>) -> T {
    let r = work.await;
    drop(slot);
    r
}

pub(super) fn record(session: &Session, event: crate::audit::Event) -> Result<(), SessionError> {
    session
        .record(event)
        .map_err(|e| SessionError::audit(Phase::Serve, e))
}

/// The agent's stream with the bytes already read from it put back in front.
fn unread(
    read: Vec<u8>,
    agent: TcpStream,
) -> impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    let (rd, wr) = agent.into_split();
    tokio::io::join(std::io::Cursor::new(read).chain(rd), wr)
}

/// Reads until the client's version line (`SSH-2.0-...`) is complete; returns every byte read
/// (the client may already have sent its key exchange after it).
async fn version_line(agent: &mut TcpStream) -> Result<Vec<u8>, String> {
    // RFC 4253: at most 255 bytes, and a server may send lines before its own; a client may not.
    let mut read = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    loop {
        let n = agent.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before its SSH version line".into());
        }
        read.extend_from_slice(&buf[..n]);
        if let Some(end) = read.iter().position(|&b| b == b'\n') {
            return if read.starts_with(b"SSH-2.0-") && end < 255 {
                Ok(read)
            } else {
                Err("not an SSH-2.0 version line".into())
            };
        }
        if read.len() >= 255 {
            return Err("a version line longer than 255 bytes".into());
        }
    }
}

/// Refuses before any key exchange, in SSH's words: the version line, then an unencrypted
/// SSH_MSG_DISCONNECT (allowed before the first NEWKEYS), which OpenSSH prints as
/// "Received disconnect from ...: <why>".
pub async fn disconnect(mut agent: TcpStream, why: &str) {
    let mut payload = vec![1u8]; // SSH_MSG_DISCONNECT
    payload.extend_from_slice(&11u32.to_be_bytes()); // SSH_DISCONNECT_BY_APPLICATION
    let text = format!("gatewayd: {why}");
    payload.extend_from_slice(&(text.len() as u32).to_be_bytes());
    payload.extend_from_slice(text.as_bytes());
    payload.extend_from_slice(&0u32.to_be_bytes()); // language tag
    // packet_length (4) + padding_length (1) + payload + padding: a multiple of 8, padding >= 4.
    let mut padding = 8 - (5 + payload.len()) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut out = b"SSH-2.0-gatewayd\r\n".to_vec();
    out.extend_from_slice(&((1 + payload.len() + padding) as u32).to_be_bytes());
    out.push(padding as u8);
    out.extend_from_slice(&payload);
    out.extend(std::iter::repeat_n(0u8, padding));
    let _ = tokio::time::timeout(Duration::from_secs(2), agent.write_all(&out)).await;
    let _ = agent.shutdown().await;
    // Read what the client sent meanwhile (its version, its KEXINIT) until it closes: closing
    // with unread bytes would reset the connection before it reads why.
    let drain = async {
        let mut buf = [0u8; 4096];
        while matches!(agent.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn certificates_name_the_host_as_an_agent_may_dial_it() {
        let ip = "10.0.0.5".parse().unwrap();
        assert_eq!(super::principals(ip, "10.0.0.5"), ["10.0.0.5"]);
        assert_eq!(
            super::principals(ip, "web-1.internal"),
            ["10.0.0.5", "web-1.internal", "web-1"]
        );
        assert_eq!(super::principals(ip, "web-1"), ["10.0.0.5", "web-1"]);
    }
}
