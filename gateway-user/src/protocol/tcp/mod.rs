//! Plain TCP targets: bytes relayed both ways, counted for the audit. The connection is the
//! unit of policy, so there is nothing to judge after the daemon's verdict.

use std::io;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

use crate::session::{
    BoxFuture, Handler, Phase, Session, SessionError, Source, Upstream, handler::reset,
};

/// The handler of `tcp` targets.
pub struct Tcp;

impl Handler for Tcp {
    fn serve<'a>(
        &'a self,
        session: &'a Session,
        agent: TcpStream,
        upstream: Upstream,
    ) -> BoxFuture<'a, Result<(), SessionError>> {
        Box::pin(async move {
            let upstream = match upstream.connect().await {
                Ok(s) => s,
                Err(e) => {
                    reset(&agent);
                    return Err(e);
                }
            };
            let _ = agent.set_nodelay(true);
            let out = relay(agent, upstream).await;
            session.add_up(out.bytes_up);
            session.add_down(out.bytes_down);
            match out.error {
                None => Ok(()),
                Some((Side::Agent, e)) => Err(SessionError::new(Source::Agent, Phase::Serve, e)),
                Some((Side::Upstream, e)) => {
                    Err(SessionError::new(Source::Upstream, Phase::Serve, e))
                }
            }
        })
    }

    fn refuse<'a>(&'a self, agent: TcpStream, _why: &'a SessionError) -> BoxFuture<'a, ()> {
        Box::pin(async move { reset(&agent) })
    }
}

/// Big enough for bulk transfers to run at memory speed, small enough per session.
const BUF_SIZE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Agent,
    Upstream,
}

#[derive(Debug)]
pub struct RelayOutcome {
    /// Agent to upstream.
    pub bytes_up: u64,
    /// Upstream to agent.
    pub bytes_down: u64,
    /// The first failure, and which side it came from.
    pub error: Option<(Side, io::Error)>,
}

/// Copies both ways until both directions have ended. A half-close is passed on (the other
/// direction keeps flowing); a failure on one side ends both.
pub async fn relay(agent: TcpStream, upstream: TcpStream) -> RelayOutcome {
    let (agent_r, agent_w) = agent.into_split();
    let (up_r, up_w) = upstream.into_split();
    let up = pump(agent_r, up_w, Side::Agent, Side::Upstream);
    let down = pump(up_r, agent_w, Side::Upstream, Side::Agent);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (None, None);
    while up_done.is_none() || down_done.is_none() {
        tokio::select! {
            r = &mut up, if up_done.is_none() => {
                let failed = r.1.is_some();
                up_done = Some(r);
                if failed { break; }
            }
            r = &mut down, if down_done.is_none() => {
                let failed = r.1.is_some();
                down_done = Some(r);
                if failed { break; }
            }
        }
    }
    let (bytes_up, up_err) = up_done.unwrap_or((0, None));
    let (bytes_down, down_err) = down_done.unwrap_or((0, None));
    RelayOutcome {
        bytes_up,
        bytes_down,
        error: up_err.or(down_err),
    }
}

/// One direction. Returns the bytes copied and the failure, if any, with its side.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    from_side: Side,
    to_side: Side,
) -> (u64, Option<(Side, io::Error)>) {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                // Pass the half-close on; the peer may already be gone, which is not a failure.
                let _ = to.shutdown().await;
                return (total, None);
            }
            Ok(n) => n,
            Err(e) => return (total, Some((from_side, e))),
        };
        if let Err(e) = to.write_all(&buf[..n]).await {
            return (total, Some((to_side, e)));
        }
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close_and_counts() {
        let (mut agent, agent_gw) = pair().await;
        let (up_gw, mut upstream) = pair().await;
        let relay = tokio::spawn(relay(agent_gw, up_gw));
        agent.write_all(b"hello").await.unwrap();
        agent.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // The other direction still flows after the agent's half-close.
        upstream.write_all(b"world!").await.unwrap();
        drop(upstream);
        let mut back = Vec::new();
        agent.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let out = relay.await.unwrap();
        assert_eq!((out.bytes_up, out.bytes_down), (5, 6));
        assert!(out.error.is_none(), "{:?}", out.error);
    }
}
