//! One PostgreSQL session through the gateway: the agent's startup answered locally, the
//! daemon's own login upstream, then the judged relay until either side ends.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    cancel::{CancelRegistry, Registered},
    codec::{
        backend::{self, ErrorFields},
        frame::next_startup,
        frontend::Startup,
    },
    config::{PostgresTarget, reported_setting_ok},
    judge::POLICY_DENIED,
    relay::{self, Ctx, RelayError},
    tls,
    upstream::{self, UpstreamError},
};
use crate::session::{
    BoxFuture, HANDSHAKE_STEP, Handler, Phase, Session, SessionError, Source, Upstream,
    handler::reset,
};

/// How long a session whose agent has left waits for the upstream to answer what is in flight.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// What PostgreSQL sessions share: the cancel keys handed to agents.
#[derive(Default)]
pub struct Shared {
    cancels: CancelRegistry,
}

/// One PostgreSQL session's handler: the agent's startup answered locally, the daemon's own
/// login upstream, then the judged relay until either side ends.
pub struct Postgres<'a> {
    shared: &'a Shared,
    target: Arc<PostgresTarget>,
}

impl<'a> Postgres<'a> {
    pub fn new(shared: &'a Shared, target: Arc<PostgresTarget>) -> Postgres<'a> {
        Postgres { shared, target }
    }
}

impl Handler for Postgres<'_> {
    fn serve<'a>(
        &'a self,
        session: &'a Session,
        agent: TcpStream,
        upstream: Upstream,
    ) -> BoxFuture<'a, Result<(), SessionError>> {
        Box::pin(run(self, session, agent, upstream))
    }

    fn refuse<'a>(&'a self, agent: TcpStream, why: &'a SessionError) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match why.source {
                Source::Audit => refuse_unrecorded(agent, &why.what).await,
                _ => reset(&agent),
            }
        })
    }
}

fn too_slow(what: &'static str) -> super::codec::FrameError {
    super::codec::FrameError::Malformed {
        what,
        why: "not complete within the handshake bound",
    }
}

async fn run(
    p: &Postgres<'_>,
    session: &Session,
    mut agent: TcpStream,
    upstream: Upstream,
) -> Result<(), SessionError> {
    let _ = agent.set_nodelay(true);
    let agent_failed = |phase, e: &dyn std::fmt::Display| SessionError::agent(phase, e);
    let mut abuf = BytesMut::with_capacity(8 * 1024);
    let startup = tokio::time::timeout(HANDSHAKE_STEP, agent_startup(&mut agent, &mut abuf))
        .await
        .unwrap_or_else(|_| Err(too_slow("startup")));
    let params = match startup {
        Ok(AgentStart::Start(params)) => params,
        Ok(AgentStart::Cancel {
            process_id,
            secret_key,
        }) => {
            if let Ok(mut upstream) = upstream.connect().await {
                p.shared
                    .cancels
                    .cancel(
                        process_id,
                        secret_key,
                        session.admitted.governed_cgroup_id,
                        &mut upstream,
                    )
                    .await;
            }
            return Ok(());
        }
        Err(e) => {
            let _ = reply(
                &mut agent,
                ErrorFields::fatal("08P01", format!("gatewayd: {e}")),
            )
            .await;
            return Err(agent_failed(Phase::Handshake, &e));
        }
    };

    if let Some(verifier) = &p.target.jwt {
        let raw = tokio::time::timeout(HANDSHAKE_STEP, agent_token(&mut agent, &mut abuf))
            .await
            .unwrap_or_else(|_| Err(too_slow("password message")));
        match raw {
            Ok(raw) => match verifier.verify(&raw) {
                Ok(id) => session.set_token(id),
                Err(e) => {
                    let _ = reply(
                        &mut agent,
                        ErrorFields::fatal("28P01", format!("gatewayd: token rejected: {e}"))
                            .with_hint("This target wants a JWT from the configured issuer as the password."),
                    )
                    .await;
                    return Err(agent_failed(
                        Phase::Handshake,
                        &format_args!("token rejected: {e}"),
                    ));
                }
            },
            Err(e) => {
                let _ = reply(
                    &mut agent,
                    ErrorFields::fatal("08P01", format!("gatewayd: {e}")),
                )
                .await;
                return Err(agent_failed(Phase::Handshake, &e));
            }
        }
    }

    let upstream_addr = upstream.addr;
    let server_name = upstream.server_name.clone();
    let upstream = match upstream.connect().await {
        Ok(s) => s,
        Err(why) => {
            let e = ErrorFields::fatal(
                "08001",
                format!(
                    "gatewayd: upstream {} is unreachable: {}",
                    session.admitted.target, why.what
                ),
            );
            let _ = reply(&mut agent, e).await;
            return Err(why);
        }
    };
    let mut ubuf = BytesMut::with_capacity(8 * 1024);
    let login = async {
        let mut io = tls::negotiate(upstream, &p.target.tls, &server_name).await?;
        let s = upstream::login(&mut io, &mut ubuf, &p.target, &params).await?;
        Ok::<_, UpstreamError>((io, s))
    };
    let login = tokio::time::timeout(HANDSHAKE_STEP, login)
        .await
        .unwrap_or_else(|_| {
            Err(UpstreamError::Protocol(format!(
                "login not complete within {HANDSHAKE_STEP:?}"
            )))
        });
    let (upstream, server) = match login {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(session.id = session.admitted.id, error = %e, "upstream login failed");
            // The upstream's own words may name the daemon's role; the agent learns only
            // that the gateway could not log in.
            // Neither the agent nor the audit gets the role name or the credential's path:
            // those are in the daemon's log only.
            let msg = match &e {
                UpstreamError::Refused(f) => {
                    format!("upstream refused the gateway's login ({})", f.code)
                }
                UpstreamError::Credential(_) | UpstreamError::NoCredential => {
                    "the gateway's credential for this target is not available".to_owned()
                }
                other => other.to_string(),
            };
            let _ = reply(
                &mut agent,
                ErrorFields::fatal("08001", format!("gatewayd: {msg}")).with_hint(
                    "The gateway logs in upstream with its own credential; see its log.",
                ),
            )
            .await;
            return Err(SessionError::upstream(Phase::Connect, msg));
        }
    };

    if let Some((k, v)) = server
        .parameters
        .iter()
        .find(|(k, v)| !reported_setting_ok(k, v))
    {
        let why = format!("the upstream has {k} = {v}");
        let _ = reply(
            &mut agent,
            ErrorFields::fatal(POLICY_DENIED, format!("gatewayd: {why}")).with_hint(
                "The gateway reads statements as PostgreSQL does only with standard_conforming_strings on and client_encoding UTF8.",
            ),
        )
        .await;
        return Err(SessionError::upstream(Phase::Connect, why));
    }
    let registered: Registered = p.shared.cancels.register(
        upstream_addr,
        server.process_id,
        server.secret_key,
        session.admitted.governed_cgroup_id,
    );
    let mut out = BytesMut::new();
    backend::authentication_ok(&mut out);
    // The upstream role's name stays with the gateway: the agent hears its own.
    let agent_user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map_or("agent", |(_, v)| v.as_str());
    for (k, v) in &server.parameters {
        let v = if k == "session_authorization" {
            agent_user
        } else {
            v
        };
        backend::parameter_status(k, v, &mut out);
    }
    backend::backend_key_data(registered.process_id, registered.secret_key, &mut out);
    backend::ready_for_query(b'I', &mut out);
    if let Err(e) = agent.write_all(&out).await {
        return Err(agent_failed(Phase::Handshake, &e));
    }

    let ctx = Ctx {
        session,
        texts: relay::text_masker(&p.target),
        names: Default::default(),
        outstanding: Default::default(),
        cancelled: registered.cancelled.clone(),
        target: p.target.clone(),
    };
    let (agent_rd, mut agent_wr) = agent.into_split();
    let (up_rd, up_wr) = tokio::io::split(upstream);
    let (tx, mut rx) = relay::expectations();
    enum Ended {
        Agent(Result<(), RelayError>),
        Upstream(Result<(), RelayError>),
    }
    let ended = {
        let to_upstream = relay::agent_side(&ctx, agent_rd, abuf, up_wr, tx, &session.bytes_up);
        let to_agent = relay::upstream_side(
            &ctx,
            up_rd,
            ubuf,
            &mut agent_wr,
            &mut rx,
            &session.bytes_down,
        );
        tokio::pin!(to_upstream, to_agent);
        let ended = tokio::select! {
            r = &mut to_upstream => Ended::Agent(r),
            r = &mut to_agent => Ended::Upstream(r),
        };
        // An agent that said goodbye (or vanished: the agent side said it for it) may have
        // left statements in flight; the upstream answers them and closes, and the upstream
        // side audits the answers. A query that outlasts the grace is audited unanswered.
        if let Ended::Agent(Ok(())) = ended {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut to_agent).await;
        }
        ended
    };
    let serve =
        |source, what: &dyn std::fmt::Display| SessionError::new(source, Phase::Serve, what);
    let outcome = match ended {
        Ended::Agent(Ok(())) => Ok(()),
        Ended::Agent(Err(RelayError::Agent(e))) => {
            let fatal = ErrorFields::fatal("08P01", format!("gatewayd: {e}"));
            let _ = reply_half(&mut agent_wr, fatal).await;
            Err(serve(Source::Agent, &e))
        }
        Ended::Agent(Err(RelayError::Audit(e))) => {
            // before-forward: a statement that cannot be recorded is not sent.
            let fatal = ErrorFields::fatal(
                "58000",
                "gatewayd: the audit store failed; statements are not forwarded unrecorded",
            );
            let _ = reply_half(&mut agent_wr, fatal).await;
            Err(serve(Source::Audit, &e))
        }
        Ended::Agent(Err(RelayError::Memory(e))) | Ended::Upstream(Err(RelayError::Memory(e))) => {
            // out_of_memory, as the server reports its own.
            let fatal = ErrorFields::fatal("53200", format!("gatewayd: {e}"));
            let _ = reply_half(&mut agent_wr, fatal).await;
            Err(serve(Source::Agent, &e))
        }
        Ended::Agent(Err(e)) => Err(serve(Source::Agent, &e)),
        Ended::Upstream(Ok(())) => Err(serve(Source::Upstream, &"upstream closed the connection")),
        Ended::Upstream(Err(e)) => {
            let code = match e {
                RelayError::PinnedSetting(_) => POLICY_DENIED,
                // query_canceled, as the server's own statement_timeout reports it.
                RelayError::StatementBound(_) => "57014",
                _ => "08006",
            };
            let fatal = ErrorFields::fatal(code, format!("gatewayd: {e}"));
            let _ = reply_half(&mut agent_wr, fatal).await;
            Err(serve(Source::Upstream, &e))
        }
    };
    let why = match &outcome {
        Ok(()) => "no answer: the agent left and the upstream did not answer in time",
        Err(e) if e.source == Source::Agent => "no answer: the session ended on an agent error",
        _ => "no answer: the upstream connection ended",
    };
    rx.abandon(&ctx, why);
    drop(registered);
    outcome
}

/// A session the audit could not open: the agent still hears why, in PostgreSQL's words, after
/// its startup packet, rather than a bare reset.
pub async fn refuse_unrecorded(mut agent: TcpStream, why: &str) {
    let mut buf = BytesMut::new();
    let startup = tokio::time::timeout(HANDSHAKE_STEP, agent_startup(&mut agent, &mut buf)).await;
    if let Ok(Ok(AgentStart::Start(_))) = startup {
        let e = ErrorFields::fatal(
            "58000",
            "gatewayd: the audit store cannot record this session, so it does not run",
        )
        .with_detail(why.to_owned());
        let _ = reply(&mut agent, e).await;
    }
}

enum AgentStart {
    Start(Vec<(String, String)>),
    Cancel { process_id: i32, secret_key: i32 },
}

/// Answers SSL and GSS encryption requests with 'N' (the local leg is loopback) until the
/// real startup packet arrives. The agent is already identified by the kernel, so it is
/// let in without a password.
async fn agent_startup(
    agent: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<AgentStart, super::codec::FrameError> {
    let io = |e: std::io::Error| super::codec::FrameError::Malformed {
        what: "startup",
        why: if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "connection closed"
        } else {
            "read failed"
        },
    };
    loop {
        let body = loop {
            if let Some(b) = next_startup(buf)? {
                break b;
            }
            if agent.read_buf(buf).await.map_err(io)? == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        };
        match Startup::decode(&body)? {
            Startup::Ssl | Startup::GssEnc => agent.write_all(b"N").await.map_err(io)?,
            Startup::Cancel {
                process_id,
                secret_key,
            } => {
                return Ok(AgentStart::Cancel {
                    process_id,
                    secret_key,
                });
            }
            Startup::Start { params } => return Ok(AgentStart::Start(params)),
        }
    }
}

/// Asks for a password (in clear: the leg is loopback) and reads the token the agent sends.
async fn agent_token(
    agent: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<String, super::codec::FrameError> {
    let mut out = BytesMut::new();
    backend::authentication_cleartext(&mut out);
    let io = |_| super::codec::FrameError::Malformed {
        what: "PasswordMessage",
        why: "connection closed",
    };
    agent.write_all(&out).await.map_err(io)?;
    let frame = loop {
        if let Some(f) = super::codec::frame::next_frame(buf, super::codec::frame::MAX_STARTUP)? {
            break f;
        }
        if agent.read_buf(buf).await.map_err(io)? == 0 {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    };
    if frame.tag != b'p' {
        return Err(super::codec::FrameError::Malformed {
            what: "PasswordMessage",
            why: "expected a password",
        });
    }
    let mut r = super::codec::frame::Reader::new("PasswordMessage", &frame.body);
    Ok(r.cstr()?.to_owned())
}

async fn reply(agent: &mut TcpStream, e: ErrorFields) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    e.encode(&mut out);
    agent.write_all(&out).await
}

async fn reply_half<W: tokio::io::AsyncWrite + Unpin>(
    agent: &mut W,
    e: ErrorFields,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    e.encode(&mut out);
    agent.write_all(&out).await
}
