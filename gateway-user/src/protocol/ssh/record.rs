//! What an SSH session keeps of its channels' bytes: each chunk as a typed audit event, up to
//! the session's bound, and the lines typed in a shell.

use std::sync::atomic::{AtomicU64, Ordering};

use super::session::record;
use crate::{
    audit::{Detail, OutputDetail, SshDetail, Stream},
    protocol::ssh::rules::RequestKind,
    rules::Action,
    session::{Session, SessionError},
};

/// The session's recording budget: past it, data is counted, not kept.
pub struct Recorder {
    limit: u64,
    used: AtomicU64,
}

impl Recorder {
    pub fn new(limit: u64) -> Recorder {
        Recorder {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Records a chunk, or says (once) that the bound was reached; past it, nothing is
    /// decoded or kept.
    pub(super) fn chunk(
        &self,
        s: &Session,
        ch: u32,
        stream: Stream,
        data: &[u8],
        rule: &str,
    ) -> Result<(), SessionError> {
        let before = self.used.fetch_add(data.len() as u64, Ordering::Relaxed);
        let (stream, data) = if before + data.len() as u64 <= self.limit {
            (stream, String::from_utf8_lossy(data).into_owned())
        } else if before <= self.limit {
            (Stream::Truncated, String::new())
        } else {
            return Ok(());
        };
        let detail = Detail::Output(OutputDetail {
            channel: ch,
            stream,
            data,
            cols: None,
            rows: None,
        });
        record(s, s.event(Action::Allow, rule, detail))
    }
}

/// An SSH request's audit detail, with no exit status.
pub(super) fn detail(
    channel: u32,
    request: RequestKind,
    what: &str,
    bytes_in: u64,
    bytes_out: u64,
) -> Detail {
    Detail::Ssh(SshDetail {
        channel,
        request,
        command: what.to_owned(),
        exit_status: None,
        bytes_in,
        bytes_out,
    })
}

/// The lines completed by `data` (at CR or LF), with backspaces applied: what the agent typed,
/// as an aid for reading the audit. Not a boundary: a shell also reads what completion,
/// history and editing keys put there, which this does not replay.
pub(super) fn lines(line: &mut Vec<u8>, data: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for &b in data {
        match b {
            b'\r' | b'\n' if !line.is_empty() => {
                out.push(String::from_utf8_lossy(line).into_owned());
                line.clear();
            }
            b'\r' | b'\n' => {}
            0x7f | 0x08 => {
                line.pop();
            }
            // Bounded: a line is for reading, not a place to keep megabytes.
            b if line.len() < 4096 => line.push(b),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lines_with_backspaces_applied() {
        let mut line = Vec::new();
        assert!(lines(&mut line, b"ls -l").is_empty());
        assert_eq!(lines(&mut line, b"a\x7f\r"), ["ls -l"]);
        assert_eq!(
            lines(&mut line, b"\r\necho hi\nexit\r"),
            ["echo hi", "exit"]
        );
        assert!(line.is_empty());
    }
}
