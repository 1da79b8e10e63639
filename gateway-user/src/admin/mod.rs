//! The local admin API: JSON lines over a unix socket. One request per line, one response per
//! line. gatewayctl is a thin client of it; sled allows only one process per store, so the
//! running daemon answers for the store it holds.

pub mod client;

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    audit::{AuditStore, SessionFilter},
    daemon::state::State,
};

/// Listing size when a request names none.
pub const DEFAULT_LIMIT: usize = 100;
/// A request line longer than this is refused (and the connection closed).
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    SessionsList {
        #[serde(default)]
        filter: SessionFilter,
        limit: Option<usize>,
    },
    SessionsShow {
        id: u64,
    },
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
}

/// Answers one request from the state; shared by the socket server and by tests.
pub fn answer(state: &State, req: Request) -> Response {
    let result = match req {
        Request::Status => serde_json::to_value(state.status()).map_err(|e| e.to_string()),
        req => answer_from_store(&state.audit, req),
    };
    match result {
        Ok(v) => Response::Ok(v),
        Err(e) => Response::Error(e),
    }
}

/// The requests a store alone can answer: the daemon's, and gatewayctl's with `--store`.
pub fn answer_from_store(store: &AuditStore, req: Request) -> Result<serde_json::Value, String> {
    match req {
        Request::SessionsList { filter, limit } => store
            .list(&filter, limit.unwrap_or(DEFAULT_LIMIT))
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::to_value(v).map_err(|e| e.to_string())),
        Request::SessionsShow { id } => store
            .show(id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no session {id}")),
        Request::Status => Err("status needs the running daemon".into()),
    }
}

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    // Sessions name users and commands: owner and group only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_conn(conn, &state).await {
                        tracing::debug!(error = %e, "admin connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_conn(conn: UnixStream, state: &State) -> std::io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        if line.len() > MAX_REQUEST {
            write(&mut w, &Response::Error("request too large".into())).await?;
            break;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => answer(state, req),
            Err(e) => Response::Error(format!("bad request: {e}")),
        };
        write(&mut w, &resp).await?;
    }
    Ok(())
}

async fn write(w: &mut tokio::net::unix::OwnedWriteHalf, resp: &Response) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(resp).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let cases = [
            (r#"{"op":"status"}"#, Request::Status),
            (
                r#"{"op":"sessions_show","id":7}"#,
                Request::SessionsShow { id: 7 },
            ),
            (
                r#"{"op":"sessions_list","filter":{"verdict":"deny"},"limit":5}"#,
                Request::SessionsList {
                    filter: SessionFilter {
                        verdict: Some(crate::audit::VerdictKind::Deny),
                        ..Default::default()
                    },
                    limit: Some(5),
                },
            ),
            (
                r#"{"op":"sessions_list"}"#,
                Request::SessionsList {
                    filter: SessionFilter::default(),
                    limit: None,
                },
            ),
        ];
        for (wire, req) in cases {
            assert_eq!(
                serde_json::from_str::<Request>(wire).unwrap(),
                req,
                "{wire}"
            );
        }
        assert!(serde_json::from_str::<Request>(r#"{"op":"drop_tables"}"#).is_err());
    }
}
