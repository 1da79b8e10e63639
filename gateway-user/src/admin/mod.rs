//! The local admin API: HTTP/1.1 and JSON over a unix socket ([`http`] has the routes,
//! [`server`] serves them with hyper), one request per connection, every request checked
//! against the caller's unix credentials ([`auth`]). gatewayctl is a thin client of it; sled
//! allows only one process per store, so the running daemon answers for the store it holds.

pub mod auth;
pub mod client;
pub mod http;
mod server;

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use tokio::net::UnixListener;

use crate::{
    approval::{Approver, DecideError, Decision},
    audit::{AuditError, AuditStore, SessionFilter},
    daemon::state::State,
};
use auth::{Caller, Role};

pub use server::serve;

/// Listing size when a request names none.
pub const DEFAULT_LIMIT: usize = 100;

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

/// Why a request the store answers ([`answer_from_store`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no {what} {id}")]
    NotFound { what: &'static str, id: u64 },
    #[error(transparent)]
    Store(#[from] AuditError),
    #[error("{0:?} needs the running daemon")]
    NeedsDaemon(Request),
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    /// The blocking task that read the store panicked (or the runtime is shutting down).
    #[error("reading the store: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl AdminError {
    /// The HTTP status the admin socket answers it with.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::NotFound { .. } => 404,
            AdminError::Store(_)
            | AdminError::NeedsDaemon(_)
            | AdminError::Encode(_)
            | AdminError::Task(_) => 500,
        }
    }
}

/// Answers one request for `caller`, whose `role` the server has already checked against the
/// request's route (before reading its body).
async fn answer(state: &State, caller: &Caller, role: Role, req: Request) -> Answer {
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
        req => match from_store(state.audit.clone(), req).await {
            Ok(v) => (200, v),
            Err(e) => failed(e.status(), e.to_string()),
        },
    }
}

/// [`answer_from_store`] on tokio's blocking pool: the store's reads are sled scans (a verify
/// reads all of it), which on an async worker would hold up the tasks queued behind them.
async fn from_store(store: AuditStore, req: Request) -> Result<serde_json::Value, AdminError> {
    tokio::task::spawn_blocking(move || answer_from_store(&store, req)).await?
}

/// The requests a store alone can answer: the daemon's (through [`from_store`]), and
/// gatewayctl's with `--store`, which calls it with no runtime. It blocks while it reads.
pub fn answer_from_store(
    store: &AuditStore,
    req: Request,
) -> Result<serde_json::Value, AdminError> {
    let no_session = |id| AdminError::NotFound {
        what: "session",
        id,
    };
    match req {
        Request::SessionsList { filter, limit } => Ok(serde_json::to_value(
            store.list(&filter, limit.unwrap_or(DEFAULT_LIMIT))?,
        )?),
        Request::SessionsShow { id } => store.show(id)?.ok_or_else(|| no_session(id)),
        Request::AuditVerify => Ok(serde_json::to_value(store.verify()?)?),
        Request::AuditExport { id } => store
            .export(id)?
            .map(serde_json::Value::from)
            .ok_or_else(|| no_session(id)),
        other => Err(AdminError::NeedsDaemon(other)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, AuditStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(dir.path()).unwrap();
        (dir, store)
    }

    /// What gatewayctl --store prints and what the admin socket answers, by status.
    fn outcome(
        r: Result<serde_json::Value, AdminError>,
    ) -> Result<serde_json::Value, (u16, String)> {
        r.map_err(|e| (e.status(), e.to_string()))
    }

    /// The offline path: no runtime at all, as in gatewayctl.
    #[test]
    fn store_answers_keep_their_texts_and_statuses() {
        let (_dir, store) = store();
        let ask = |req| outcome(answer_from_store(&store, req));
        let missing = Err((404, "no session 42".to_owned()));
        assert_eq!(ask(Request::SessionsShow { id: 42 }), missing);
        assert_eq!(ask(Request::AuditExport { id: 42 }), missing);
        assert_eq!(
            ask(Request::Health),
            Err((500, "Health needs the running daemon".to_owned()))
        );
        let list = Request::SessionsList {
            filter: SessionFilter::default(),
            limit: None,
        };
        assert_eq!(ask(list), Ok(serde_json::json!([])));
        let report = ask(Request::AuditVerify).unwrap();
        assert_eq!(report["sessions"], 0);
    }

    /// The daemon's path, on the blocking pool, from either kind of runtime.
    #[test]
    fn from_store_runs_on_either_runtime() {
        let (_dir, store) = store();
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for rt in [multi, current] {
            let verified = rt.block_on(from_store(store.clone(), Request::AuditVerify));
            assert_eq!(verified.unwrap()["sessions"], 0);
            let shown = rt.block_on(from_store(store.clone(), Request::SessionsShow { id: 7 }));
            assert_eq!(outcome(shown), Err((404, "no session 7".to_owned())));
        }
    }
}
