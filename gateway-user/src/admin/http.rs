//! The admin API's wire form: HTTP/1.1 with JSON bodies over the unix socket, one request per
//! connection, so that curl (`curl --unix-socket /run/gatewayd/admin.sock http://gw/v1/health`)
//! and any HTTP library can use it. The routes map one to one onto [`Request`]; this file holds
//! both directions of that mapping and the little HTTP the socket needs, without I/O.
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

use super::Request;
use crate::audit::{SessionFilter, VerdictKind};

/// A request head and body larger than this is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    #[error("no such route: {0} {1}")]
    NotFound(String, String),
    #[error("bad request: {0}")]
    Bad(String),
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::NotFound(..) => 404,
            _ => 400,
        }
    }
}

/// Where a request's head ends and how long its body is, once the head is complete.
pub fn head_len(buf: &[u8]) -> Result<Option<(usize, usize)>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_REQUEST {
            Err(HttpError::Malformed("head too large"))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut body = 0;
    for line in head.split("\r\n").skip(1) {
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("header line"))?;
        if name.eq_ignore_ascii_case("content-length") {
            body = value
                .trim()
                .parse()
                .map_err(|_| HttpError::Malformed("content-length"))?;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed("chunked bodies are not accepted"));
        }
    }
    if body > MAX_REQUEST || end + 4 + body > MAX_REQUEST {
        return Err(HttpError::Malformed("body too large"));
    }
    Ok(Some((end + 4, body)))
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

/// Parses a complete request (head and body) into the API request it names.
pub fn parse(buf: &[u8]) -> Result<Request, HttpError> {
    let (head_end, body_len) = head_len(buf)?.ok_or(HttpError::Malformed("incomplete"))?;
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| HttpError::Malformed("utf-8"))?;
    let body = &buf[head_end..head_end + body_len];
    let mut parts = head.split("\r\n").next().unwrap_or_default().split(' ');
    let (method, target) = match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v)) if v.starts_with("HTTP/1.") => (m, t),
        _ => return Err(HttpError::Malformed("request line")),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let id = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| HttpError::Bad(format!("{s:?} is not an id")))
    };
    let json = |what| -> Result<serde_json::Value, HttpError> {
        if body.is_empty() {
            return Ok(serde_json::json!({}));
        }
        serde_json::from_slice(body).map_err(|e| HttpError::Bad(format!("{what}: {e}")))
    };
    Ok(match (method, segments.as_slice()) {
        ("GET", ["v1", "health"]) => Request::Health,
        ("GET", ["v1", "status"]) => Request::Status,
        ("GET", ["v1", "sessions"]) => sessions_list(query)?,
        ("GET", ["v1", "sessions", n]) => Request::SessionsShow { id: id(n)? },
        ("GET", ["v1", "sessions", n, "export"]) => Request::AuditExport { id: id(n)? },
        ("GET", ["v1", "audit", "verify"]) => Request::AuditVerify,
        ("GET", ["v1", "approvals"]) => Request::ApprovalsList,
        ("GET", ["v1", "approvals", "watch"]) => Request::ApprovalsWatch,
        ("POST", ["v1", "approvals", n, "approve"]) => {
            let Note { note } = serde_json::from_value(json("approve body")?)
                .map_err(|e| HttpError::Bad(e.to_string()))?;
            Request::Approve { id: id(n)?, note }
        }
        ("POST", ["v1", "approvals", n, "deny"]) => {
            let Reason { reason } = serde_json::from_value(json("deny body")?)
                .map_err(|e| HttpError::Bad(format!("deny needs {{\"reason\": ...}}: {e}")))?;
            Request::Deny { id: id(n)?, reason }
        }
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

/// The HTTP request a client sends for `req`.
pub fn encode(req: &Request) -> Vec<u8> {
    let (method, path, body) = match req {
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
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: gatewayd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A complete response with a JSON body.
pub fn response(status: u16, body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

/// The head of a streamed response: one JSON value per line until the server closes.
pub fn stream_head() -> &'static [u8] {
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n"
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        _ => "Internal Server Error",
    }
}

/// Splits a response into its status and body.
pub fn parse_response(buf: &[u8]) -> Result<(u16, &[u8]), HttpError> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::Malformed("response head"))?;
    let status = std::str::from_utf8(&buf[..end])
        .ok()
        .and_then(|h| h.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed("status line"))?;
    Ok((status, &buf[end + 4..]))
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
            assert_eq!(parse(&encode(&req)), Ok(req.clone()), "{req:?}");
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        #[rustfmt::skip]
        let cases: [(&[u8], u16, &str); 6] = [
            (b"GET /v1/nope HTTP/1.1\r\n\r\n", 404, "no such route"),
            (b"DELETE /v1/sessions/1 HTTP/1.1\r\n\r\n", 404, "no such route"),
            (b"GET /v1/sessions/x HTTP/1.1\r\n\r\n", 400, "not an id"),
            (b"GET /v1/sessions?color=red HTTP/1.1\r\n\r\n", 400, "unknown parameter"),
            (b"POST /v1/approvals/1/deny HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400, "reason"),
            (b"GARBAGE\r\n\r\n", 400, "request line"),
        ];
        for (raw, status, says) in cases {
            let e = parse(raw).unwrap_err();
            assert_eq!(e.status(), status, "{e}");
            assert!(e.to_string().contains(says), "{e}");
        }
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n"), Ok(None));
        assert!(head_len(&vec![b'a'; MAX_REQUEST + 1]).is_err());
        assert!(
            head_len(b"GET / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n").is_err()
        );
    }
}
