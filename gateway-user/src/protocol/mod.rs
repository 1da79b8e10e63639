//! Protocol handlers, one folder each. A handler terminates its protocol on the agent side
//! and speaks it to the upstream; plain `tcp` relays bytes.

pub mod postgres;
pub mod tcp;

/// The upstream connection every handler opens: bounded by `timeout`, Nagle off (commands and
/// answers are small and latency-bound). The error says why, for the audit and the agent.
pub async fn connect_upstream(
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Result<tokio::net::TcpStream, String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
