//! The local admin API: HTTP/1.1 and JSON over a unix socket ([`http`] has the routes), one
//! request per connection, every request checked against the caller's unix credentials
//! ([`auth`]). gatewayctl is a thin client of it; sled allows only one process per store, so
//! the running daemon answers for the store it holds.

pub mod auth;
pub mod client;
pub mod http;

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};

use crate::{
    approval::{Approver, DecideError, Decision, Event},
    audit::{AuditStore, SessionFilter},
    daemon::state::State,
};
use auth::{Caller, Role};

/// Listing size when a request names none.
pub const DEFAULT_LIMIT: usize = 100;
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Health,
    Status,
    SessionsList {
        filter: SessionFilter,
        limit: Option<usize>,
    },
    SessionsShow {
        id: u64,
    },
    /// Checks the audit chain of every session.
    AuditVerify,
    /// A session's record and event lines as stored, chain hashes included.
    AuditExport {
        id: u64,
    },
    ApprovalsList,
    /// Streams approval events, one JSON line each, starting with the pending ones.
    ApprovalsWatch,
    Approve {
        id: u64,
        note: Option<String>,
    },
    Deny {
        id: u64,
        reason: String,
    },
}

/// An answer: the HTTP status and the JSON body.
pub type Answer = (u16, serde_json::Value);

fn ok(v: impl serde::Serialize) -> Answer {
    match serde_json::to_value(v) {
        Ok(v) => (200, v),
        Err(e) => failed(500, e.to_string()),
    }
}

fn failed(status: u16, error: String) -> Answer {
    (status, serde_json::json!({ "error": error }))
}

/// Answers one request for `caller`; shared by the socket server and by tests.
pub fn answer(state: &State, caller: &Caller, req: Request) -> Answer {
    let role = caller.role(&state.config.approvers, &state.config.auditors);
    if role < auth::needs(&req) {
        return failed(
            403,
            format!(
                "{} (uid {}) may not {req:?}: see approvers/auditors in the daemon's config",
                caller.user, caller.uid
            ),
        );
    }
    let by = || Approver {
        uid: caller.uid,
        user: caller.user.clone(),
    };
    let decided = |r: Result<crate::approval::Request, DecideError>| match r {
        Ok(req) => ok(req),
        Err(e @ DecideError::NotFound(_)) => failed(404, e.to_string()),
        Err(e @ DecideError::OwnRequest(_)) => failed(403, e.to_string()),
    };
    match req {
        Request::Health => ok(serde_json::json!({ "ok": true })),
        Request::Status => ok(state.status()),
        // Auditors read; only approvers need the literal values of what they decide.
        Request::ApprovalsList if role == Role::Auditor => ok(state
            .approvals
            .pending()
            .into_iter()
            .map(crate::approval::Request::redacted)
            .collect::<Vec<_>>()),
        Request::ApprovalsList => ok(state.approvals.pending()),
        Request::Approve { id, note } => decided(state.approvals.decide(
            id,
            Decision::Approved {
                by: by(),
                note,
                covered_by: None,
            },
        )),
        Request::Deny { id, reason } => decided(
            state
                .approvals
                .decide(id, Decision::Denied { by: by(), reason }),
        ),
        req => match answer_from_store(&state.audit, req) {
            Ok(v) => (200, v),
            Err(e) if e.starts_with("no session") => failed(404, e),
            Err(e) => failed(500, e),
        },
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
        Request::AuditVerify => {
            // It reads the whole store: on a multi-thread runtime (the daemon's) the worker
            // first hands its other tasks to the others.
            let verify = || store.verify().map_err(|e| e.to_string());
            let report = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                    tokio::task::block_in_place(verify)
                }
                _ => verify(),
            }?;
            serde_json::to_value(report).map_err(|e| e.to_string())
        }
        Request::AuditExport { id } => store
            .export(id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no session {id}"))
            .map(serde_json::Value::from),
        other => Err(format!("{other:?} needs the running daemon")),
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
    // Any local user may connect; each request is authorized from the peer's credentials.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
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

async fn serve_conn(mut conn: UnixStream, state: &State) -> std::io::Result<()> {
    let cred = conn.peer_cred()?;
    let caller = tokio::task::spawn_blocking(move || Caller::from_peer(cred.uid(), cred.gid()))
        .await
        .map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(1024);
    // A caller gets a few seconds to send its request: idle connections do not pile up.
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            match http::head_len(&buf) {
                Ok(Some((head, body))) if buf.len() >= head + body => {
                    return Ok(Some(http::parse(&buf)));
                }
                Ok(_) => {}
                Err(e) => return Ok(Some(Err(e))),
            }
            if conn.read_buf(&mut buf).await? == 0 {
                return Ok::<_, std::io::Error>(None);
            }
        }
    })
    .await;
    let req = match read {
        Ok(Ok(Some(req))) => req,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(e)) => return Err(e),
    };
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            let (status, body) = failed(e.status(), e.to_string());
            return conn.write_all(&http::response(status, &body)).await;
        }
    };
    let role = caller.role(&state.config.approvers, &state.config.auditors);
    if req == Request::ApprovalsWatch && role >= Role::Auditor {
        return watch(conn, state, role == Role::Auditor).await;
    }
    tracing::debug!(admin.user = %caller.user, admin.uid = caller.uid, request = ?req, "admin request");
    let (status, body) = answer(state, &caller, req);
    conn.write_all(&http::response(status, &body)).await
}

/// Streams approval events until the caller hangs up.
async fn watch(mut conn: UnixStream, state: &State, redact: bool) -> std::io::Result<()> {
    let shown = |e: Event| if redact { e.redacted() } else { e };
    // Subscribe before listing so nothing falls between the two.
    let mut events = state.approvals.subscribe();
    conn.write_all(http::stream_head()).await?;
    for request in state.approvals.pending() {
        line(&mut conn, &shown(Event::Pending { request })).await?;
    }
    let (mut rd, mut wr) = conn.into_split();
    let mut sink = [0u8; 64];
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => line(&mut wr, &shown(e)).await?,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return Ok(()),
            },
            n = rd.read(&mut sink) => if n? == 0 { return Ok(()) },
        }
    }
}

async fn line<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, e: &Event) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(e).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await
}
