//! An allowed `sftp` subsystem channel: the agent's requests read by [`super::sftp`], each
//! judged by the target's rules (held when a rule says so), then forwarded, or answered with
//! SSH_FX_PERMISSION_DENIED; each audited, and each closed file with its byte counts.

use std::sync::{Mutex, PoisonError};

use russh::{ChannelWriteHalf, client, server};
use tokio_util::sync::CancellationToken;

use super::{
    config::SshTarget,
    record::detail,
    rules::{RequestKind, SshRequest},
    session::record,
    sftp::{self, Access, Filter, Request},
};
use crate::{
    approval::Decision,
    rules::{Action, decide_all},
    session::{
        Phase, Session, SessionError,
        hold::{HoldEnd, hold},
    },
};

/// The agent's SFTP requests in `data`: each judged, then forwarded, or refused with
/// SSH_FX_PERMISSION_DENIED; each audited.
#[allow(clippy::too_many_arguments)]
/// What an SFTP channel's two directions share.
pub(super) struct Sftp<'a> {
    pub filter: &'a Mutex<Filter>,
    /// Held while writing to the agent: whole packets, one writer at a time.
    pub agent_lock: &'a tokio::sync::Mutex<()>,
    /// The host closed the channel: a held request is withdrawn.
    pub closed: &'a CancellationToken,
}

pub(super) async fn requests(
    s: &Session,
    target: &SshTarget,
    ch: u32,
    sftp: &Sftp<'_>,
    up_wr: &ChannelWriteHalf<client::Msg>,
    agent_wr: &ChannelWriteHalf<server::Msg>,
    data: &[u8],
) -> Result<(), SessionError> {
    // The filter is shared with the host's direction: locked only between awaits.
    let lock = || sftp.filter.lock().unwrap_or_else(PoisonError::into_inner);
    let packets = lock()
        .agent_bytes(data)
        .map_err(|e| SessionError::agent(Phase::Serve, e))?;
    let event = |action, rule: &str, kind, command: String, error: Option<String>| {
        let mut e = s.event(action, rule, detail(ch, kind, &command, 0, 0));
        e.error = error;
        e
    };
    let mut forward = Vec::new();
    for (packet, request) in packets {
        let (id, refusal) = match request {
            Request::Pass => (0, None),
            Request::Refuse { id, why } => {
                let e = event(
                    Action::Deny,
                    "sftp-unread",
                    RequestKind::SftpWrite,
                    why.clone(),
                    Some(why.clone()),
                );
                record(s, e)?;
                (id, Some(format!("gatewayd: {why}")))
            }
            Request::Judge(op) => {
                let requests: Vec<SshRequest> = op
                    .paths
                    .iter()
                    .map(|(path, access)| SshRequest {
                        kind: match access {
                            Access::Read => RequestKind::SftpRead,
                            Access::Write => RequestKind::SftpWrite,
                        },
                        text: path.clone(),
                        words: None,
                    })
                    .collect();
                let v = decide_all(&target.rules, s.who(), &requests);
                let kind = requests
                    .iter()
                    .map(|r| r.kind)
                    .max_by_key(|k| *k == RequestKind::SftpWrite)
                    .unwrap_or(RequestKind::SftpRead);
                let shown = format!(
                    "{} {}",
                    op.name,
                    op.paths
                        .iter()
                        .map(|(p, _)| p.as_str())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                );
                // Masking does not apply to file content: a mask verdict refuses the request
                // rather than send the file unmasked.
                let mut action = match v.action {
                    Action::Mask => Action::Deny,
                    a => a,
                };
                let mut e = event(action, &v.rule, kind, shown.clone(), None);
                if action == Action::Hold {
                    let req = target.hold_request(&v.rule, format!("sftp {shown}"));
                    let held = hold(s, req, sftp.closed.cancelled(), std::future::pending())
                        .await
                        .map_err(|e| SessionError::agent(Phase::Serve, e))?;
                    if !matches!(held.end, HoldEnd::Decided(Decision::Approved { .. })) {
                        action = Action::Deny;
                    }
                    e.approval = Some(Box::new(held.record));
                }
                let refusal = (action == Action::Deny).then(|| {
                    format!(
                        "gatewayd: policy {} denies {shown} (rule {})",
                        s.admitted.policy, v.rule
                    )
                });
                e.error = refusal.clone();
                record(s, e)?;
                (op.id, refusal)
            }
        };
        match refusal {
            Some(why) => {
                let _whole = sftp.agent_lock.lock().await;
                let _ = agent_wr.data_bytes(sftp::permission_denied(id, &why)).await;
            }
            None => {
                let closed = lock().forwarded(&packet);
                if let Some(f) = closed {
                    let kind = if f.written > 0 {
                        RequestKind::SftpWrite
                    } else {
                        RequestKind::SftpRead
                    };
                    let closed = format!("close {}", f.path);
                    let e = s.event(
                        Action::Allow,
                        "sftp",
                        detail(ch, kind, &closed, f.written, f.read),
                    );
                    record(s, e)?;
                }
                forward.push(packet);
            }
        }
    }
    if !forward.is_empty() {
        up_wr
            .data_bytes(forward.concat())
            .await
            .map_err(|e| SessionError::upstream(Phase::Serve, e))?;
    }
    Ok(())
}
