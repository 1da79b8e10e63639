//! One session channel: its request (exec, shell, subsystem) judged by the target's rules and
//! held for approval when a rule says so; if allowed, a channel to the host with the same
//! terminal, the env, agent and X11 requests the rules allowed, and the request, and the bytes
//! relayed both ways and recorded; if not, a message on stderr and exit status 1, and the rest
//! of the session goes on.

use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty, client, server};

use super::{
    config::SshTarget,
    files,
    forward::judge_now,
    grants::Granted,
    record::{Recorder, detail, lines},
    rules::{RequestKind, SshRequest},
    session::record,
    sftp::Filter,
    unsplit::{QUIET, Unsplit},
    upstream::Upstream,
    words::Words,
};
use crate::{
    approval::Decision,
    audit::{Detail, OutputDetail, SshDetail, Stream},
    detect::Detectors,
    rules::{Action, decide},
    session::{
        Phase, Session, SessionError,
        hold::{HoldEnd, hold},
    },
};

/// What the agent may send while its request waits for approval: kept, then passed on.
const HELD_INPUT: usize = 256 * 1024;

struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    pix_w: u32,
    pix_h: u32,
    modes: Vec<(Pty, u32)>,
}

/// The env, agent and X11 requests of a channel: how many it made, and those allowed before
/// the command, kept to be asked of the host's channel before it.
#[derive(Default)]
struct Setups {
    asked: usize,
    kept: Vec<(Setup, String)>,
}

/// An env, agent or X11 request of the agent's channel.
enum Setup {
    Env(String, String),
    Agent,
    X11 {
        single: bool,
        protocol: String,
        cookie: String,
        screen: u32,
    },
}

impl Setup {
    /// The channel message as an env, agent or X11 request, or the message back.
    fn of(m: ChannelMsg) -> Result<Setup, ChannelMsg> {
        match m {
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => Ok(Setup::Env(variable_name, variable_value)),
            ChannelMsg::AgentForward { .. } => Ok(Setup::Agent),
            ChannelMsg::RequestX11 {
                single_connection,
                x11_authentication_protocol,
                x11_authentication_cookie,
                x11_screen_number,
                ..
            } => Ok(Setup::X11 {
                single: single_connection,
                protocol: x11_authentication_protocol,
                cookie: x11_authentication_cookie,
                screen: x11_screen_number,
            }),
            m => Err(m),
        }
    }

    fn kind(&self) -> RequestKind {
        match self {
            Setup::Env(..) => RequestKind::Env,
            Setup::Agent => RequestKind::AgentForward,
            Setup::X11 { .. } => RequestKind::X11,
        }
    }
}

/// The agent and X11 grants a channel holds, by rule.
type Held = Vec<(RequestKind, String)>;

/// A channel's request once judged and let through.
struct Running {
    up_rd: ChannelReadHalf,
    up_wr: ChannelWriteHalf<client::Msg>,
    kind: RequestKind,
    command: String,
    rule: String,
    detectors: Detectors,
    /// Record the bytes themselves (not for subsystems: SFTP is file content).
    verbatim: bool,
    /// For the `sftp` subsystem: its requests judged one by one.
    sftp: Option<Filter>,
    /// For a shell: what the agent has typed since its last Enter.
    typed: Option<Vec<u8>>,
    /// The agent and X11 grants this channel holds, by rule (revoked when it ends).
    granted: Held,
    /// Whether the channel has a terminal (what is held for masking goes sooner).
    terminal: bool,
}

pub async fn serve(
    s: &Session,
    target: &SshTarget,
    host: &Upstream,
    agent: Channel<server::Msg>,
    rec: &Recorder,
    granted: &Granted,
) -> Result<(), SessionError> {
    let ch = u32::from(agent.id());
    let (mut agent_rd, agent_wr) = agent.split();
    // The channel's terminal, variables and request, until the request is judged; what the
    // agent sends before it has nowhere to go.
    let mut pty: Option<PtyRequest> = None;
    let mut setup = Setups::default();
    let run = loop {
        let (kind, text) = match agent_rd.wait().await {
            None | Some(ChannelMsg::Close) => return Ok(()),
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            }) => {
                pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    pix_w: pix_width,
                    pix_h: pix_height,
                    modes: terminal_modes,
                });
                continue;
            }
            Some(m) => match Setup::of(m) {
                Ok(asked) => {
                    asked_setup(s, target, ch, asked, &mut setup, None, granted).await?;
                    continue;
                }
                Err(ChannelMsg::Exec { command, .. }) => (RequestKind::Exec, command),
                Err(ChannelMsg::RequestShell { .. }) => (RequestKind::Shell, Vec::new()),
                Err(ChannelMsg::RequestSubsystem { name, .. }) => {
                    (RequestKind::Subsystem, name.into_bytes())
                }
                Err(_) => continue,
            },
        };
        let asked = Asked {
            kind,
            raw: &text,
            pty: pty.as_ref(),
            setup: std::mem::take(&mut setup.kept),
            granted,
        };
        match start(s, target, host, ch, asked, &mut agent_rd, &agent_wr).await? {
            Some(r) => break r,
            None => return Ok(()),
        }
    };
    relay(
        s,
        target,
        ch,
        rec,
        granted,
        (agent_rd, agent_wr),
        setup,
        run,
    )
    .await
}

/// The channel once its request runs on the host: each direction on its own, since russh
/// grants window as messages arrive, not as they are read: one loop waiting to write to the
/// host would stop reading it, its messages would fill the connection's queue, and the
/// window grant the write waits for would never be read (`cat` echoing a large input stalled
/// so). Either side's close ends both.
#[allow(clippy::too_many_arguments)]
async fn relay(
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
    let sftp = sftp.map(Mutex::new);
    let (mut bytes_in, mut bytes_out, mut exit) = (0u64, 0u64, None);
    let (rule, agent_wr, up_wr) = (&rule, &agent_wr, &up_wr);
    let up = async {
        loop {
            let m = match agent_rd.wait().await {
                None | Some(ChannelMsg::Close) => return Ok::<(), SessionError>(()),
                Some(m) => m,
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
                    if let Some(f) = &sftp {
                        // Whole answers only: a refusal may go between two of them.
                        let packets = f
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .host_bytes(&data)
                            .map_err(|e| SessionError::upstream(Phase::Serve, e))?;
                        if !packets.is_empty() {
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
    let ended = tokio::select! {
        r = up => r,
        r = down => r,
    };
    ended?;
    for (kind, rule) in &held {
        granted.revoke(*kind, rule);
    }
    let _ = up_wr.close().await;
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

/// Env, agent and X11 requests one channel may make (each judged and audited).
const MAX_SETUP: usize = 64;

/// A channel's env, agent or X11 request: judged (as the agent side answered it) and audited;
/// if allowed, kept for the host's channel, or sent on at once if that is running.
async fn asked_setup(
    s: &Session,
    target: &SshTarget,
    ch: u32,
    asked: Setup,
    setup: &mut Setups,
    running: Option<(&ChannelWriteHalf<client::Msg>, &mut Held)>,
    granted: &Granted,
) -> Result<(), SessionError> {
    setup.asked += 1;
    if setup.asked > MAX_SETUP {
        let why = format!("more than {MAX_SETUP} env, agent and X11 requests on one channel");
        return Err(SessionError::agent(Phase::Serve, why));
    }
    let kind = asked.kind();
    let (text, shown) = match &asked {
        // Judged on NAME=value; the value stays out of the audit (variables carry tokens as
        // often as locales).
        Setup::Env(name, value) => (format!("{name}={value}"), name.clone()),
        Setup::Agent => (String::new(), String::new()),
        Setup::X11 { protocol, .. } => (String::new(), protocol.clone()),
    };
    let judged = match &asked {
        // `NAME=value` must read one way only.
        Setup::Env(name, _) if name.is_empty() || name.contains(['=', '\0']) => Err((
            "env-name".to_owned(),
            "a variable name empty or with = or NUL",
        )),
        _ => judge_now(target, s.who(), kind, &[text]),
    };
    let (verdict, rule, why) = match &judged {
        Ok(rule) => (Action::Allow, rule.as_str(), None),
        Err((rule, why)) => (Action::Deny, rule.as_str(), Some((*why).to_owned())),
    };
    let mut e = s.event(verdict, rule, detail(ch, kind, &shown, 0, 0));
    e.error = why;
    record(s, e)?;
    let Ok(rule) = judged else { return Ok(()) };
    match running {
        Some((up_wr, held)) => send_setup(up_wr, asked, &rule, granted, held).await,
        None => {
            setup.kept.push((asked, rule));
            Ok(())
        }
    }
}

/// Asks the host's channel for an allowed request; an agent or X11 request, once sent, lets
/// the host open such channels back until this channel ends.
async fn send_setup(
    up_wr: &ChannelWriteHalf<client::Msg>,
    asked: Setup,
    rule: &str,
    granted: &Granted,
    held: &mut Held,
) -> Result<(), SessionError> {
    let kind = asked.kind();
    match asked {
        Setup::Env(name, value) => up_wr.set_env(false, name, value).await,
        Setup::Agent => up_wr.agent_forward(false).await,
        Setup::X11 {
            single,
            protocol,
            cookie,
            screen,
        } => {
            up_wr
                .request_x11(false, single, protocol, cookie, screen)
                .await
        }
    }
    .map_err(|e| SessionError::upstream(Phase::Serve, e))?;
    if kind != RequestKind::Env {
        granted.grant(kind, rule);
        held.push((kind, rule.to_owned()));
    }
    Ok(())
}

/// The channel's request and what the agent asked of the channel before it.
struct Asked<'a> {
    kind: RequestKind,
    raw: &'a [u8],
    pty: Option<&'a PtyRequest>,
    setup: Vec<(Setup, String)>,
    granted: &'a Granted,
}

/// Judges the channel's request and starts it upstream, or refuses it on the channel.
async fn start(
    s: &Session,
    target: &SshTarget,
    host: &Upstream,
    ch: u32,
    asked: Asked<'_>,
    agent_rd: &mut ChannelReadHalf,
    agent_wr: &ChannelWriteHalf<server::Msg>,
) -> Result<Option<Running>, SessionError> {
    let Asked {
        kind,
        raw,
        pty,
        setup,
        granted,
    } = asked;
    let text = String::from_utf8_lossy(raw).into_owned();
    let request = SshRequest {
        kind,
        text: text.clone(),
        words: (kind == RequestKind::Exec).then(|| Words::parse(raw)),
    };
    let verdict = decide(&target.rules, s.who(), &request);
    let event = |action, rule: &str| s.event(action, rule, detail(ch, kind, &text, 0, 0));
    let shown = if text.is_empty() {
        format!("{kind:?}").to_lowercase()
    } else {
        text.clone()
    };
    let mut input = Vec::new();
    let mut eof = false;
    let refusal = match verdict.action {
        Action::Deny => {
            let mut why = format!(
                "gatewayd: policy {} denies this {} (rule {}): {shown}",
                s.admitted.policy,
                if kind == RequestKind::Exec {
                    "command"
                } else {
                    "request"
                },
                verdict.rule
            );
            if let Some(Words::Raw { why: raw, .. }) = &request.words {
                why.push_str(&format!(
                    "\ngatewayd: it is not plain words ({raw}); only a rule with raw_shell = true for its program allows that"
                ));
            }
            Some(why)
        }
        Action::Hold => {
            let req = target.hold_request(&verdict.rule, shown.clone());
            // The agent's input meanwhile is kept (up to a bound) and passed on if approved.
            // Past the bound the channel stops reading (the agent's window then fills) until
            // the decision.
            let left = async {
                let mut kept = 0;
                loop {
                    if kept >= HELD_INPUT {
                        std::future::pending::<()>().await;
                    }
                    match agent_rd.wait().await {
                        None | Some(ChannelMsg::Close) => return Ok(()),
                        Some(ChannelMsg::Data { data }) => {
                            kept += data.len();
                            input.push(data);
                        }
                        Some(ChannelMsg::Eof) => eof = true,
                        Some(_) => {}
                    }
                }
            };
            let timeout = req.terms.timeout;
            let held = hold(s, req, std::future::pending(), left)
                .await
                .map_err(|e| SessionError::agent(Phase::Serve, e))?;
            let id = held.id;
            let refusal = match &held.end {
                HoldEnd::Decided(Decision::Approved { .. }) => None,
                HoldEnd::Decided(Decision::Denied { by, reason }) => Some(format!(
                    "gatewayd: {} denied this command (approval {id}, rule {}): {reason}",
                    by.user, verdict.rule
                )),
                HoldEnd::Decided(Decision::Expired) => Some(format!(
                    "gatewayd: no approver decided within {}s (approval {id}, rule {}); it was not run",
                    timeout.as_secs(),
                    verdict.rule
                )),
                HoldEnd::Decided(Decision::Withdrawn) | HoldEnd::Cancelled | HoldEnd::AgentLeft => {
                    Some(format!(
                        "gatewayd: approval {id} was withdrawn; it was not run"
                    ))
                }
            };
            let mut e = event(Action::Hold, &verdict.rule);
            e.approval = Some(Box::new(held.record));
            if let Some(why) = &refusal {
                e.error = Some(why.clone());
            }
            record(s, e)?;
            if matches!(held.end, HoldEnd::AgentLeft) {
                return Ok(None);
            }
            refusal
        }
        Action::Allow | Action::Mask => None,
    };
    if let Some(why) = refusal {
        if verdict.action == Action::Deny {
            let mut e = event(Action::Deny, &verdict.rule);
            e.error = Some(why.clone());
            record(s, e)?;
        }
        let _ = agent_wr
            .extended_data_bytes(1, Bytes::from(format!("{why}\n").into_bytes()))
            .await;
        let _ = agent_wr.exit_status(1).await;
        let _ = agent_wr.eof().await;
        let _ = agent_wr.close().await;
        return Ok(None);
    }
    if verdict.action != Action::Hold {
        record(s, event(verdict.action, &verdict.rule))?;
    }
    // A host that refuses one more channel (sshd's MaxSessions) refuses this channel, not the
    // agent's other ones.
    let up = match host.channel_open_session().await {
        Ok(up) => up,
        Err(e) => {
            let why = format!("gatewayd: the host refused a new channel: {e}\n");
            let _ = agent_wr
                .extended_data_bytes(1, Bytes::from(why.into_bytes()))
                .await;
            let _ = agent_wr.exit_status(1).await;
            let _ = agent_wr.eof().await;
            let _ = agent_wr.close().await;
            return Ok(None);
        }
    };
    let (up_rd, up_wr) = up.split();
    let failed = |e: russh::Error| SessionError::upstream(Phase::Serve, e);
    let mut held = Vec::new();
    for (asked, rule) in setup {
        send_setup(&up_wr, asked, &rule, granted, &mut held).await?;
    }
    if let Some(p) = pty {
        up_wr
            .request_pty(false, &p.term, p.cols, p.rows, p.pix_w, p.pix_h, &p.modes)
            .await
            .map_err(failed)?;
    }
    match kind {
        RequestKind::Exec => up_wr.exec(false, raw.to_vec()).await,
        RequestKind::Shell => up_wr.request_shell(false).await,
        _ => up_wr.request_subsystem(false, text.clone()).await,
    }
    .map_err(failed)?;
    for chunk in input {
        up_wr.data_bytes(chunk).await.map_err(failed)?;
    }
    if eof {
        up_wr.eof().await.map_err(failed)?;
    }
    let detectors = Detectors::new(
        verdict
            .masks
            .iter()
            .flat_map(|&i| target.rules[i].detectors.iter().copied()),
    );
    let sftp = (kind == RequestKind::Subsystem && text == "sftp").then(Filter::default);
    Ok(Some(Running {
        up_rd,
        up_wr,
        kind,
        command: text,
        rule: verdict.rule,
        detectors,
        verbatim: kind != RequestKind::Subsystem,
        sftp,
        typed: (kind == RequestKind::Shell).then(Vec::new),
        granted: held,
        terminal: pty.is_some(),
    }))
}
