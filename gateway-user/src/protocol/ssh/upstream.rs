//! The daemon's own login to the real host: the host key checked against the target's
//! known_hosts file or pinned fingerprints (an unknown or changed key refuses the session and
//! says why), then the daemon's credential: a key file, a short-lived certificate from a user
//! CA, or a password. Files are read off the async workers, at each session.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use russh::{
    Channel, ChannelOpenFailure,
    client::{self, AuthResult, Handle, Msg, Session},
    keys::{
        HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
        ssh_key::certificate::CertType,
    },
};
use tokio::{
    net::TcpStream,
    sync::{Semaphore, mpsc::UnboundedSender},
};

use super::{
    agent::MAX_REFUSALS,
    ca,
    config::{HostTrust, SshTarget, UpstreamAuth},
    grants::{Granted, HostChannel, HostNote},
    rules::RequestKind,
};
use crate::rules::Action;

/// How channels the host opens reach the session: only those the session granted (an agent
/// or X11 channel after an allowed request, a connection to an allowed listening port), within
/// [`MAX_HOST_CHANNELS`] and the session's own bound. The rest are refused and reported: a
/// host cannot open a channel to the agent it was not asked for, and one that keeps trying is
/// cut off after [`MAX_REFUSALS`].
#[derive(Clone)]
pub struct Back {
    pub granted: Arc<Granted>,
    pub notes: UnboundedSender<HostNote>,
    /// Places for every channel of the session (the agent's and the host's), and for the
    /// host's alone ([`MAX_HOST_CHANNELS`]).
    pub open: Arc<Semaphore>,
    pub host_open: Arc<Semaphore>,
}

/// Checks the host's key as the target says; remembers why it refused.
pub struct Verifier {
    trust: HostTrust,
    host: String,
    port: u16,
    refused: Arc<Mutex<Option<String>>>,
    back: Back,
    /// Channels it opened that nothing granted.
    refusals: usize,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        address: &str,
        port: u32,
        from: &str,
        from_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let opened = HostChannel::Forwarded {
            channel,
            address: address.to_owned(),
            port,
            from: from.to_owned(),
            from_port,
        };
        self.take(opened, reply).await
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        channel: Channel<Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.take(HostChannel::Agent(channel), reply).await
    }

    async fn server_channel_open_x11(
        &mut self,
        channel: Channel<Msg>,
        from: &str,
        from_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let opened = HostChannel::X11 {
            channel,
            from: from.to_owned(),
            from_port,
        };
        self.take(opened, reply).await
    }

    // Channels a client never asks for: refused (russh's default would accept them).
    async fn server_channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.unasked(RequestKind::Shell, "a session channel".into(), reply)
            .await
    }

    async fn server_channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _from: &str,
        _fromport: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.unasked(RequestKind::DirectTcpip, format!("{host}:{port}"), reply)
            .await
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.unasked(RequestKind::TcpipForward, path.to_owned(), reply)
            .await
    }

    async fn server_channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        path: &str,
        reply: client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.unasked(RequestKind::DirectTcpip, path.to_owned(), reply)
            .await
    }

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // The daemon asks for plain host keys; a certificate is not what it pinned.
            PublicKeyOrCertificate::Certificate(_) => {
                self.refuse("the host offered a certificate, not a pinned key".into());
                return Ok(false);
            }
        };
        let verdict = match &self.trust {
            HostTrust::Fingerprints(pins) => {
                let seen = key.fingerprint(HashAlg::Sha256).to_string();
                if pins.contains(&seen) {
                    Ok(())
                } else {
                    Err(format!("its key {seen} is not one the policy pins"))
                }
            }
            HostTrust::KnownHosts(path) => {
                let (host, port, path) = (self.host.clone(), self.port, path.clone());
                let check = move || russh::keys::check_known_hosts_path(&host, port, &key, &path);
                match tokio::task::spawn_blocking(check).await {
                    Ok(Ok(true)) => Ok(()),
                    Ok(Ok(false)) => Err("its key is not in the target's known_hosts".into()),
                    Ok(Err(russh::keys::Error::KeyChanged { line })) => Err(format!(
                        "its key CHANGED from the one on line {line} of the target's known_hosts"
                    )),
                    Ok(Err(e)) => Err(format!("known_hosts: {e}")),
                    Err(e) => Err(format!("known_hosts: {e}")),
                }
            }
        };
        match verdict {
            Ok(()) => Ok(true),
            Err(why) => {
                self.refuse(why);
                Ok(false)
            }
        }
    }
}

impl Verifier {
    /// Accepts a channel the host opened if the session granted it and the bounds have room.
    async fn take(
        &mut self,
        opened: HostChannel,
        reply: client::ChannelOpenHandle,
    ) -> Result<(), russh::Error> {
        let Some(rule) = self.back.granted.rule_for(&opened) else {
            return self.unasked(opened.kind(), opened.describe(), reply).await;
        };
        let slots = self
            .back
            .host_open
            .clone()
            .try_acquire_owned()
            .and_then(|host| Ok([host, self.back.open.clone().try_acquire_owned()?]));
        let Ok(slots) = slots else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        reply.accept().await;
        let _ = self.back.notes.send(HostNote::Opened(opened, rule, slots));
        Ok(())
    }

    /// Refuses a channel the host opened that nothing granted, reports it for the audit, and
    /// cuts the host off past [`MAX_REFUSALS`].
    async fn unasked(
        &mut self,
        kind: RequestKind,
        what: String,
        reply: client::ChannelOpenHandle,
    ) -> Result<(), russh::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        self.refusals += 1;
        tracing::warn!(
            ?kind,
            what,
            "the SSH host opened a channel the session did not grant"
        );
        let _ = self.back.notes.send(HostNote::Refused { kind, what });
        if self.refusals > MAX_REFUSALS {
            Err(russh::Error::Disconnect)
        } else {
            Ok(())
        }
    }

    fn refuse(&self, why: String) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

/// Why logging in upstream failed, in words for the agent and the audit (never a path or the
/// credential itself: those go to the daemon's log).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the host could not be verified: {0}")]
    HostKey(String),
    #[error("the host refused the gateway's credential")]
    Refused,
    #[error("the gateway's credential for this target is not available")]
    Credential,
    #[error("SSH: {0}")]
    Protocol(String),
}

pub type Upstream = Handle<Verifier>;

/// Logs in to the host over `tcp` (already connected to `host:port`).
pub async fn login(
    target: &SshTarget,
    tcp: TcpStream,
    host: &str,
    port: u16,
    back: Back,
) -> Result<Upstream, LoginError> {
    let refused = Arc::new(Mutex::new(None));
    let verifier = Verifier {
        trust: target.trust.clone(),
        host: host.to_owned(),
        port,
        refused: refused.clone(),
        back,
        refusals: 0,
    };
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        // AES-GCM first (hardware AES through ring), ChaCha20-Poly1305 for hosts without it.
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::AES_128_GCM,
                russh::cipher::CHACHA20_POLY1305,
            ]),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut handle = match client::connect_stream(config, tcp, verifier).await {
        Ok(h) => h,
        Err(e) => {
            return Err(
                match refused.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    Some(why) => LoginError::HostKey(why),
                    None => LoginError::Protocol(e.to_string()),
                },
            );
        }
    };
    let user = target.user.clone();
    let result = match &target.auth {
        UpstreamAuth::Key(path) => {
            let key = read_key(path.clone()).await?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| LoginError::Protocol(e.to_string()))?
                .flatten();
            handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
        }
        UpstreamAuth::UserCa {
            ca: ca_path,
            lifetime,
        } => {
            let ca_key = read_key(ca_path.clone()).await?;
            let key = ca::ed25519().map_err(LoginError::Protocol)?;
            let cert = user_certificate(
                &ca_key,
                key.public_key(),
                &target.user,
                *lifetime,
                &permits(target),
            )
            .map_err(LoginError::Protocol)?;
            handle
                .authenticate_openssh_cert(user, Arc::new(key), cert)
                .await
        }
        UpstreamAuth::Password(c) => {
            let pw = c.read().await.map_err(|e| {
                tracing::warn!(error = %e, "SSH upstream password");
                LoginError::Credential
            })?;
            let pw = String::from_utf8(pw).map_err(|_| LoginError::Credential)?;
            handle.authenticate_password(user, pw).await
        }
    };
    match result {
        Ok(AuthResult::Success) => Ok(handle),
        Ok(AuthResult::Failure { .. }) => Err(LoginError::Refused),
        Err(e) => Err(LoginError::Protocol(e.to_string())),
    }
}

async fn read_key(path: std::path::PathBuf) -> Result<PrivateKey, LoginError> {
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || russh::keys::load_secret_key(&path, None))
        .await
        .map_err(|e| LoginError::Protocol(e.to_string()))?
        .map_err(|e| {
            tracing::warn!(path = %shown, error = %e, "SSH upstream key");
            LoginError::Credential
        })
}

/// What the session's certificate lets the host do: a terminal always, forwarding only what
/// some allow or hold rule of the target could let through (the rules still judge each
/// request).
fn permits(target: &SshTarget) -> Vec<&'static str> {
    let allows = |kinds: &[RequestKind]| {
        target.rules.iter().any(|r| {
            matches!(r.action, Action::Allow | Action::Hold)
                && kinds.iter().any(|k| r.kinds.contains(k))
        })
    };
    let mut permits = vec!["permit-pty"];
    if allows(&[RequestKind::DirectTcpip, RequestKind::TcpipForward]) {
        permits.push("permit-port-forwarding");
    }
    if allows(&[RequestKind::AgentForward]) {
        permits.push("permit-agent-forwarding");
    }
    if allows(&[RequestKind::X11]) {
        permits.push("permit-X11-forwarding");
    }
    permits
}

/// A certificate for `user`, valid from a minute ago for `lifetime`, with `permits`.
fn user_certificate(
    ca: &PrivateKey,
    key: &PublicKey,
    user: &str,
    lifetime: Duration,
    permits: &[&str],
) -> Result<russh::keys::Certificate, String> {
    let now = SystemTime::now();
    ca::sign(
        ca,
        key,
        CertType::User,
        &format!("gatewayd:{user}"),
        &[user.to_owned()],
        (now - Duration::from_secs(60), now + lifetime),
        permits,
    )
}

#[cfg(test)]
mod tests {
    //! The host's side here is russh's server in this process, not sshd: no real server opens
    //! channels a client did not ask for, which is the attack tested.

    use russh::{
        keys::{HashAlg, ssh_key::LineEnding},
        server,
    };
    use tokio::sync::mpsc;

    use super::*;
    use crate::protocol::ssh::{agent::MAX_CHANNELS, config::SshFile, grants::MAX_HOST_CHANNELS};

    /// A host that lets the daemon's key in, then does what the test tells it.
    struct Host;

    impl server::Handler for Host {
        type Error = russh::Error;

        async fn auth_publickey_offered(
            &mut self,
            _: &str,
            _: server::PublicKeyOffer<'_>,
        ) -> Result<server::Auth, Self::Error> {
            Ok(server::Auth::Accept)
        }

        async fn auth_publickey(
            &mut self,
            _: &str,
            _: server::VerifiedPublicKey<'_>,
        ) -> Result<server::Auth, Self::Error> {
            Ok(server::Auth::Accept)
        }
    }

    /// What the daemon's side reported next; a report that never comes fails, not hangs.
    async fn next(heard: &mut mpsc::UnboundedReceiver<HostNote>) -> HostNote {
        tokio::time::timeout(std::time::Duration::from_secs(5), heard.recv())
            .await
            .expect("a report of the channel")
            .unwrap()
    }

    #[tokio::test]
    async fn the_host_opens_only_channels_the_session_granted() {
        let dir = tempfile::tempdir().unwrap();
        let host_key = ca::ed25519().unwrap();
        let daemon_key = ca::ed25519().unwrap();
        let key_file = dir.path().join("daemon_key");
        std::fs::write(&key_file, daemon_key.to_openssh(LineEnding::LF).unwrap()).unwrap();
        let pin = host_key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string();
        let file: SshFile = toml::from_str(&format!(
            "user = \"deploy\"\nkey_file = \"{}\"\nhost_keys = [\"{pin}\"]",
            key_file.display()
        ))
        .unwrap();
        let target = SshTarget::validate(file).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(server::Config {
            keys: vec![host_key],
            ..Default::default()
        });
        let host = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let running = server::run_stream(config, tcp, Host).await.unwrap();
            (running.handle(), running)
        });
        let granted = Arc::new(Granted::default());
        let (notes, mut heard) = mpsc::unbounded_channel();
        let back = Back {
            granted: granted.clone(),
            notes,
            open: Arc::new(Semaphore::new(MAX_CHANNELS)),
            host_open: Arc::new(Semaphore::new(MAX_HOST_CHANNELS)),
        };
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _daemon = login(&target, tcp, "127.0.0.1", addr.port(), back)
            .await
            .unwrap();
        let (to_daemon, _running) = host.await.unwrap();

        // Nothing granted: an agent channel, a connection on a port nobody asked to listen
        // on, a session channel: each refused, each reported.
        assert!(to_daemon.channel_open_agent().await.is_err());
        let forwarded = || to_daemon.channel_open_forwarded_tcpip("127.0.0.1", 8080, "10.0.0.9", 5);
        assert!(forwarded().await.is_err());
        assert!(to_daemon.channel_open_session().await.is_err());
        assert!(to_daemon.channel_open_x11("10.0.0.9", 6000).await.is_err());
        let direct = to_daemon.channel_open_direct_tcpip("10.0.0.9", 22, "10.0.0.1", 5);
        assert!(direct.await.is_err());
        let unix = to_daemon.channel_open_forwarded_streamlocal("/run/x.sock");
        assert!(unix.await.is_err());
        for want in [
            RequestKind::AgentForward,
            RequestKind::TcpipForward,
            RequestKind::Shell,
            RequestKind::X11,
            RequestKind::DirectTcpip,
            RequestKind::TcpipForward,
        ] {
            match next(&mut heard).await {
                HostNote::Refused { kind, .. } => assert_eq!(kind, want),
                HostNote::Opened(..) => panic!("{want:?} was let through"),
            }
        }
        // The port granted: connections on it are taken, with the rule that granted it, up to
        // the host's share of the session's channels.
        granted.reserve("127.0.0.1", 8080, "listen").unwrap();
        let mut taken = Vec::new();
        for _ in 0..MAX_HOST_CHANNELS {
            let _agent_side = forwarded().await.unwrap();
            match next(&mut heard).await {
                HostNote::Opened(opened, rule, slots) => {
                    assert_eq!(
                        (opened.kind(), rule.as_str()),
                        (RequestKind::TcpipForward, "listen")
                    );
                    // Held as the serve loop holds them while the channel runs.
                    taken.push((opened, slots));
                }
                HostNote::Refused { .. } => panic!("the granted port was refused"),
            }
        }
        assert!(forwarded().await.is_err(), "past the host's share");
        // One ends: its places come back, and the next connection is taken.
        taken.pop();
        assert!(
            forwarded().await.is_ok(),
            "a place given back is taken again"
        );
    }
}
