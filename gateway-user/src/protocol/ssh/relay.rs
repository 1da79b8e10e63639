//! A channel once its request runs on the host: each direction relayed on its own, since
//! russh grants window as messages arrive, not as they are read: one loop waiting to write to
//! the host would stop reading it, its messages would fill the connection's queue, and the
//! window grant the write waits for would never be read (`cat` echoing a large input stalled
//! so). The agent's close closes the host's channel; the host's close ends the agent's
//! direction too (a held SFTP request is then withdrawn and audited as such).

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, server};
use tokio_util::sync::CancellationToken;

use super::{
    channel::{Running, Setup, Setups, asked_setup},
    config::SshTarget,
    files::{self, Sftp},
    grants::Granted,
    record::{Recorder, lines},
    session::record,
    unsplit::{QUIET, Unsplit},
};
use crate::{
    audit::{Detail, OutputDetail, SshDetail, Stream},
    detect::Detectors,
    rules::Action,
    session::{HANDSHAKE_STEP, Phase, Session, SessionError},
};

#[allow(clippy::too_many_arguments)]
pub(super) async fn relay(
    s: &Session,
    target: &SshTarget,
    ch: u32,
    rec: &Recorder,
    granted: &Granted,
    (mut agent_rd, agent_wr): (ChannelReadHalf, ChannelWriteHalf<server::Msg>),
    mut setup: Setups,
    run: Running,
) -> Result<(), SessionError> {
    let Running {
        mut up_rd,
        up_wr,
        kind,
        command,
        rule,
        detectors,
        verbatim,
        sftp,
        mut typed,
        granted: mut held,
        terminal,
    } = run;
    let filter = sftp.map(Mutex::new);
    // The host closed: the agent's direction ends too, and a held request is withdrawn.
    let closed = CancellationToken::new();
    let agent_done = CancellationToken::new();
    // SFTP answers from the host and refusals from the gateway both go to the agent: whole
    // packets only, one writer at a time (russh sends a long answer in pieces).
    let agent_lock = tokio::sync::Mutex::new(());
    let sftp = filter.as_ref().map(|filter| Sftp {
        filter,
        agent_lock: &agent_lock,
        closed: &closed,
    });
    let (mut bytes_in, mut bytes_out, mut exit) = (0u64, 0u64, None);
    let (rule, agent_wr, up_wr) = (&rule, &agent_wr, &up_wr);
    let up = async {
        let ended = async {
            loop {
                let m = tokio::select! {
                    m = agent_rd.wait() => match m {
                        None | Some(ChannelMsg::Close) => return Ok::<(), SessionError>(()),
                        Some(m) => m,
                    },
                    () = closed.cancelled() => return Ok(()),
                };
                match Setup::of(m) {
                    Ok(asked) => {
                        let running = Some((up_wr, &mut held));
                        asked_setup(s, target, ch, asked, &mut setup, running, granted).await?;
                    }
                    Err(ChannelMsg::Data { data }) => {
                        bytes_in += data.len() as u64;
                        s.add_up(data.len() as u64);
                        if let Some(f) = &sftp {
                            files::requests(s, target, ch, f, up_wr, agent_wr, &data).await?;
                            continue;
                        }
                        if verbatim {
                            rec.chunk(s, ch, Stream::Input, &data, rule)?;
                        }
                        if let Some(line) = typed.as_mut() {
                            for typed in lines(line, &data) {
                                rec.chunk(s, ch, Stream::Typed, typed.as_bytes(), rule)?;
                            }
                        }
                        let _ = up_wr.data_bytes(data).await;
                    }
                    Err(ChannelMsg::Eof) => {
                        let _ = up_wr.eof().await;
                    }
                    Err(ChannelMsg::WindowChange {
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                    }) => {
                        let _ = up_wr
                            .window_change(col_width, row_height, pix_width, pix_height)
                            .await;
                        let detail = Detail::Output(OutputDetail {
                            channel: ch,
                            stream: Stream::Resize,
                            data: String::new(),
                            cols: Some(col_width),
                            rows: Some(row_height),
                        });
                        record(s, s.event(Action::Allow, rule, detail))?;
                    }
                    Err(ChannelMsg::Signal { signal }) => {
                        let _ = up_wr.signal(signal).await;
                    }
                    // One request per channel, as OpenSSH's server allows.
                    Err(_) => {}
                }
            }
        };
        let r = ended.await;
        // The agent is done (or the host is): so is the host's channel.
        let _ = up_wr.close().await;
        agent_done.cancel();
        r
    };

    let mut output = Output {
        s,
        rec,
        ch,
        rule,
        detectors: &detectors,
        verbatim,
        agent_wr,
        held: [Unsplit::default(), Unsplit::default()],
        terminal,
        stderr: 1,
    };
    let down = async {
        let mut quiet = false;
        let ended = async {
            loop {
                // Output held under a mask rule goes after a quiet moment (see unsplit.rs).
                let m = if quiet {
                    tokio::select! {
                        m = up_rd.wait() => m,
                        () = tokio::time::sleep(QUIET) => {
                            quiet = false;
                            output.settle().await?;
                            continue;
                        }
                    }
                } else {
                    up_rd.wait().await
                };
                match m {
                    Some(ChannelMsg::Data { data }) => {
                        bytes_out += data.len() as u64;
                        s.add_down(data.len() as u64);
                        if let Some(f) = &filter {
                            // Whole answers only: a refusal may go between two of them.
                            let packets = f
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .host_bytes(&data)
                                .map_err(|e| SessionError::upstream(Phase::Serve, e))?;
                            if !packets.is_empty() {
                                let _whole = agent_lock.lock().await;
                                let _ = agent_wr.data_bytes(packets.concat()).await;
                            }
                            continue;
                        }
                        quiet = output.push(None, data).await?;
                    }
                    Some(ChannelMsg::ExtendedData { data, ext }) => {
                        bytes_out += data.len() as u64;
                        s.add_down(data.len() as u64);
                        output.stderr = ext;
                        quiet = output.push(Some(ext), data).await?;
                    }
                    Some(ChannelMsg::Eof) => {
                        output.flush().await?;
                        let _ = agent_wr.eof().await;
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        output.flush().await?;
                        exit = Some(exit_status);
                        let _ = agent_wr.exit_status(exit_status).await;
                    }
                    None | Some(ChannelMsg::Close) => {
                        output.flush().await?;
                        let _ = agent_wr.close().await;
                        return Ok::<(), SessionError>(());
                    }
                    Some(_) => {}
                }
            }
        };
        let r = ended.await;
        closed.cancel();
        r
    };
    // A host that does not close its side once the agent has closed is not waited for long.
    let down = async {
        tokio::select! {
            r = down => r,
            () = async {
                agent_done.cancelled().await;
                tokio::time::sleep(HANDSHAKE_STEP).await;
            } => Ok(()),
        }
    };
    let (up, down) = tokio::join!(up, down);
    up?;
    down?;
    for (kind, rule) in &held {
        granted.revoke(*kind, rule);
    }
    let detail = Detail::Ssh(SshDetail {
        channel: ch,
        request: kind,
        command,
        exit_status: exit,
        bytes_in,
        bytes_out,
    });
    record(s, s.event(Action::Allow, rule, detail))
}

/// What the host's direction sends the agent: masked under a mask rule (held back until the
/// detectors can see whole tokens), recorded, on stdout or stderr.
struct Output<'a> {
    s: &'a Session,
    rec: &'a Recorder,
    ch: u32,
    rule: &'a str,
    detectors: &'a Detectors,
    verbatim: bool,
    agent_wr: &'a ChannelWriteHalf<server::Msg>,
    /// What stdout and stderr hold back (only under a mask rule).
    held: [Unsplit; 2],
    /// On a terminal, a quiet moment releases everything held: a prompt must show even
    /// without whitespace after it (so there, a pause inside a secret splits it).
    terminal: bool,
    /// The extended-data code stderr came with.
    stderr: u32,
}

impl Output<'_> {
    /// Sends `data` (or what it completes); returns whether something stays held.
    async fn push(&mut self, ext: Option<u32>, data: Bytes) -> Result<bool, SessionError> {
        if self.detectors.is_empty() {
            self.send(ext, data).await?;
            return Ok(false);
        }
        let i = usize::from(ext.is_some());
        if let Some(ready) = self.held[i].push(&data) {
            self.send(ext, Bytes::from(ready)).await?;
        }
        Ok(!self.held[i].is_empty())
    }

    async fn settle(&mut self) -> Result<(), SessionError> {
        for i in 0..2 {
            let ready = if self.terminal {
                self.held[i].flush()
            } else {
                self.held[i].settle()
            };
            if let Some(ready) = ready {
                let ext = (i == 1).then_some(self.stderr);
                self.send(ext, Bytes::from(ready)).await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        for i in 0..2 {
            if let Some(ready) = self.held[i].flush() {
                let ext = (i == 1).then_some(self.stderr);
                self.send(ext, Bytes::from(ready)).await?;
            }
        }
        Ok(())
    }

    async fn send(&self, ext: Option<u32>, data: Bytes) -> Result<(), SessionError> {
        let data = masked(self.detectors, data);
        if self.verbatim {
            let stream = if ext.is_some() {
                Stream::Error
            } else {
                Stream::Output
            };
            self.rec.chunk(self.s, self.ch, stream, &data, self.rule)?;
        }
        let _ = match ext {
            Some(ext) => self.agent_wr.extended_data_bytes(ext, data).await,
            None => self.agent_wr.data_bytes(data).await,
        };
        Ok(())
    }
}

fn masked(detectors: &Detectors, data: Bytes) -> Bytes {
    match detectors.mask_bytes(&data) {
        Some(m) => Bytes::from(m.into_bytes()),
        None => data,
    }
}
