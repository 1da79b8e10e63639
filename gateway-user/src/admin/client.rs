//! A blocking client of the admin socket, for gatewayctl and tests.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{Request, http};

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
    Decode(String),
    #[error("gatewayd ({status}): {error}")]
    Daemon { status: u16, error: String },
}

fn connect(socket: &Path, req: &Request) -> Result<UnixStream, ClientError> {
    let mut conn = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    conn.write_all(&http::encode(req))?;
    Ok(conn)
}

pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    let mut conn = connect(socket, req)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp)?;
    let (status, body) =
        http::parse_response(&resp).map_err(|e| ClientError::Decode(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()))?;
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        Err(ClientError::Daemon {
            status,
            error: value["error"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned),
        })
    }
}

/// Follows the approvals stream, calling `each` per event until it returns false or the
/// daemon closes.
pub fn watch(
    socket: &Path,
    mut each: impl FnMut(serde_json::Value) -> bool,
) -> Result<(), ClientError> {
    let conn = connect(socket, &Request::ApprovalsWatch)?;
    let mut reader = BufReader::new(conn);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte)? == 0 {
            return Err(ClientError::Decode(
                "closed before the response head".into(),
            ));
        }
        head.push(byte[0]);
    }
    let (status, _) =
        http::parse_response(&head).map_err(|e| ClientError::Decode(e.to_string()))?;
    if status != 200 {
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(ClientError::Daemon {
            status,
            error: value["error"].as_str().unwrap_or_default().to_owned(),
        });
    }
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let v = serde_json::from_str(&line).map_err(|e| ClientError::Decode(e.to_string()))?;
        if !each(v) {
            return Ok(());
        }
    }
}
