//! A blocking client of the admin socket, for gatewayctl and tests.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "admin socket {path}: {source} (is gatewayd running? use --store to read a store directly)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("admin socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("admin socket: malformed response: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("gatewayd: {0}")]
    Daemon(String),
}

pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    let mut conn = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    conn.write_all(&line)?;
    let mut resp = String::new();
    BufReader::new(conn).read_line(&mut resp)?;
    match serde_json::from_str(&resp)? {
        Response::Ok(v) => Ok(v),
        Response::Error(e) => Err(ClientError::Daemon(e)),
    }
}
