//! Agent to upstream: each message judged, then forwarded or replaced by a stand-in that fails
//! upstream in its place. Prepared statements and portals (Parse, Bind, SQL PREPARE and
//! DECLARE) are tracked through [`Names`](super::super::names), which changes only when the
//! server answers, so an Execute, EXECUTE or FETCH is judged by what the server will run.

use std::{collections::HashMap, sync::Arc};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{
    Ctx, Expect, ExpectTx, Judgements, MAX_OUTSTANDING, Pending, RelayError, describe, flush,
    hold::{self, Held},
    refused_function_call, refused_now, stand_in_bind, stand_in_execute, stand_in_parse,
    stand_in_query, unknown_name,
};
use crate::protocol::postgres::{
    codec::{
        FrameError,
        backend::ErrorFields,
        frame::{self, agent_limit, next_frame_by},
        frontend::{Kind, Message},
    },
    config::Durability,
    judge::{Judged, POLICY_DENIED},
    names::{Effect, Lookup, Space, Ticket},
    rules::Action,
    sql::SessionOp,
};
use crate::{
    audit::SqlStep,
    memory::MessageLease,
    sql::{SqlKind, StatementKind},
};

/// Messages framed and decoded ahead of judging at once: enough for any client's pipeline,
/// few enough that what a batch holds beyond the bytes read stays small (a decoded Sync is
/// about 100 bytes for 5 read).
const BATCH: usize = 1024;

/// How long a message over the memory budget's free size may stall before it is complete.
const LARGE_MESSAGE_STALL: std::time::Duration = std::time::Duration::from_secs(10);

fn space(kind: Kind) -> Space {
    match kind {
        Kind::Statement => Space::Statement,
        Kind::Portal => Space::Portal,
    }
}

/// Agent to upstream. Returns when the agent terminates or closes.
pub async fn agent_side<R, W>(
    ctx: &Ctx<'_>,
    mut agent: R,
    mut buf: BytesMut,
    mut upstream: W,
    expect: ExpectTx,
    bytes_up: &std::sync::atomic::AtomicU64,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut judgements = Judgements::default();
    // Held prepared statements' text by statement name, and by portal with its parameters.
    let mut held_sql: HashMap<String, String> = HashMap::new();
    let mut held_portals: HashMap<String, String> = HashMap::new();
    let mut out = BytesMut::with_capacity(16 * 1024);
    let before_forward = ctx.target.durability == Durability::BeforeForward;
    // `sent` events appended since `out` was last written: flushed before it is.
    let mut unflushed = false;
    let mut lease = MessageLease::default();
    let push = |e: Expect| ctx.expect(&expect, e);
    let effect = |e: Effect<Arc<Judged>>| -> Result<Ticket, RelayError> {
        ctx.names
            .push(e)
            .map_err(|e| RelayError::Limit(e.to_string()))
    };
    let mut batch: Vec<(frame::Frame, Message)> = Vec::new();
    loop {
        // The complete messages read (up to BATCH of them) are framed and decoded before any
        // is judged: a batch that ends in a malformed message sends nothing, and audits
        // nothing as if it would run.
        while batch.len() < BATCH {
            let Some(frame) = next_frame_by(&mut buf, agent_limit).map_err(RelayError::Agent)?
            else {
                break;
            };
            let msg = Message::decode(frame.tag, &frame.body).map_err(RelayError::Agent)?;
            batch.push((frame, msg));
        }
        let more = batch.len() == BATCH;
        for (frame, msg) in batch.drain(..) {
            // The audit is the product: once an event of this session could not be stored,
            // nothing more of it goes upstream (the agent gets FATAL 58000).
            if ctx
                .session
                .audit
                .session_lost_events(ctx.session.admitted.id)
            {
                return Err(RelayError::Audit(
                    "events of this session could not be stored".into(),
                ));
            }
            if ctx.outstanding.load(std::sync::atomic::Ordering::Relaxed) >= MAX_OUTSTANDING {
                return Err(RelayError::Limit(format!(
                    "more than {MAX_OUTSTANDING} messages await the server's answer"
                )));
            }
            // What a name holds for a message sent now; an earlier batch the server has not
            // answered may decide it, so what was forwarded goes out before waiting for that.
            macro_rules! lookup {
                ($space:expr, $name:expr) => {
                    match ctx.names.peek($space, $name) {
                        Lookup::Known(j) => Some(j),
                        Lookup::Unknown => None,
                        Lookup::Wait => {
                            durable(ctx, &mut unflushed).await?;
                            flush(&mut upstream, &mut out, bytes_up).await?;
                            ctx.names.lookup($space, $name).await
                        }
                    }
                };
            }
            match msg {
                Message::Query { sql } => {
                    let judged = judgements.get(ctx, &sql, false).await;
                    // EXECUTE and FETCH run what was prepared or declared, judged then.
                    let mut judged = match &judged.session {
                        Some(SessionOp::Execute { name }) => {
                            match lookup!(Space::Statement, name) {
                                Some(j) => Arc::new(used(&j, &judged)),
                                None => Arc::new(unknown_name(ctx.policy(), "statement", name)),
                            }
                        }
                        Some(SessionOp::Fetch { name }) => match lookup!(Space::Portal, name) {
                            Some(j) => Arc::new(used(&j, &judged)),
                            None => Arc::new(unknown_name(ctx.policy(), "cursor", name)),
                        },
                        _ => judged,
                    };
                    // PREPARE runs nothing: a held statement is prepared as usual and waits
                    // at each EXECUTE, as a held Parse waits at each Execute.
                    let preparing = matches!(judged.session, Some(SessionOp::Prepare { .. }));
                    let stored = judged.clone();
                    if preparing && judged.action == Action::Hold {
                        judged = Arc::new(prepared_view(&judged));
                    }
                    if judged.hold.is_some() && judged.approval.is_none() {
                        // What the agent sent before it goes upstream now; only this waits.
                        durable(ctx, &mut unflushed).await?;
                        flush(&mut upstream, &mut out, bytes_up).await?;
                        judged = match hold::wait(ctx, &judged, &sql, &mut agent, &mut buf).await? {
                            Held::Decided(j) => j,
                            Held::AgentLeft(j) => {
                                let p = Expect::Simple(Pending::new(j));
                                return super::left_while_held(ctx, p, &expect, upstream).await;
                            }
                        };
                    }
                    let refused = judged.refusal.is_some();
                    let mut pending = Pending::new(judged.clone());
                    if !refused {
                        let value = if preparing { stored } else { judged.clone() };
                        pending.ticket = session_effect(&judged.session, value)
                            .map(effect)
                            .transpose()?;
                    }
                    if before_forward && !refused {
                        ctx.sent(SqlStep::QuerySent, &judged)?;
                        unflushed = true;
                    }
                    push(Expect::Simple(pending));
                    // A simple Query is a batch of its own.
                    ctx.names.sync();
                    if refused {
                        stand_in_query(&mut out);
                    } else {
                        frame.encode(&mut out);
                    }
                }
                Message::NotUtf8 { parse } => {
                    // What PostgreSQL answers for bytes that are not UTF-8 in a UTF8 session.
                    let judged = Arc::new(Judged::refused(
                        "encoding",
                        SqlKind::UNPARSED,
                        String::new(),
                        ErrorFields::error(
                            "22021",
                            format!(
                                "gatewayd: policy {} refuses bytes that are not UTF-8: invalid byte sequence for encoding \"UTF8\"",
                                ctx.policy()
                            ),
                        ),
                    ));
                    match parse {
                        None => {
                            push(Expect::Simple(Pending::new(judged)));
                            ctx.names.sync();
                            stand_in_query(&mut out);
                        }
                        Some(name) => {
                            push(Expect::Parse {
                                refused: Some(Pending::new(judged)),
                                ticket: None,
                            });
                            stand_in_parse(&name, &mut out);
                        }
                    }
                }
                Message::FunctionCall => {
                    let judged = Arc::new(refused_function_call(ctx.policy()));
                    push(Expect::Simple(Pending::new(judged)));
                    ctx.names.sync();
                    stand_in_query(&mut out);
                }
                Message::Parse { name, sql } => {
                    // A held statement is parsed and bound as usual (neither runs anything);
                    // it waits at each Execute, where the approver sees its parameters.
                    let mut judged = judgements.get(ctx, &sql, true).await;
                    if judged.session.is_some() {
                        // Prepared statements and cursors in SQL are tracked for simple Query
                        // only: through Parse/Execute their effect would come at Execute.
                        judged = Arc::new(Judged::refused(
                            "session-op",
                            SqlKind::UNPARSED,
                            String::new(),
                            ErrorFields::error(
                                POLICY_DENIED,
                                format!(
                                    "gatewayd: policy {} refuses SQL PREPARE, EXECUTE, DECLARE, FETCH, CLOSE or DEALLOCATE through Parse",
                                    ctx.policy()
                                ),
                            )
                            .with_hint("Send it as a simple query."),
                        ));
                    }
                    if judged.hold.is_some() {
                        held_sql.insert(name.clone(), sql);
                    }
                    if refused_now(&judged) {
                        push(Expect::Parse {
                            refused: Some(Pending::new(judged)),
                            ticket: None,
                        });
                        stand_in_parse(&name, &mut out);
                    } else {
                        let ticket = effect(Effect::Define {
                            space: Space::Statement,
                            name,
                            value: judged,
                            holdable: false,
                        })?;
                        push(Expect::Parse {
                            refused: None,
                            ticket: Some(ticket),
                        });
                        frame.encode(&mut out);
                    }
                }
                Message::Bind { portal, statement } => {
                    let judged = lookup!(Space::Statement, &statement).unwrap_or_else(|| {
                        Arc::new(unknown_name(ctx.policy(), "statement", &statement))
                    });
                    if refused_now(&judged) {
                        push(Expect::Bind {
                            refused: Some(Pending::new(judged)),
                            ticket: None,
                        });
                        stand_in_bind(&frame, &statement, &mut out);
                    } else {
                        if let Some(sql) = held_sql.get(&statement) {
                            held_portals
                                .insert(portal.clone(), hold::with_parameters(sql, &frame.body));
                        }
                        let ticket = effect(Effect::Define {
                            space: Space::Portal,
                            name: portal,
                            value: judged,
                            holdable: false,
                        })?;
                        push(Expect::Bind {
                            refused: None,
                            ticket: Some(ticket),
                        });
                        frame.encode(&mut out);
                    }
                }
                Message::Describe { kind, name } => {
                    let judged = lookup!(space(kind), &name).filter(|j| refused_now(j));
                    if judged.is_some() && kind == Kind::Statement {
                        describe(b'S', super::STAND_IN_NAME, &mut out);
                    } else {
                        frame.encode(&mut out);
                    }
                    push(Expect::Describe(judged));
                }
                Message::Execute { portal, .. } => {
                    let mut judged = lookup!(Space::Portal, &portal)
                        .unwrap_or_else(|| Arc::new(unknown_name(ctx.policy(), "portal", &portal)));
                    if judged.hold.is_some() && judged.approval.is_none() {
                        let command = held_portals.get(&portal).cloned().unwrap_or_default();
                        durable(ctx, &mut unflushed).await?;
                        flush(&mut upstream, &mut out, bytes_up).await?;
                        judged =
                            match hold::wait(ctx, &judged, &command, &mut agent, &mut buf).await? {
                                Held::Decided(j) => j,
                                Held::AgentLeft(j) => {
                                    let p = Expect::Execute(Pending::new(j));
                                    return super::left_while_held(ctx, p, &expect, upstream).await;
                                }
                            };
                    }
                    if judged.refusal.is_some() {
                        // Fails upstream like the statement's own error would: PostgreSQL
                        // skips to Sync and aborts the transaction.
                        push(Expect::Execute(Pending::new(judged)));
                        stand_in_execute(&mut out);
                        continue;
                    }
                    if judged.masker.is_some() {
                        push(Expect::HiddenDescribe);
                        describe(b'P', &portal, &mut out);
                    }
                    if before_forward {
                        ctx.sent(SqlStep::ExecuteSent, &judged)?;
                        unflushed = true;
                    }
                    push(Expect::Execute(Pending::new(judged)));
                    frame.encode(&mut out);
                }
                Message::Close { kind, name } => {
                    let ticket = effect(Effect::Remove {
                        space: space(kind),
                        name,
                    })?;
                    push(Expect::Close(Some(ticket)));
                    frame.encode(&mut out);
                }
                Message::Sync => {
                    push(Expect::Sync);
                    ctx.names.sync();
                    frame.encode(&mut out);
                }
                Message::Flush | Message::CopyData | Message::CopyDone | Message::CopyFail => {
                    frame.encode(&mut out);
                }
                Message::Terminate => {
                    frame.encode(&mut out);
                    bytes_up.fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    durable(ctx, &mut unflushed).await?;
                    upstream.write_all(&out).await?;
                    return Ok(());
                }
                Message::Password(_) => {
                    return Err(RelayError::Agent(FrameError::Malformed {
                        what: "PasswordMessage",
                        why: "not expected after authentication",
                    }));
                }
            }
        }
        if more {
            // More complete messages wait in `buf`: frame them before reading again.
            continue;
        }
        durable(ctx, &mut unflushed).await?;
        flush(&mut upstream, &mut out, bytes_up).await?;
        lease.cover(frame::declared_len(&buf))?;
        // A large message holds part of the shared budget until it is whole: it must keep
        // arriving, or one agent could hold its share by sending a header and no more.
        let read = agent.read_buf(&mut buf);
        let n = if lease.held() {
            tokio::time::timeout(LARGE_MESSAGE_STALL, read)
                .await
                .map_err(|_| {
                    RelayError::Agent(FrameError::Malformed {
                        what: "large",
                        why: "it stopped arriving mid-way for 10 s while holding memory",
                    })
                })??
        } else {
            read.await?
        };
        if n == 0 {
            // Gone without a Terminate: say it for the agent, so that the upstream answers
            // what is in flight and then closes, and the upstream side can audit the answers.
            let _ = upstream.write_all(&[b'X', 0, 0, 0, 4]).await;
            return Ok(());
        }
    }
}

/// What a SQL statement does to the namespaces, if the server runs it.
fn session_effect(op: &Option<SessionOp>, value: Arc<Judged>) -> Option<Effect<Arc<Judged>>> {
    Some(match op.as_ref()? {
        SessionOp::Prepare { name } => Effect::Define {
            space: Space::Statement,
            name: name.clone(),
            value,
            holdable: false,
        },
        SessionOp::Declare { name, holdable } => Effect::Define {
            space: Space::Portal,
            name: name.clone(),
            value,
            holdable: *holdable,
        },
        SessionOp::ClosePortal { name: Some(name) } => Effect::Remove {
            space: Space::Portal,
            name: name.clone(),
        },
        SessionOp::ClosePortal { name: None } => Effect::RemoveAll {
            space: Space::Portal,
        },
        SessionOp::Deallocate { name: Some(name) } => Effect::Remove {
            space: Space::Statement,
            name: name.clone(),
        },
        SessionOp::Deallocate { name: None } => Effect::RemoveAll {
            space: Space::Statement,
        },
        SessionOp::DiscardAll => Effect::DiscardAll,
        SessionOp::Execute { .. } | SessionOp::Fetch { .. } => return None,
    })
}

/// EXECUTE or FETCH: the verdict, masker and hold of what was prepared or declared, audited
/// as the statement the agent sent.
fn used(declared: &Judged, sent: &Judged) -> Judged {
    let mut j = declared.clone();
    j.session = sent.session.clone();
    let kind = declared
        .statements
        .first()
        .map_or(SqlKind::Statement(StatementKind::Execute), |(k, _)| *k);
    j.statements = sent
        .statements
        .iter()
        .map(|(_, text)| (kind, text.clone()))
        .collect();
    j.by_shape = false;
    j
}

/// A held statement's PREPARE: it runs nothing, so it goes upstream; the hold waits at each
/// EXECUTE.
fn prepared_view(held: &Judged) -> Judged {
    let mut j = held.clone();
    j.action = Action::Allow;
    j.refusal = None;
    j.hold = None;
    j
}

/// Makes the `sent` events appended so far durable before what they describe goes upstream.
pub(super) async fn durable(ctx: &Ctx<'_>, unflushed: &mut bool) -> Result<(), RelayError> {
    if std::mem::take(unflushed) {
        ctx.session
            .audit
            .settle(true)
            .await
            .map_err(|e| RelayError::Audit(e.to_string()))?;
    }
    Ok(())
}
