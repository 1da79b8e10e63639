//! The query phase. The agent side judges each message and forwards it, or forwards a
//! stand-in that fails upstream in the same place (so PostgreSQL itself aborts the
//! transaction and skips to Sync exactly as it would for a real error). For every message
//! that gets an answer it queues an [`Expect`]; the upstream side matches answers to them in
//! order, rewrites the stand-in's error into the policy's, masks rows, and audits.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::mpsc,
};

use super::{
    codec::{
        Frame, FrameError,
        backend::{self, Column, ErrorFields},
        frame::{MAX_AGENT_MESSAGE, MAX_UPSTREAM_MESSAGE, next_frame},
        frontend::{Kind, Message},
    },
    config::{Durability, PostgresTarget},
    hold::{self, Held},
    judge::{Judged, POLICY_DENIED, judge},
    mask::Masker,
    rules::Who,
    shape::{self, Shape},
    sql::STRING_SYNTAX_SETTING,
};
use crate::{
    approval::Broker,
    audit::{Agent, AuditStore, StatementEvent, now_ms},
};

/// Fails in PostgreSQL's raw parser, before anything runs: the stand-in for a refused
/// statement.
const STAND_IN_SQL: &str = "GATEWAYD POLICY REFUSAL";
/// A prepared statement name no client uses: Bind and Describe of it fail upstream.
const STAND_IN_NAME: &str = "gatewayd refused statement";

pub struct Ctx {
    pub policy: String,
    pub target_name: String,
    pub target: Arc<PostgresTarget>,
    pub audit: AuditStore,
    pub session_id: u64,
    pub who: Who,
    /// The agent as attested at connect, for approvers.
    pub agent: Option<Agent>,
    pub approvals: Arc<Broker>,
    /// The last audit event's sequence number in this session (both relay halves write).
    pub seq: AtomicU64,
    /// The agent's CancelRequests, for a statement held by the gateway rather than running.
    pub cancelled: Arc<tokio::sync::Notify>,
}

impl Ctx {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// In `before-forward` durability: the `sent` events of a statement about to go upstream.
    fn sent(&self, step: &str, judged: &Judged) -> Result<(), RelayError> {
        for (kind, sql) in &judged.statements {
            let event = StatementEvent {
                session_id: self.session_id,
                seq: self.next_seq(),
                at_ms: now_ms(),
                step: format!("{step}:sent"),
                kind: kind.clone(),
                sql: sql.clone(),
                verdict: judged.verdict().into(),
                rule: judged.rule.clone(),
                duration_us: 0,
                rows: None,
                masked: 0,
                error: None,
                approval: judged.approval.clone().map(Box::new),
            };
            self.audit
                .append(event)
                .map_err(|e| RelayError::Audit(e.to_string()))?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("agent sent a malformed message: {0}")]
    Agent(FrameError),
    #[error("upstream sent a malformed message: {0}")]
    Upstream(FrameError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("audit: {0}")]
    Audit(String),
    #[error(
        "the upstream turned {STRING_SYNTAX_SETTING} off; the gateway cannot read string literals as PostgreSQL now would"
    )]
    StringSyntax,
}

/// A statement in flight and what its audit event will say.
struct Pending {
    judged: Arc<Judged>,
    started: Instant,
    rows: Option<u64>,
    masked: u64,
    error: Option<String>,
}

impl Pending {
    fn new(judged: Arc<Judged>) -> Self {
        Pending {
            judged,
            started: Instant::now(),
            rows: None,
            masked: 0,
            error: None,
        }
    }
}

/// The agent side's half of the queue of expected answers.
pub struct ExpectTx(mpsc::UnboundedSender<Expect>);

/// The upstream side's half: what was sent upstream and is not answered yet. It lives outside
/// the relay's futures so that what is still in flight when a session ends gets audited too
/// ([`ExpectRx::abandon`]): a statement the upstream received is never missing from the audit.
pub struct ExpectRx {
    rx: mpsc::UnboundedReceiver<Expect>,
    queue: VecDeque<Expect>,
}

pub fn expectations() -> (ExpectTx, ExpectRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        ExpectTx(tx),
        ExpectRx {
            rx,
            queue: VecDeque::new(),
        },
    )
}

impl ExpectRx {
    /// Audits whatever never got its answer, with `why` as its error.
    pub fn abandon(&mut self, ctx: &Ctx, why: &str) {
        while let Ok(e) = self.rx.try_recv() {
            self.queue.push_back(e);
        }
        while let Some(mut e) = self.queue.pop_front() {
            if let Some(p) = e.pending()
                && p.error.is_none()
            {
                p.error = Some(why.to_owned());
            }
            finish(ctx, e);
        }
    }
}

/// What the agent side expects the upstream to answer, in order.
enum Expect {
    /// A simple query (or a refused function call): answers until ReadyForQuery.
    Simple(Pending),
    Parse(Option<Pending>),
    Bind(Option<Pending>),
    Describe(Option<Arc<Judged>>),
    /// A Describe the gateway added to learn a masked portal's columns; not forwarded.
    HiddenDescribe,
    Execute(Pending),
    Close,
    Sync,
}

impl Expect {
    fn refusal(&self) -> Option<&ErrorFields> {
        match self {
            Expect::Simple(p) | Expect::Execute(p) => p.judged.refusal.as_ref(),
            Expect::Parse(p) | Expect::Bind(p) => p.as_ref()?.judged.refusal.as_ref(),
            Expect::Describe(j) => j.as_ref()?.refusal.as_ref(),
            _ => None,
        }
    }

    fn masker(&self) -> Option<&Masker> {
        match self {
            Expect::Simple(p) | Expect::Execute(p) => p.judged.masker.as_deref(),
            _ => None,
        }
    }

    fn pending(&mut self) -> Option<&mut Pending> {
        match self {
            Expect::Simple(p) | Expect::Execute(p) => Some(p),
            Expect::Parse(p) | Expect::Bind(p) => p.as_mut(),
            _ => None,
        }
    }
}

/// Judgements of this session, by SQL text and by shape. The verdict is a pure function of
/// the policy, the target, the agent's token and the statement, and a session keeps all but
/// the statement fixed, so a repeated text (a driver re-parsing the same statement) or the
/// same statement with other literals (a loop of `... WHERE id = $n` written inline) is parsed
/// and judged once. Bounded: cleared when full.
#[derive(Default)]
struct Judgements {
    by_text: HashMap<String, Arc<Judged>>,
    by_shape: HashMap<Shape, Arc<Judged>>,
}

impl Judgements {
    const MAX: usize = 256;

    /// `repeats`: the text is likely to come again verbatim (a Parse: drivers re-parse the
    /// same statement text with new parameters), so it is worth keeping by text as well.
    fn get(&mut self, ctx: &Ctx, sql: &str, repeats: bool) -> Arc<Judged> {
        if let Some(j) = self.by_text.get(sql) {
            return j.clone();
        }
        // A shape is looked up from tokens the lookup consumes; a miss (rare: once per shape
        // and session) tokenizes again for the parser.
        let tokens = (!ctx.target.audit_literals).then(|| shape::tokenize(sql).ok());
        let shape = match tokens.flatten() {
            Some(tokens) => {
                let shape = Shape::from_tokens(tokens);
                if let Some(j) = self.by_shape.get(&shape) {
                    return j.clone();
                }
                Some(shape)
            }
            None => None,
        };
        let j = Arc::new(judge(&ctx.policy, &ctx.target, &ctx.who, sql));
        if self.by_text.len() + self.by_shape.len() >= Self::MAX {
            self.by_text.clear();
            self.by_shape.clear();
        }
        match shape {
            Some(shape) if j.by_shape => {
                self.by_shape.insert(shape, j.clone());
                if repeats {
                    self.by_text.insert(sql.to_owned(), j.clone());
                }
            }
            _ => {
                self.by_text.insert(sql.to_owned(), j.clone());
            }
        }
        j
    }
}

/// Agent to upstream. Returns when the agent terminates or closes.
pub async fn agent_side<R, W>(
    ctx: &Ctx,
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
    let mut statements: HashMap<String, Arc<Judged>> = HashMap::new();
    let mut portals: HashMap<String, Arc<Judged>> = HashMap::new();
    let mut out = BytesMut::with_capacity(16 * 1024);
    let before_forward = ctx.target.durability == Durability::BeforeForward;
    // `sent` events appended since `out` was last written: flushed before it is.
    let mut unflushed = false;
    let push = |e: Expect| {
        // The upstream side only goes away when the session is ending anyway.
        let _ = expect.0.send(e);
    };
    loop {
        while let Some(frame) =
            next_frame(&mut buf, MAX_AGENT_MESSAGE).map_err(RelayError::Agent)?
        {
            let msg = Message::decode(frame.tag, &frame.body).map_err(RelayError::Agent)?;
            match msg {
                Message::Query { sql } => {
                    let mut judged = judgements.get(ctx, &sql, false);
                    if judged.hold.is_some() {
                        // What the agent sent before it goes upstream now; only this waits.
                        durable(ctx, &mut unflushed).await?;
                        flush(&mut upstream, &mut out, bytes_up).await?;
                        judged = match hold::wait(ctx, &judged, &sql, &mut agent, &mut buf).await? {
                            Held::Decided(j) => j,
                            Held::AgentLeft(j) => {
                                let p = Expect::Simple(Pending::new(j));
                                return left_while_held(ctx, p, &expect, upstream).await;
                            }
                        };
                    }
                    let refused = judged.refusal.is_some();
                    if before_forward && !refused {
                        ctx.sent("query", &judged)?;
                        unflushed = true;
                    }
                    push(Expect::Simple(Pending::new(judged)));
                    if refused {
                        stand_in_query(&mut out);
                    } else {
                        frame.encode(&mut out);
                    }
                }
                Message::FunctionCall => {
                    let judged = Arc::new(refused_function_call(&ctx.policy));
                    push(Expect::Simple(Pending::new(judged)));
                    stand_in_query(&mut out);
                }
                Message::Parse { name, sql } => {
                    // A held statement is parsed and bound as usual (neither runs anything);
                    // it waits at each Execute, where the approver sees its parameters.
                    let judged = judgements.get(ctx, &sql, true);
                    if judged.hold.is_some() {
                        held_sql.insert(name.clone(), sql);
                    }
                    statements.insert(name.clone(), judged.clone());
                    if refused_now(&judged) {
                        push(Expect::Parse(Some(Pending::new(judged))));
                        stand_in_parse(&name, &mut out);
                    } else {
                        push(Expect::Parse(None));
                        frame.encode(&mut out);
                    }
                }
                Message::Bind { portal, statement } => {
                    let judged = statements.get(&statement).cloned();
                    match judged.filter(|j| refused_now(j)) {
                        Some(j) => {
                            push(Expect::Bind(Some(Pending::new(j))));
                            stand_in_bind(&frame, &statement, &mut out);
                        }
                        None => {
                            if let Some(j) = statements.get(&statement) {
                                portals.insert(portal.clone(), j.clone());
                                if let Some(sql) = held_sql.get(&statement) {
                                    held_portals
                                        .insert(portal, hold::with_parameters(sql, &frame.body));
                                }
                            }
                            push(Expect::Bind(None));
                            frame.encode(&mut out);
                        }
                    }
                }
                Message::Describe { kind, name } => {
                    let judged = match kind {
                        Kind::Statement => statements.get(&name),
                        Kind::Portal => portals.get(&name),
                    }
                    .filter(|j| refused_now(j))
                    .cloned();
                    if judged.is_some() && kind == Kind::Statement {
                        describe(b'S', STAND_IN_NAME, &mut out);
                    } else {
                        frame.encode(&mut out);
                    }
                    push(Expect::Describe(judged));
                }
                Message::Execute { portal, .. } => {
                    let mut judged = portals
                        .get(&portal)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(unknown_portal(&ctx.policy, &portal)));
                    if judged.hold.is_some() && judged.approval.is_none() {
                        let command = held_portals.get(&portal).cloned().unwrap_or_default();
                        durable(ctx, &mut unflushed).await?;
                        flush(&mut upstream, &mut out, bytes_up).await?;
                        judged =
                            match hold::wait(ctx, &judged, &command, &mut agent, &mut buf).await? {
                                Held::Decided(j) => j,
                                Held::AgentLeft(j) => {
                                    let p = Expect::Execute(Pending::new(j));
                                    return left_while_held(ctx, p, &expect, upstream).await;
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
                        ctx.sent("execute", &judged)?;
                        unflushed = true;
                    }
                    push(Expect::Execute(Pending::new(judged)));
                    frame.encode(&mut out);
                }
                Message::Close { kind, name } => {
                    match kind {
                        Kind::Statement => statements.remove(&name),
                        Kind::Portal => portals.remove(&name),
                    };
                    push(Expect::Close);
                    frame.encode(&mut out);
                }
                Message::Sync => {
                    // The unnamed portal does not outlive a transaction; dropping it here
                    // is what keeps a later Execute from using a stale judgement.
                    portals.remove("");
                    push(Expect::Sync);
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
        durable(ctx, &mut unflushed).await?;
        flush(&mut upstream, &mut out, bytes_up).await?;
        if agent.read_buf(&mut buf).await? == 0 {
            // Gone without a Terminate: say it for the agent, so that the upstream answers
            // what is in flight and then closes, and the upstream side can audit the answers.
            let _ = upstream.write_all(&[b'X', 0, 0, 0, 4]).await;
            return Ok(());
        }
    }
}

/// Makes the `sent` events appended so far durable before what they describe goes upstream.
async fn durable(ctx: &Ctx, unflushed: &mut bool) -> Result<(), RelayError> {
    if std::mem::take(unflushed) {
        ctx.audit
            .settle(true)
            .await
            .map_err(|e| RelayError::Audit(e.to_string()))?;
    }
    Ok(())
}

/// The agent left while a statement waited for approval: the statement is audited as
/// withdrawn (it never reached the upstream), and the upstream is told goodbye.
async fn left_while_held<W: AsyncWrite + Unpin>(
    ctx: &Ctx,
    mut held: Expect,
    expect: &ExpectTx,
    mut upstream: W,
) -> Result<(), RelayError> {
    tracing::info!(
        session.id = ctx.session_id,
        "agent left while its statement was held"
    );
    if let Some(p) = held.pending() {
        p.error = Some("withdrawn: the agent left while the statement waited for approval".into());
    }
    let _ = expect.0.send(held);
    let _ = upstream.write_all(&[b'X', 0, 0, 0, 4]).await;
    Ok(())
}

/// Upstream to agent. Returns when the upstream closes.
pub async fn upstream_side<R, W>(
    ctx: &Ctx,
    mut upstream: R,
    mut buf: BytesMut,
    mut agent: W,
    expect: &mut ExpectRx,
    bytes_down: &std::sync::atomic::AtomicU64,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ExpectRx { rx, queue } = expect;
    let mut columns: Option<Vec<Column>> = None;
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some(frame) =
            next_frame(&mut buf, MAX_UPSTREAM_MESSAGE).map_err(RelayError::Upstream)?
        {
            // The agent side queues an expectation before it writes the message, so every
            // answer finds its expectation here.
            while let Ok(e) = rx.try_recv() {
                queue.push_back(e);
            }
            match frame.tag {
                b'1' | b'2' | b'3' => {
                    if let Some(e) = queue.pop_front() {
                        finish(ctx, e);
                    }
                    frame.encode(&mut out);
                }
                b'T' | b'n' => {
                    columns = match frame.tag {
                        b'T' => Some(
                            backend::row_description(&frame.body).map_err(RelayError::Upstream)?,
                        ),
                        _ => None,
                    };
                    match queue.front() {
                        Some(Expect::HiddenDescribe) => {
                            queue.pop_front();
                        }
                        Some(Expect::Describe(_)) => {
                            queue.pop_front();
                            frame.encode(&mut out);
                        }
                        _ => frame.encode(&mut out),
                    }
                }
                b'D' => match (queue.front_mut(), &columns) {
                    (Some(e), Some(cols)) if e.masker().is_some() => {
                        let masked = mask_row(e.masker().expect("checked"), cols, &frame, &mut out)
                            .map_err(RelayError::Upstream)?;
                        if let Some(p) = e.pending() {
                            p.masked += masked;
                        }
                    }
                    _ => frame.encode(&mut out),
                },
                b'C' | b'I' | b's' => {
                    let rows = (frame.tag == b'C')
                        .then(|| backend::command_rows(&frame.body))
                        .flatten();
                    match queue.front_mut() {
                        Some(Expect::Simple(p)) => {
                            p.rows = Some(p.rows.unwrap_or(0) + rows.unwrap_or(0));
                        }
                        Some(Expect::Execute(p)) => {
                            p.rows = rows;
                            let e = queue.pop_front().expect("front");
                            finish(ctx, e);
                        }
                        _ => {}
                    }
                    frame.encode(&mut out);
                }
                b'E' => {
                    let error =
                        backend::ErrorFields::decode(&frame.body).map_err(RelayError::Upstream)?;
                    let front = queue.front_mut();
                    match front.as_ref().and_then(|e| e.refusal()) {
                        Some(refusal) => refusal.encode(&mut out),
                        None => frame.encode(&mut out),
                    }
                    if let Some(p) = front.and_then(Expect::pending) {
                        p.error = Some(if p.judged.refusal.is_some() {
                            format!("refused by rule {}", p.judged.rule)
                        } else {
                            format!("{}: {}", error.code, error.message)
                        });
                    }
                    // After an error in the extended protocol the server skips to Sync.
                    if !matches!(queue.front(), Some(Expect::Simple(_)) | None) {
                        while !matches!(queue.front(), Some(Expect::Sync) | None) {
                            let e = queue.pop_front().expect("front");
                            finish(ctx, e);
                        }
                    }
                }
                b'Z' => {
                    while let Some(e) = queue.pop_front() {
                        let last = matches!(e, Expect::Simple(_) | Expect::Sync);
                        finish(ctx, e);
                        if last {
                            break;
                        }
                    }
                    columns = None;
                    frame.encode(&mut out);
                }
                // Defence in depth: the judge refuses whatever could turn the setting off, but
                // should the server report it off anyway, the session ends here.
                b'S' if !string_syntax_on(&frame.body) => return Err(RelayError::StringSyntax),
                _ => frame.encode(&mut out),
            }
            if out.len() >= 64 * 1024 {
                flush(&mut agent, &mut out, bytes_down).await?;
            }
        }
        flush(&mut agent, &mut out, bytes_down).await?;
        if upstream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

/// Writes what is buffered for one side, counting it.
async fn flush<W: AsyncWrite + Unpin>(
    to: &mut W,
    out: &mut BytesMut,
    bytes: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    if !out.is_empty() {
        bytes.fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        to.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// False if this ParameterStatus body reports [`STRING_SYNTAX_SETTING`] as anything but on.
pub fn string_syntax_on(body: &[u8]) -> bool {
    let mut parts = body.split(|&b| b == 0);
    let name = parts.next().unwrap_or_default();
    let value = parts.next().unwrap_or_default();
    name != STRING_SYNTAX_SETTING.as_bytes() || value == b"on"
}

/// Writes the audit events of a completed expectation.
fn finish(ctx: &Ctx, e: Expect) {
    let (step, p) = match e {
        Expect::Simple(p) => ("query", p),
        Expect::Execute(p) => ("execute", p),
        Expect::Parse(Some(p)) => ("parse", p),
        Expect::Bind(Some(p)) => ("bind", p),
        _ => return,
    };
    let duration_us = p.started.elapsed().as_micros() as u64;
    for (kind, sql) in &p.judged.statements {
        let event = StatementEvent {
            session_id: ctx.session_id,
            seq: ctx.next_seq(),
            at_ms: now_ms(),
            step: step.into(),
            kind: kind.clone(),
            sql: sql.clone(),
            verdict: p.judged.verdict().into(),
            rule: p.judged.rule.clone(),
            duration_us,
            rows: p.rows,
            masked: p.masked,
            error: p.error.clone(),
            approval: p.judged.approval.clone().map(Box::new),
        };
        if let Err(e) = ctx.audit.append(event) {
            tracing::error!(session.id = ctx.session_id, error = %e, "audit event lost");
        }
    }
}

/// Masks one DataRow into `out`; returns how many values were masked.
fn mask_row(
    masker: &Masker,
    cols: &[Column],
    frame: &Frame,
    out: &mut BytesMut,
) -> Result<u64, FrameError> {
    let values = backend::data_row(&frame.body)?;
    let mut masked = 0u64;
    let mut replaced: Vec<Option<Bytes>> = Vec::with_capacity(values.len());
    let mut changed = false;
    for (i, v) in values.iter().enumerate() {
        let col = cols.get(i);
        let name = col.map_or("", |c| c.name.as_str());
        let binary = col.is_some_and(|c| c.format == 1);
        let new = match v {
            None => None,
            Some(raw) => {
                let text = std::str::from_utf8(raw).ok();
                let hit = match text {
                    Some(t) => masker.mask_text(name, t).map(|(s, _)| s),
                    None if masker.masks_column(name) => Some(String::new()),
                    None => None,
                };
                match hit {
                    // Binary values cannot carry a redaction marker and stay valid: NULL.
                    Some(_) if binary => {
                        masked += 1;
                        changed = true;
                        replaced.push(None);
                        continue;
                    }
                    Some(s) => {
                        masked += 1;
                        changed = true;
                        Some(Bytes::from(s))
                    }
                    None => Some(frame.body.slice_ref(raw)),
                }
            }
        };
        replaced.push(new);
    }
    if !changed {
        frame.encode(out);
        return Ok(0);
    }
    backend::encode_data_row(replaced.iter().map(|v| v.as_deref()), out);
    Ok(masked)
}

fn stand_in_query(out: &mut BytesMut) {
    let _ = postgres_protocol::message::frontend::query(STAND_IN_SQL, out);
}

/// An Execute of a portal that does not exist upstream.
fn stand_in_execute(out: &mut BytesMut) {
    let _ = postgres_protocol::message::frontend::execute(STAND_IN_NAME, 0, out);
}

/// Refused before anything reaches the upstream; a hold still waiting is not (it is decided at
/// Execute).
fn refused_now(j: &Judged) -> bool {
    j.refusal.is_some() && (j.hold.is_none() || j.approval.is_some())
}

fn stand_in_parse(name: &str, out: &mut BytesMut) {
    let _ = postgres_protocol::message::frontend::parse(name, STAND_IN_SQL, [], out);
}

/// The agent's Bind, pointed at a statement that does not exist upstream.
fn stand_in_bind(frame: &Frame, statement: &str, out: &mut BytesMut) {
    let body = &frame.body;
    // portal\0 statement\0 rest...
    let portal_end = body.iter().position(|&b| b == 0).unwrap_or(0) + 1;
    let rest = &body[portal_end + statement.len() + 1..];
    let mut new = BytesMut::with_capacity(body.len() + STAND_IN_NAME.len());
    new.extend_from_slice(&body[..portal_end]);
    new.extend_from_slice(STAND_IN_NAME.as_bytes());
    new.extend_from_slice(&[0]);
    new.extend_from_slice(rest);
    Frame {
        tag: b'B',
        body: new.freeze(),
    }
    .encode(out);
}

fn describe(kind: u8, name: &str, out: &mut BytesMut) {
    let _ = postgres_protocol::message::frontend::describe(kind, name, out);
}

fn refused_function_call(policy: &str) -> Judged {
    Judged {
        action: super::rules::Action::Deny,
        rule: "function-call".into(),
        refusal: Some(
            ErrorFields::error(
                POLICY_DENIED,
                format!("gatewayd: policy {policy} refuses the fast-path function call interface"),
            )
            .with_hint("Call the function from a SQL statement instead."),
        ),
        masker: None,
        statements: vec![("function_call".into(), String::new())],
        by_shape: false,
        hold: None,
        approval: None,
    }
}

/// An Execute of a portal the gateway did not bind (a cursor declared in SQL): what it would
/// run was never judged here, so it is refused; `FETCH` is the SQL way, and it is judged.
fn unknown_portal(policy: &str, portal: &str) -> Judged {
    Judged {
        action: super::rules::Action::Deny,
        rule: "unknown-portal".into(),
        refusal: Some(
            ErrorFields::error(
                POLICY_DENIED,
                format!(
                    "gatewayd: policy {policy} refuses executing portal {portal:?}: it was not bound through the gateway"
                ),
            )
            .with_hint("Use FETCH to read a cursor declared in SQL."),
        ),
        masker: None,
        statements: vec![("execute".into(), String::new())],
        by_shape: false,
        hold: None,
        approval: None,
    }
}
