//! Approval notifications: each pending request and each decision POSTed as JSON to the
//! configured URL (or as a Slack-compatible `{"text": ...}` body). A task of its own reads the
//! broker's events, so a slow or dead receiver never holds up a session: deliveries queue
//! (bounded), retry with exponential backoff, and are dropped with an error log when they keep
//! failing or the queue is full.

use std::{collections::VecDeque, time::Duration};

use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::broadcast,
};

use super::{Decision, Event};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path`. (TLS receivers sit behind a local relay for now.)
    pub url: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_attempts() -> u32 {
    5
}
fn default_timeout_ms() -> u64 {
    2000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// The event as the admin API shows it.
    #[default]
    Json,
    /// `{"text": "..."}`, which Slack (and most chat webhooks) accept.
    Slack,
}

/// Deliveries waiting, at most; beyond it the oldest is dropped.
const QUEUE: usize = 1000;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Where to POST: host:port to dial, Host header, path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    addr: String,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("webhook url {url:?}: only http:// is supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(format!("webhook url {url:?}: no host"));
    }
    let addr = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    Ok(Url {
        addr,
        host: host.to_owned(),
        path: path.to_owned(),
    })
}

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), String> {
        parse_url(&self.url).map(|_| ())
    }
}

/// The body for one event. A webhook is a notification leaving the host (a chat channel):
/// it carries the command as the audit keeps it, literals hidden; approvers read the exact
/// command with `gatewayctl approvals list`.
pub fn body(format: Format, event: &Event) -> Vec<u8> {
    let event = &event.clone().redacted();
    match format {
        Format::Json => serde_json::to_vec(event).unwrap_or_default(),
        Format::Slack => {
            serde_json::to_vec(&serde_json::json!({ "text": summary(event) })).unwrap_or_default()
        }
    }
}

fn summary(event: &Event) -> String {
    match event {
        Event::Pending { request: r } => format!(
            "Approval {} needed: {} on {} (rule {}, session {}): {}",
            r.id,
            r.agent
                .as_ref()
                .and_then(|a| a.cgroup.clone())
                .unwrap_or_else(|| "unknown agent".into()),
            r.target,
            r.rule,
            r.session_id,
            r.command
        ),
        Event::Decided {
            request: r,
            decision,
            waited_ms,
        } => {
            let what = match decision {
                Decision::Approved { by, .. } => format!("approved by {}", by.user),
                Decision::Denied { by, reason } => format!("denied by {}: {reason}", by.user),
                Decision::Expired => "expired without a decision".into(),
                Decision::Withdrawn => "withdrawn (the agent left)".into(),
            };
            format!("Approval {} {what} after {waited_ms} ms", r.id)
        }
    }
}

/// Runs until the broker goes away.
pub async fn run(config: WebhookConfig, mut events: broadcast::Receiver<Event>) {
    let url = match parse_url(&config.url) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "webhook disabled");
            return;
        }
    };
    let timeout = Duration::from_millis(config.timeout_ms);
    let mut queue: VecDeque<(Vec<u8>, u32)> = VecDeque::new();
    loop {
        // Take everything published so far, without waiting when deliveries are due.
        loop {
            let next = if queue.is_empty() {
                events.recv().await
            } else {
                match events.try_recv() {
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Closed) => {
                        Err(broadcast::error::RecvError::Closed)
                    }
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        Err(broadcast::error::RecvError::Lagged(n))
                    }
                    Ok(e) => Ok(e),
                }
            };
            match next {
                Ok(e) => {
                    if queue.len() >= QUEUE {
                        queue.pop_front();
                        tracing::error!("webhook queue full; oldest notification dropped");
                    }
                    queue.push_back((body(config.format, &e), 0));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::error!(missed = n, "webhook fell behind; notifications dropped");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        let Some((payload, attempts)) = queue.front_mut() else {
            continue;
        };
        match tokio::time::timeout(timeout, post(&url, payload)).await {
            Ok(Ok(())) => {
                queue.pop_front();
            }
            outcome => {
                *attempts += 1;
                let error = match outcome {
                    Ok(Err(e)) => e,
                    _ => "timed out".into(),
                };
                if *attempts >= config.max_attempts {
                    tracing::error!(error, attempts, "webhook delivery given up");
                    queue.pop_front();
                } else {
                    let backoff = FIRST_BACKOFF * 2u32.pow(*attempts - 1);
                    tracing::warn!(
                        error,
                        attempts,
                        ?backoff,
                        "webhook delivery failed; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }
}

/// One HTTP/1.1 POST; success is a 2xx status.
async fn post(url: &Url, payload: &[u8]) -> Result<(), String> {
    let mut conn = TcpStream::connect(&url.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", url.addr))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: gatewayd\r\n\r\n",
        url.path,
        url.host,
        payload.len()
    );
    conn.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    conn.write_all(payload).await.map_err(|e| e.to_string())?;
    let mut status = [0u8; 12];
    conn.read_exact(&mut status)
        .await
        .map_err(|e| format!("no response: {e}"))?;
    match &status[..] {
        [b'H', b'T', b'T', b'P', b'/', _, _, _, b' ', b'2', _, _] => Ok(()),
        other => Err(format!(
            "answered {}",
            String::from_utf8_lossy(&other[9..]).trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9000/hooks/a").unwrap(),
            Url {
                addr: "127.0.0.1:9000".into(),
                host: "127.0.0.1:9000".into(),
                path: "/hooks/a".into()
            }
        );
        assert_eq!(
            parse_url("http://hooks.local").unwrap().addr,
            "hooks.local:80"
        );
        assert!(parse_url("https://hooks.slack.com/x").is_err());
        assert!(parse_url("http:///x").is_err());
    }
}
