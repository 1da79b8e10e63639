//! What a protocol plugs into the daemon: a [`Handler`] serves an admitted session from the
//! agent's first byte to its end, and refuses, in its protocol's own words, one the daemon
//! will not run. The upstream is an [`Upstream`] the handler connects when its protocol is
//! ready for it: PostgreSQL only once the agent's startup is complete, so that an agent that
//! says nothing holds no upstream connection.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use tokio::net::TcpStream;

use super::{Phase, Session, SessionError};

/// The longest one step of a handshake may take (the agent's startup or key exchange, its
/// token, the upstream login): an agent that says nothing holds nothing for long, and a
/// stalled server does not hold the agent forever.
pub const HANDSHAKE_STEP: Duration = Duration::from_secs(10);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Handler: Send + Sync {
    /// Serves the session: the agent's handshake, then [`Upstream::connect`], then commands,
    /// until either side ends. A failure the agent should hear of is told to it here, in the
    /// protocol's words, before the error is returned for the closing record.
    fn serve<'a>(
        &'a self,
        session: &'a Session,
        agent: TcpStream,
        upstream: Upstream,
    ) -> BoxFuture<'a, Result<(), SessionError>>;

    /// Tells the agent the session will not run (the audit could not record its opening), in
    /// the protocol's own words where it has any.
    fn refuse<'a>(&'a self, agent: TcpStream, why: &'a SessionError) -> BoxFuture<'a, ()>;
}

/// Where the upstream is and how long reaching it may take.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub timeout: Duration,
    /// The target's host as the policy names it (or the address): certificates and host keys
    /// are checked against it.
    pub server_name: String,
}

impl Upstream {
    /// The upstream connection: bounded by the configured timeout, Nagle off (commands and
    /// answers are small and latency-bound).
    pub async fn connect(&self) -> Result<TcpStream, SessionError> {
        let unreachable = |why: String| SessionError::upstream(Phase::Connect, why);
        match tokio::time::timeout(self.timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("no answer within {:?}", self.timeout))),
        }
    }
}

/// Plain TCP has no way to say why; a reset (not a clean close) at least tells the agent it
/// was refused rather than served an empty answer.
pub fn reset(agent: &TcpStream) {
    let _ = socket2::SockRef::from(agent).set_linger(Some(Duration::ZERO));
}
