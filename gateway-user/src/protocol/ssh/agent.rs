//! The agent's side of an SSH session: russh's server, answering as the host the agent
//! dialled. Authentication needs no secret (who the agent is comes from the kernel) unless
//! the target asks for a JWT (as the password or a keyboard-interactive answer). Session and
//! forwarded channels go to the serve loop; requests SSH wants answered at once (a listening
//! port, a channel's env, agent and X11 requests) are judged here ([`forward::judge_now`]).

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use russh::{
    Channel, ChannelId, ChannelOpenFailure,
    server::{self, Auth, ChannelOpenHandle, Msg, Response, Session},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc::UnboundedSender};

use super::{config::SshTarget, forward, grants::Granted, upstream::Upstream};
use crate::{
    audit::SshRequestKind,
    identity::{TokenIdentity, Who, token::JwtVerifier},
    session::HANDSHAKE_STEP,
};

/// What the agent side tells the serve loop.
pub enum Note {
    /// A session channel, with its place among the session's channels.
    Channel(Channel<Msg>, Slot),
    /// A `direct-tcpip` channel, answered once the serve loop has judged it.
    Direct {
        channel: Channel<Msg>,
        slot: Slot,
        reply: ChannelOpenHandle,
        to: (String, u32),
        from: (String, u32),
    },
    Token(TokenIdentity),
    /// A request judged here, for the audit: the rule, and why it was refused if it was.
    Judged {
        kind: SshRequestKind,
        what: String,
        rule: String,
        refused: Option<String>,
    },
}

/// Session channels one agent may hold open at once: each is a task's state here and a
/// channel upstream (OpenSSH's own server allows 10 by default).
pub const MAX_CHANNELS: usize = 32;

/// A channel's place among those of its session (see [`MAX_CHANNELS`]): given back when the
/// channel's work is dropped, however it ends.
pub type Slot = OwnedSemaphorePermit;

pub struct AgentSide {
    pub notes: UnboundedSender<Note>,
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Places for the session's channels (the agent's and those the host opened back).
    pub open: Arc<Semaphore>,
    pub target: Arc<SshTarget>,
    pub host: Arc<Upstream>,
    pub granted: Arc<Granted>,
    /// The agent as rules see it: who its token says, once one verified.
    pub who: Who,
    /// Requests of this session refused so far (here and by its forwards).
    pub refusals: Arc<AtomicUsize>,
}

/// Requests one session may have refused before it is ended.
pub const MAX_REFUSALS: usize = 64;

impl AgentSide {
    /// Records a request refused here, and ends the session past [`MAX_REFUSALS`]: refusals
    /// cost the agent nothing, and each is an audit event.
    fn refused(
        &mut self,
        kind: SshRequestKind,
        what: String,
        rule: String,
        why: String,
    ) -> Result<(), russh::Error> {
        let over = self.refusals.fetch_add(1, Ordering::Relaxed) + 1 > MAX_REFUSALS;
        let why = if over {
            format!("{why}; past {MAX_REFUSALS} refused requests the session is ended")
        } else {
            why
        };
        let _ = self.notes.send(Note::Judged {
            kind,
            what,
            rule,
            refused: Some(why),
        });
        if over {
            Err(russh::Error::Disconnect)
        } else {
            Ok(())
        }
    }

    fn unsupported(&mut self, kind: SshRequestKind, what: String) -> Result<(), russh::Error> {
        let why = "the gateway does not forward this request".to_owned();
        self.refused(kind, what, "not-supported".into(), why)
    }

    /// Judges a request answered at once; channel requests are recorded by their channel,
    /// which judges them the same way.
    fn allows(
        &self,
        kind: SshRequestKind,
        texts: &[String],
    ) -> Result<String, (String, &'static str)> {
        forward::judge_now(&self.target, &self.who, kind, texts)
    }

    fn token(&mut self, token: &str) -> Auth {
        let Some(jwt) = &self.jwt else {
            return Auth::Accept;
        };
        match jwt.verify(token) {
            Ok(token) => {
                self.who = token.who();
                let _ = self.notes.send(Note::Token(token));
                Auth::Accept
            }
            Err(e) => {
                tracing::info!(error = %e, "SSH agent token rejected");
                Auth::reject()
            }
        }
    }

    fn open(&self) -> Auth {
        if self.jwt.is_some() {
            Auth::reject()
        } else {
            Auth::Accept
        }
    }
}

impl server::Handler for AgentSide {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(self.open())
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _key: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.open())
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.open())
    }

    async fn auth_password(&mut self, _user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self.token(password))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        if self.jwt.is_none() {
            return Ok(Auth::Accept);
        }
        let Some(mut answers) = response else {
            return Ok(Auth::Partial {
                name: "gatewayd".into(),
                instructions: "The gateway asks for the agent's token (a JWT).".into(),
                prompts: vec![("Token: ".into(), false)].into(),
            });
        };
        let answer = answers.next().unwrap_or_default();
        let Ok(token) = std::str::from_utf8(&answer) else {
            return Ok(Auth::reject());
        };
        Ok(self.token(token))
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(slot) = self.open.clone().try_acquire_owned() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        reply.accept().await;
        let _ = self.notes.send(Note::Channel(channel, slot));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        from: &str,
        from_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Ok(slot) = self.open.clone().try_acquire_owned() else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        let _ = self.notes.send(Note::Direct {
            channel,
            slot,
            reply,
            to: (host.to_owned(), port),
            from: (from.to_owned(), from_port),
        });
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _from: &str,
        _from_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        self.unsupported(SshRequestKind::X11, String::new())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        // A socket on the host is no address the agent's connection policy can judge.
        self.unsupported(SshRequestKind::DirectTcpip, path.to_owned())
    }

    /// A port for the host to listen on (`ssh -R`): if a rule allows it, reserved and asked
    /// of the host (the agent's session waits for its answer, within a bound); connections to
    /// it then come back through [`forward::from_host`].
    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let what = format!("{address}:{port}");
        let kind = SshRequestKind::TcpipForward;
        let Some(spellings) = forward::listen_spellings(address, *port) else {
            let why = format!(
                "listening on {what}: give an address, localhost or * (names are not read)"
            );
            self.refused(kind, what, "forward-destination".into(), why)?;
            return Ok(false);
        };
        let rule = match self.allows(kind, &spellings) {
            Ok(rule) => rule,
            Err((rule, why)) => {
                self.refused(
                    kind,
                    what.clone(),
                    rule,
                    format!("listening on {what} {why}"),
                )?;
                return Ok(false);
            }
        };
        // Reserved before the host is asked: it may open the first connection back before its
        // answer to this request reaches here.
        let id = match self.granted.reserve(address, *port, &rule) {
            Ok(id) => id,
            Err(why) => {
                self.refused(
                    kind,
                    what.clone(),
                    rule,
                    format!("listening on {what}: {why}"),
                )?;
                return Ok(false);
            }
        };
        let asked = tokio::time::timeout(HANDSHAKE_STEP, self.host.tcpip_forward(address, *port));
        let given = match asked.await {
            Ok(Ok(given)) => given,
            Ok(Err(e)) => {
                self.granted.release(id);
                self.refused(kind, what, rule, format!("the host refused to listen: {e}"))?;
                return Ok(false);
            }
            Err(_) => {
                self.granted.release(id);
                let why = format!("the host did not answer within {HANDSHAKE_STEP:?}");
                self.refused(kind, what, rule, why)?;
                return Ok(false);
            }
        };
        if *port == 0 {
            self.granted.confirm(id, given);
            *port = given;
        }
        let what = format!("{address}:{port}");
        let _ = self.notes.send(Note::Judged {
            kind,
            what,
            rule,
            refused: None,
        });
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(id) = self.granted.find(address, port) else {
            return Ok(false);
        };
        self.granted.release(id);
        let cancel = tokio::time::timeout(
            HANDSHAKE_STEP,
            self.host.cancel_tcpip_forward(address, port),
        );
        let done = matches!(cancel.await, Ok(Ok(())));
        let _ = self.notes.send(Note::Judged {
            kind: SshRequestKind::TcpipForward,
            what: format!("cancel {address}:{port}"),
            rule: "cancel".into(),
            refused: (!done).then(|| "the host did not cancel it".to_owned()),
        });
        Ok(done)
    }

    async fn streamlocal_forward(
        &mut self,
        path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.unsupported(SshRequestKind::TcpipForward, path.to_owned())?;
        Ok(false)
    }

    // A channel's agent, X11 and env requests: answered here, recorded and passed on to the
    // host by the channel (channel.rs), which judges them the same way.
    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self
            .allows(SshRequestKind::AgentForward, &[String::new()])
            .is_ok())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.allows(SshRequestKind::X11, &[String::new()]) {
            Ok(_) => session.channel_success(channel),
            Err(_) => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let odd = name.is_empty() || name.contains(['=', '\0']);
        match self.allows(SshRequestKind::Env, &[format!("{name}={value}")]) {
            Ok(_) if odd => session.channel_failure(channel),
            Ok(_) => session.channel_success(channel),
            Err(_) => session.channel_failure(channel),
        }
    }

    // The requests the serve loop judges: accepted here (the channel's messages carry them
    // to the loop), refused there with a message on stderr and exit status 1.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_w: u32,
        _pix_h: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }
}
