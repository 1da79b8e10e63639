//! One session channel: its request (exec, shell, subsystem) judged by the target's rules and
//! held for approval when a rule says so; if allowed, a channel to the host with the same
//! terminal, the env, agent and X11 requests the rules allowed, and the request, and the bytes
//! relayed both ways and recorded; if not, a message on stderr and exit status 1, and the rest
//! of the session goes on.

use bytes::Bytes;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty, client, server};

use super::{
    config::SshTarget,
    forward::judge_now,
    grants::Granted,
    record::{Recorder, detail},
    relay::relay,
    rules::{RequestKind, SshRequest},
    session::record,
    sftp::Filter,
    upstream::Upstream,
    words::Words,
};
use crate::{
    approval::Decision,
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
pub(super) struct Setups {
    asked: usize,
    kept: Vec<(Setup, String)>,
}

/// An env, agent or X11 request of the agent's channel.
pub(super) enum Setup {
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
    pub(super) fn of(m: ChannelMsg) -> Result<Setup, ChannelMsg> {
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
pub(super) type Held = Vec<(RequestKind, String)>;

/// A channel's request once judged and let through.
pub(super) struct Running {
    pub(super) up_rd: ChannelReadHalf,
    pub(super) up_wr: ChannelWriteHalf<client::Msg>,
    pub(super) kind: RequestKind,
    pub(super) command: String,
    pub(super) rule: String,
    pub(super) detectors: Detectors,
    /// Record the bytes themselves (not for subsystems: SFTP is file content).
    pub(super) verbatim: bool,
    /// For the `sftp` subsystem: its requests judged one by one.
    pub(super) sftp: Option<Filter>,
    /// For a shell: what the agent has typed since its last Enter.
    pub(super) typed: Option<Vec<u8>>,
    /// The agent and X11 grants this channel holds, by rule (revoked when it ends).
    pub(super) granted: Held,
    /// Whether the channel has a terminal (what is held for masking goes sooner).
    pub(super) terminal: bool,
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

/// Env, agent and X11 requests one channel may make (each judged and audited).
const MAX_SETUP: usize = 64;

/// A channel's env, agent or X11 request: judged (as the agent side answered it) and audited;
/// if allowed, kept for the host's channel, or sent on at once if that is running.
pub(super) async fn asked_setup(
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
