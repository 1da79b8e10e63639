//! The admin API's routes: HTTP/1.1 with JSON bodies over the unix socket, so that curl
//! (`curl --unix-socket /run/gatewayd/admin.sock http://gw/v1/health`) and any HTTP library
//! can use it. The routes map one to one onto [`Request`]; this file holds both directions of
//! that mapping, without I/O. hyper does the HTTP itself ([`super::server`]).
//!
//! | method | path                          | request                 | role     |
//! |--------|-------------------------------|-------------------------|----------|
//! | GET    | /v1/health                    | Health                  | anyone   |
//! | GET    | /v1/status                    | Status                  | auditor  |
//! | GET    | /v1/sessions?cgroup=&target=&since_ms=&until_ms=&verdict=&limit= | SessionsList | auditor |
//! | GET    | /v1/sessions/{id}             | SessionsShow            | auditor  |
//! | GET    | /v1/sessions/{id}/export      | AuditExport             | auditor  |
//! | GET    | /v1/audit/verify              | AuditVerify             | auditor  |
//! | GET    | /v1/approvals                 | ApprovalsList           | auditor  |
//! | GET    | /v1/approvals/watch           | ApprovalsWatch (NDJSON) | auditor  |
//! | POST   | /v1/approvals/{id}/approve    | Approve `{"note"}`      | approver |
//! | POST   | /v1/approvals/{id}/deny       | Deny `{"reason"}`       | approver |

use serde::Deserialize;

use super::{
    Request,
    auth::{self, Role},
};
use crate::audit::{SessionFilter, VerdictKind};

/// A request body larger than this is refused (413), and so is a head larger than this.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("no such route: {0} {1}")]
    NotFound(String, String),
    #[error("bad request: {0}")]
    Bad(String),
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::NotFound(..) => 404,
            HttpError::Bad(_) => 400,
        }
    }
}

/// A route as the request line names it. The server learns from it who may call it before it
/// reads a byte of the body; only the approval decisions take one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Route {
    /// Complete without a body.
    Plain(Request),
    Approve {
        id: u64,
    },
    Deny {
        id: u64,
    },
}

impl Route {
    /// The least role the route needs: that of its request, whatever the body would say.
    pub(crate) fn needs(&self) -> Role {
        match self {
            Route::Plain(req) => auth::needs(req),
            &Route::Approve { id } => auth::needs(&Request::Approve { id, note: None }),
            &Route::Deny { id } => auth::needs(&Request::Deny {
                id,
                reason: String::new(),
            }),
        }
    }

    /// The request, with the body the decisions carry (a body of any other route is ignored).
    pub(crate) fn with_body(self, body: &[u8]) -> Result<Request, HttpError> {
        let json = |what| -> Result<serde_json::Value, HttpError> {
            if body.is_empty() {
                return Ok(serde_json::json!({}));
            }
            serde_json::from_slice(body).map_err(|e| HttpError::Bad(format!("{what}: {e}")))
        };
        Ok(match self {
            Route::Plain(req) => req,
            Route::Approve { id } => {
                let Note { note } = serde_json::from_value(json("approve body")?)
                    .map_err(|e| HttpError::Bad(e.to_string()))?;
                Request::Approve { id, note }
            }
            Route::Deny { id } => {
                let Reason { reason } = serde_json::from_value(json("deny body")?)
                    .map_err(|e| HttpError::Bad(format!("deny needs {{\"reason\": ...}}: {e}")))?;
                Request::Deny { id, reason }
            }
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Note {
    note: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: String,
}

/// The route `method` and `target` (path and query) name.
pub(crate) fn route(method: &str, target: &str) -> Result<Route, HttpError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let id = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| HttpError::Bad(format!("{s:?} is not an id")))
    };
    let plain = Route::Plain;
    Ok(match (method, segments.as_slice()) {
        ("GET", ["v1", "health"]) => plain(Request::Health),
        ("GET", ["v1", "status"]) => plain(Request::Status),
        ("GET", ["v1", "sessions"]) => plain(sessions_list(query)?),
        ("GET", ["v1", "sessions", n]) => plain(Request::SessionsShow { id: id(n)? }),
        ("GET", ["v1", "sessions", n, "export"]) => plain(Request::AuditExport { id: id(n)? }),
        ("GET", ["v1", "audit", "verify"]) => plain(Request::AuditVerify),
        ("GET", ["v1", "approvals"]) => plain(Request::ApprovalsList),
        ("GET", ["v1", "approvals", "watch"]) => plain(Request::ApprovalsWatch),
        ("POST", ["v1", "approvals", n, "approve"]) => Route::Approve { id: id(n)? },
        ("POST", ["v1", "approvals", n, "deny"]) => Route::Deny { id: id(n)? },
        _ => return Err(HttpError::NotFound(method.into(), path.into())),
    })
}

fn sessions_list(query: &str) -> Result<Request, HttpError> {
    let mut filter = SessionFilter::default();
    let mut limit = None;
    let number = |k: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| HttpError::Bad(format!("{k}={v:?} is not a number")))
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v).ok_or_else(|| HttpError::Bad(format!("{k}: bad percent-encoding")))?;
        match k {
            "cgroup" => filter.cgroup = Some(v),
            "target" => filter.target = Some(v),
            "since_ms" => filter.since_ms = Some(number(k, &v)?),
            "until_ms" => filter.until_ms = Some(number(k, &v)?),
            "limit" => limit = Some(number(k, &v)? as usize),
            "verdict" => {
                filter.verdict = Some(
                    serde_json::from_value::<VerdictKind>(serde_json::Value::String(v.clone()))
                        .map_err(|_| HttpError::Bad(format!("verdict={v:?}")))?,
                )
            }
            other => return Err(HttpError::Bad(format!("unknown parameter {other:?}"))),
        }
    }
    Ok(Request::SessionsList { filter, limit })
}

/// The method, target and JSON body (if any) a client sends for `req`.
pub fn encode(req: &Request) -> (&'static str, String, Option<String>) {
    let (method, target, body) = match req {
        Request::Health => ("GET", "/v1/health".to_owned(), None),
        Request::Status => ("GET", "/v1/status".into(), None),
        Request::SessionsList { filter, limit } => {
            let mut q = Vec::new();
            let mut add = |k: &str, v: String| q.push(format!("{k}={}", encode_component(&v)));
            if let Some(v) = &filter.cgroup {
                add("cgroup", v.clone());
            }
            if let Some(v) = &filter.target {
                add("target", v.clone());
            }
            if let Some(v) = filter.since_ms {
                add("since_ms", v.to_string());
            }
            if let Some(v) = filter.until_ms {
                add("until_ms", v.to_string());
            }
            if let Some(v) = filter.verdict {
                let name = serde_json::to_value(v).ok();
                add(
                    "verdict",
                    name.and_then(|n| n.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                );
            }
            if let Some(v) = limit {
                add("limit", v.to_string());
            }
            let query = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            ("GET", format!("/v1/sessions{query}"), None)
        }
        Request::SessionsShow { id } => ("GET", format!("/v1/sessions/{id}"), None),
        Request::AuditExport { id } => ("GET", format!("/v1/sessions/{id}/export"), None),
        Request::AuditVerify => ("GET", "/v1/audit/verify".into(), None),
        Request::ApprovalsList => ("GET", "/v1/approvals".into(), None),
        Request::ApprovalsWatch => ("GET", "/v1/approvals/watch".into(), None),
        Request::Approve { id, note } => (
            "POST",
            format!("/v1/approvals/{id}/approve"),
            Some(serde_json::json!({ "note": note })),
        ),
        Request::Deny { id, reason } => (
            "POST",
            format!("/v1/approvals/{id}/deny"),
            Some(serde_json::json!({ "reason": reason })),
        ),
    };
    (method, target, body.map(|b| b.to_string()))
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: &str, target: &str, body: &[u8]) -> Result<Request, HttpError> {
        route(method, target)?.with_body(body)
    }

    #[test]
    fn every_request_survives_the_trip_through_http() {
        let cases = [
            Request::Health,
            Request::Status,
            Request::SessionsList {
                filter: SessionFilter::default(),
                limit: None,
            },
            Request::SessionsList {
                filter: SessionFilter {
                    cgroup: Some("/agents/a b&c=d%".into()),
                    target: Some("billing-db".into()),
                    since_ms: Some(1),
                    until_ms: Some(2),
                    verdict: Some(VerdictKind::Deny),
                },
                limit: Some(5),
            },
            Request::SessionsShow { id: 7 },
            Request::AuditVerify,
            Request::AuditExport { id: 7 },
            Request::ApprovalsList,
            Request::ApprovalsWatch,
            Request::Approve {
                id: 3,
                note: Some("ticket \"OPS-1\"".into()),
            },
            Request::Approve { id: 3, note: None },
            Request::Deny {
                id: 4,
                reason: "not in a change window".into(),
            },
        ];
        for req in cases {
            let (method, target, body) = encode(&req);
            let route = route(method, &target).unwrap();
            // The role the server checks before the body is the one the request needs.
            assert_eq!(route.needs(), auth::needs(&req), "{req:?}");
            let body = body.unwrap_or_default();
            assert_eq!(route.with_body(body.as_bytes()), Ok(req.clone()), "{req:?}");
        }
    }

    #[test]
    fn the_request_line_alone_says_who_may_call() {
        #[rustfmt::skip]
        let cases = [
            ("GET", "/v1/health", Role::Nobody),
            ("GET", "/v1/approvals/watch", Role::Auditor),
            ("GET", "/v1/sessions?limit=1", Role::Auditor),
            ("POST", "/v1/approvals/1/approve", Role::Approver),
            ("POST", "/v1/approvals/1/deny", Role::Approver),
        ];
        for (method, target, role) in cases {
            assert_eq!(
                route(method, target).unwrap().needs(),
                role,
                "{method} {target}"
            );
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        #[rustfmt::skip]
        let cases: [(&str, &str, &[u8], u16, &str); 8] = [
            ("GET", "/v1/nope", b"", 404, "no such route"),
            ("DELETE", "/v1/sessions/1", b"", 404, "no such route"),
            ("GET", "/v1/sessions/x", b"", 400, "not an id"),
            ("POST", "/v1/approvals/x/approve", b"", 400, "not an id"),
            ("GET", "/v1/sessions?color=red", b"", 400, "unknown parameter"),
            ("GET", "/v1/sessions?limit=%zz", b"", 400, "percent-encoding"),
            ("POST", "/v1/approvals/1/deny", b"{}", 400, "reason"),
            ("POST", "/v1/approvals/1/approve", b"{\"note\": 1, \"x\"", 400, "approve body"),
        ];
        for (method, target, body, status, says) in cases {
            let e = parse(method, target, body).unwrap_err();
            assert_eq!(e.status(), status, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
