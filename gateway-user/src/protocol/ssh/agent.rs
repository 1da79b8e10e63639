//! The agent's side of an SSH session: russh's server, answering as the host the agent
//! dialled. Authentication needs no secret (who the agent is comes from the kernel) unless
//! the target asks for a JWT. Session channels go to the serve loop; forwarding, agent
//! forwarding, X11 and environment requests are refused here and reported for the audit.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use russh::{
    Channel, ChannelId, ChannelOpenFailure,
    server::{self, Auth, ChannelOpenHandle, Msg, Session},
};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    audit::SshRequestKind,
    identity::{TokenIdentity, token::JwtVerifier},
};

/// What the agent side tells the serve loop.
pub enum Note {
    Channel(Channel<Msg>),
    Token(TokenIdentity),
    /// A request refused here, for the audit.
    Refused {
        kind: SshRequestKind,
        what: String,
        channel: u32,
    },
}

/// Session channels one agent may hold open at once: each is a task's state here and a
/// channel upstream (OpenSSH's own server allows 10 by default).
pub const MAX_CHANNELS: usize = 32;

pub struct AgentSide {
    pub notes: UnboundedSender<Note>,
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Session channels open now; the serve loop counts them down as they end.
    pub open: Arc<AtomicUsize>,
}

impl AgentSide {
    fn refused(&self, kind: SshRequestKind, what: String, channel: Option<ChannelId>) {
        let channel = channel.map_or(0, u32::from);
        let _ = self.notes.send(Note::Refused {
            kind,
            what,
            channel,
        });
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
        let Some(jwt) = &self.jwt else {
            return Ok(Auth::Accept);
        };
        match jwt.verify(password) {
            Ok(token) => {
                let _ = self.notes.send(Note::Token(token));
                Ok(Auth::Accept)
            }
            Err(e) => {
                tracing::info!(error = %e, "SSH agent token rejected");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= MAX_CHANNELS {
            self.open.fetch_sub(1, Ordering::AcqRel);
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        reply.accept().await;
        let _ = self.notes.send(Note::Channel(channel));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _from: &str,
        _from_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        self.refused(SshRequestKind::DirectTcpip, format!("{host}:{port}"), None);
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
        self.refused(SshRequestKind::X11, String::new(), None);
        Ok(())
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
        self.refused(SshRequestKind::DirectTcpip, path.to_owned(), None);
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(
            SshRequestKind::TcpipForward,
            format!("{address}:{port}"),
            None,
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(SshRequestKind::TcpipForward, path.to_owned(), None);
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(SshRequestKind::AgentForward, String::new(), Some(channel));
        Ok(false)
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
        self.refused(SshRequestKind::X11, String::new(), Some(channel));
        session.channel_failure(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // The value stays out of the audit: variables carry tokens as often as locales.
        self.refused(SshRequestKind::Env, name.to_owned(), Some(channel));
        session.channel_failure(channel)
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
