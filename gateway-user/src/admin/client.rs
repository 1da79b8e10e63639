//! A blocking client of the admin socket, for gatewayctl and tests: hyper's HTTP/1.1 client on
//! a current-thread runtime of each call's own, so that callers need no runtime.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::{Request, http};

/// How long a call may take, answer included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("admin socket: {0}")]
    Http(#[from] hyper::Error),
    #[error("admin socket: malformed response: {0}")]
    Decode(String),
    #[error("gatewayd ({status}): {error}")]
    Daemon { status: u16, error: String },
}

fn block_on<T>(f: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

async fn send(socket: &Path, req: &Request) -> Result<Response<Incoming>, ClientError> {
    let conn = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(conn)).await?;
    // Ends with the call's runtime.
    tokio::spawn(conn);
    let (method, target, body) = http::encode(req);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header(header::HOST, "gatewayd");
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok(sender.send_request(request).await?)
}

/// The daemon's `{"error": ...}` for a status other than 2xx.
fn refused(status: StatusCode, body: &[u8]) -> ClientError {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    ClientError::Daemon {
        status: status.as_u16(),
        error: value["error"]
            .as_str()
            .map_or_else(|| String::from_utf8_lossy(body).into_owned(), str::to_owned),
    }
}

pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    block_on(async {
        let called = async {
            let resp = send(socket, req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                return Err(refused(status, &body));
            }
            serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
        };
        tokio::time::timeout(CALL_TIMEOUT, called)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    })
}

/// Follows the approvals stream, calling `each` per event until it returns false or the
/// daemon closes.
pub fn watch(
    socket: &Path,
    mut each: impl FnMut(serde_json::Value) -> bool,
) -> Result<(), ClientError> {
    block_on(async {
        let resp = send(socket, &Request::ApprovalsWatch).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            return Err(refused(status, &body.collect().await?.to_bytes()));
        }
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                buf.extend_from_slice(&data);
            }
            while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let v = serde_json::from_slice(&line)
                    .map_err(|e| ClientError::Decode(e.to_string()))?;
                if !each(v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    })
}
