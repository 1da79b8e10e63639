//! The query phase. The agent side judges each message and forwards it, or forwards a
//! stand-in that fails upstream in the same place (so PostgreSQL itself aborts the
//! transaction and skips to Sync exactly as it would for a real error). For every message
//! that gets an answer it queues an [`Expect`]; the upstream side matches answers to them in
//! order, rewrites the stand-in's error into the policy's, masks rows, and audits.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
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
        frame::{self, MAX_UPSTREAM_MESSAGE, next_frame},
    },
    config::{PostgresTarget, reported_setting_ok},
    judge::{Judged, MAX_STATEMENT, POLICY_DENIED, judge},
    mask::Masker,
    names::{SharedNames, Ticket},
    shape::Shape,
};

mod agent;
pub mod hold;
use crate::{
    audit::{Detail, SqlDetail, SqlStep},
    memory::MessageLease,
    session::Session,
    sql::{SqlKind, StatementKind},
};
pub use agent::agent_side;

/// How much longer than the target's statement_timeout the gateway waits for an answer.
const STATEMENT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Fails in PostgreSQL's raw parser, before anything runs: the stand-in for a refused
/// statement.
const STAND_IN_SQL: &str = "GATEWAYD POLICY REFUSAL";
/// A prepared statement name no client uses: Bind and Describe of it fail upstream.
const STAND_IN_NAME: &str = "gatewayd refused statement";

pub struct Ctx<'s> {
    /// Who the agent is and where its events go: the session core's.
    pub session: &'s Session,
    pub target: Arc<PostgresTarget>,
    /// The agent's CancelRequests, for a statement held by the gateway rather than running.
    pub cancelled: Arc<tokio::sync::Notify>,
    /// The target's detectors, run on every text the agent receives besides rows: error and
    /// notice fields, parameter values, notification payloads.
    pub texts: Option<Arc<Masker>>,
    /// The session's prepared statements and portals, as the server has confirmed them.
    pub(crate) names: SharedNames<Arc<Judged>>,
    /// Messages sent upstream whose answer (or the server's skipping them) is awaited: at most
    /// [`MAX_OUTSTANDING`].
    pub(crate) outstanding: AtomicUsize,
}

/// Messages of one session awaiting the server's answer. After an error the server skips to
/// the next Sync without answering, so an agent that never sends one would otherwise queue
/// judgements without end.
pub const MAX_OUTSTANDING: usize = 16 * 1024;

impl Ctx<'_> {
    /// The upstream side expects `e` next after what it already expects.
    fn expect(&self, tx: &ExpectTx, e: Expect) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        // The upstream side only goes away when the session is ending anyway.
        let _ = tx.0.send(e);
    }
}

/// Every detector any mask rule of the target names, for [`Ctx::texts`].
pub fn text_masker(target: &PostgresTarget) -> Option<Arc<Masker>> {
    let detectors: Vec<_> = target
        .rules
        .iter()
        .filter(|r| r.action == super::rules::Action::Mask)
        .flat_map(|r| r.detectors.iter().copied())
        .collect();
    (!detectors.is_empty()).then(|| Arc::new(Masker::new(Vec::new(), detectors)))
}

/// The frame with the detectors' findings masked in its texts, or None if nothing was found
/// (or the frame is not one with free text).
fn mask_texts(frame: &Frame, masker: &Masker) -> Option<Frame> {
    let body = &frame.body[..];
    let (head, typed) = match frame.tag {
        b'E' | b'N' => (0, true),
        b'S' => (0, false),
        b'A' => (4, false),
        _ => return None,
    };
    let rest = body.get(head..)?;
    let mut out = BytesMut::with_capacity(body.len() + 16);
    out.extend_from_slice(&body[..head]);
    let mut changed = false;
    let mut i = 0;
    while i < rest.len() {
        if typed {
            out.extend_from_slice(&rest[i..=i]);
            i += 1;
            if rest[i - 1] == 0 {
                break;
            }
        }
        let end = i + rest.get(i..)?.iter().position(|&b| b == 0)?;
        match masker.mask_any(&rest[i..end]) {
            Some(masked) => {
                out.extend_from_slice(masked.replace('\0', "").as_bytes());
                changed = true;
            }
            None => out.extend_from_slice(&rest[i..end]),
        }
        out.extend_from_slice(&[0]);
        i = end + 1;
    }
    changed.then(|| Frame {
        tag: frame.tag,
        body: out.freeze(),
    })
}

impl Ctx<'_> {
    fn policy(&self) -> &str {
        &self.session.admitted.policy
    }

    /// In `before-forward` durability: the `sent` events of a statement about to go upstream.
    fn sent(&self, step: SqlStep, judged: &Judged) -> Result<(), RelayError> {
        for (kind, sql) in &judged.statements {
            let mut event = self.session.event(
                judged.action,
                &judged.rule,
                Detail::Sql(SqlDetail {
                    step,
                    kind: *kind,
                    sql: sql.clone(),
                    rows: None,
                }),
            );
            event.approval = judged.approval.clone().map(Box::new);
            self.session
                .record(event)
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
    #[error("session limit: {0}")]
    Limit(String),
    #[error("{0}")]
    Memory(#[from] crate::memory::Exhausted),
    #[error(
        "the upstream gave no answer for {0:?}, past the target's statement_timeout: the session is ended"
    )]
    StatementBound(std::time::Duration),
    #[error("the upstream changed {0}; the gateway cannot read statements as PostgreSQL now would")]
    PinnedSetting(String),
}

/// A statement in flight and what its audit event will say.
struct Pending {
    judged: Arc<Judged>,
    started: Instant,
    rows: Option<u64>,
    masked: u64,
    error: Option<String>,
    /// What the statement does to the session's names, resolved by the server's answer.
    ticket: Option<Ticket>,
}

impl Pending {
    fn new(judged: Arc<Judged>) -> Self {
        Pending {
            judged,
            started: Instant::now(),
            rows: None,
            masked: 0,
            error: None,
            ticket: None,
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
    pub fn abandon(&mut self, ctx: &Ctx<'_>, why: &str) {
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

/// The error audited for a message the server skipped: after an error in the extended
/// protocol it discards everything up to the next Sync.
const SKIPPED: &str = "not run: the server skipped it after an earlier error in its batch";

/// What the agent side expects the upstream to answer, in order.
enum Expect {
    /// A simple query (or a refused function call): answers until ReadyForQuery.
    Simple(Pending),
    /// `refused`: what the agent hears instead; `ticket`: the name it defines, when forwarded.
    Parse {
        refused: Option<Pending>,
        ticket: Option<Ticket>,
    },
    Bind {
        refused: Option<Pending>,
        ticket: Option<Ticket>,
    },
    Describe(Option<Arc<Judged>>),
    /// A Describe the gateway added to learn a masked portal's columns; not forwarded.
    HiddenDescribe,
    Execute(Pending),
    Close(Option<Ticket>),
    Sync,
}

impl Expect {
    fn refusal(&self) -> Option<&ErrorFields> {
        match self {
            Expect::Simple(p) | Expect::Execute(p) => p.judged.refusal.as_ref(),
            Expect::Parse { refused, .. } | Expect::Bind { refused, .. } => {
                refused.as_ref()?.judged.refusal.as_ref()
            }
            Expect::Describe(j) => j.as_ref()?.refusal.as_ref(),
            _ => None,
        }
    }

    /// The names change this message makes, taken to be resolved by the server's answer.
    fn ticket(&mut self) -> Option<Ticket> {
        match self {
            Expect::Simple(p) | Expect::Execute(p) => p.ticket.take(),
            Expect::Parse { ticket, .. } | Expect::Bind { ticket, .. } | Expect::Close(ticket) => {
                ticket.take()
            }
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
            Expect::Parse { refused, .. } | Expect::Bind { refused, .. } => refused.as_mut(),
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
    /// Statements up to this size are parsed on the session's own worker: PostgreSQL's
    /// parser reads them in well under a millisecond (a few ms for the worst nesting that
    /// fits). Anything larger goes to the judge pool, so no agent's statement holds up the
    /// sessions sharing a worker.
    const INLINE: usize = 2048;

    /// `repeats`: the text is likely to come again verbatim (a Parse: drivers re-parse the
    /// same statement text with new parameters), so it is worth keeping by text as well.
    async fn get(&mut self, ctx: &Ctx<'_>, sql: &str, repeats: bool) -> Arc<Judged> {
        if let Some(j) = self.by_text.get(sql) {
            return j.clone();
        }
        let by_shape = !ctx.target.audit_literals;
        let (shape, j) = if sql.len() <= Self::INLINE {
            let shape = by_shape.then(|| Shape::of(sql)).flatten();
            if let Some(j) = shape.as_ref().and_then(|s| self.by_shape.get(s)) {
                return j.clone();
            }
            (
                shape,
                Arc::new(judge(ctx.policy(), &ctx.target, ctx.session.who(), sql)),
            )
        } else {
            let (policy, target, who) = (
                ctx.session.admitted.policy.clone(),
                ctx.target.clone(),
                ctx.session.who().clone(),
            );
            let text = sql.to_owned();
            let judged = crate::offload::cpu()
                .run(move || {
                    let shape = (by_shape && text.len() <= MAX_STATEMENT)
                        .then(|| Shape::of(&text))
                        .flatten();
                    (shape, judge(&policy, &target, &who, &text))
                })
                .await;
            match judged {
                Ok((shape, j)) => {
                    if let Some(hit) = shape.as_ref().and_then(|s| self.by_shape.get(s)) {
                        return hit.clone();
                    }
                    (shape, Arc::new(j))
                }
                Err(e) => {
                    tracing::error!(session.id = ctx.session.admitted.id, error = %e, "judging failed");
                    return Arc::new(Judged::refused(
                        "internal",
                        SqlKind::UNPARSED,
                        format!("({} bytes, not kept)", sql.len()),
                        ErrorFields::error(
                            "XX000",
                            format!(
                                "gatewayd: policy {} could not judge this statement",
                                ctx.policy()
                            ),
                        ),
                    ));
                }
            }
        };
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

/// Upstream to agent. Returns when the upstream closes.
pub async fn upstream_side<R, W>(
    ctx: &Ctx<'_>,
    mut upstream: R,
    mut buf: BytesMut,
    mut agent: W,
    expect: &mut ExpectRx,
    bytes_down: &AtomicU64,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ExpectRx { rx, queue } = expect;
    let mut columns: Option<Vec<Column>> = None;
    // Since the last ReadyForQuery: an error or a ROLLBACK (the transaction, if it ends, was
    // rolled back); and the status that ReadyForQuery reported.
    let mut rolled_back = false;
    let mut last_status = b'I';
    // The gateway's own bound on a statement, should the server's statement_timeout not end
    // it (a server that stopped answering): silence this long while an answer is owed ends
    // the session. Not while the server waits for the agent's COPY data.
    let bound = ctx.target.statement_timeout.map(|t| t + STATEMENT_GRACE);
    let mut copy_in = false;
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut lease = MessageLease::default();
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
                    if let Some(mut e) = queue.pop_front() {
                        if let Some(t) = e.ticket() {
                            ctx.names.confirm(t);
                        }
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
                    if frame.tag == b'C' && frame.body.starts_with(b"ROLLBACK") {
                        rolled_back = true;
                    }
                    match queue.front_mut() {
                        Some(Expect::Simple(p)) => {
                            p.rows = Some(p.rows.unwrap_or(0) + rows.unwrap_or(0));
                            if frame.tag == b'C'
                                && let Some(t) = p.ticket.take()
                            {
                                ctx.names.confirm(t);
                            }
                        }
                        Some(Expect::Execute(p)) => {
                            p.rows = rows;
                            if let Some(t) = p.ticket.take() {
                                ctx.names.confirm(t);
                            }
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
                    rolled_back = true;
                    if let Some(t) = queue.front_mut().and_then(Expect::ticket) {
                        ctx.names.fail(t);
                    }
                    let front = queue.front_mut();
                    match front.as_ref().and_then(|e| e.refusal()) {
                        Some(refusal) => refusal.encode(&mut out),
                        None => encode_masked(ctx, &frame, &mut out),
                    }
                    if let Some(p) = front.and_then(Expect::pending) {
                        p.error = Some(if p.judged.refusal.is_some() {
                            format!("refused by rule {}", p.judged.rule)
                        } else {
                            format!("{}: {}", error.code, error.message)
                        });
                    }
                    // After an error in the extended protocol the server skips to Sync: what
                    // came after the failed message in that batch did not run.
                    if !matches!(queue.front(), Some(Expect::Simple(_)) | None) {
                        let mut failed = true;
                        while !matches!(queue.front(), Some(Expect::Sync) | None) {
                            let mut e = queue.pop_front().expect("front");
                            if !std::mem::take(&mut failed)
                                && let Some(p) = e.pending()
                                && p.error.is_none()
                            {
                                p.error = Some(SKIPPED.to_owned());
                            }
                            finish(ctx, e);
                        }
                    }
                }
                b'Z' => {
                    // The transaction status: back to idle ends a transaction, and every
                    // portal but the holdable ones with it.
                    match frame.body.first() {
                        Some(b'I') if rolled_back || last_status == b'E' => {
                            ctx.names.transaction_aborted()
                        }
                        Some(b'I') => ctx.names.transaction_ended(),
                        _ => {}
                    }
                    last_status = frame.body.first().copied().unwrap_or(b'I');
                    rolled_back = false;
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
                b'S' if !parameter_ok(&frame.body) => {
                    let name = frame.body.split(|&b| b == 0).next().unwrap_or_default();
                    return Err(RelayError::PinnedSetting(
                        String::from_utf8_lossy(name).into_owned(),
                    ));
                }
                b'S' | b'N' | b'A' => encode_masked(ctx, &frame, &mut out),
                _ => frame.encode(&mut out),
            }
            match frame.tag {
                b'G' => copy_in = true,
                b'C' | b'E' | b'Z' => copy_in = false,
                _ => {}
            }
            if out.len() >= 64 * 1024 {
                flush(&mut agent, &mut out, bytes_down).await?;
            }
        }
        flush(&mut agent, &mut out, bytes_down).await?;
        lease.cover(frame::declared_len(&buf))?;
        let read = upstream.read_buf(&mut buf);
        let owed = !queue.is_empty() || !rx.is_empty();
        let n = match bound {
            Some(bound) if owed && !copy_in => tokio::time::timeout(bound, read)
                .await
                .map_err(|_| RelayError::StatementBound(bound))??,
            _ => read.await?,
        };
        if n == 0 {
            return Ok(());
        }
    }
}

/// Forwards a frame with free text, its detectors' findings masked.
fn encode_masked(ctx: &Ctx<'_>, frame: &Frame, out: &mut BytesMut) {
    match ctx.texts.as_deref().and_then(|m| mask_texts(frame, m)) {
        Some(masked) => masked.encode(out),
        None => frame.encode(out),
    }
}

/// Writes what is buffered for one side, counting it.
async fn flush<W: AsyncWrite + Unpin>(
    to: &mut W,
    out: &mut BytesMut,
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    if !out.is_empty() {
        bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
        to.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// False if this ParameterStatus body reports a pinned setting changed
/// ([`reported_setting_ok`]).
pub fn parameter_ok(body: &[u8]) -> bool {
    let mut parts = body.split(|&b| b == 0);
    let name = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let value = String::from_utf8_lossy(parts.next().unwrap_or_default());
    reported_setting_ok(&name, &value)
}

/// Writes the audit events of a completed expectation.
fn finish(ctx: &Ctx<'_>, mut e: Expect) {
    let _ = ctx
        .outstanding
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    // A names change still unresolved here never ran: skipped after an error, or the
    // session ended first.
    if let Some(t) = e.ticket() {
        ctx.names.skipped(t);
    }
    let (step, p) = match e {
        Expect::Simple(p) => (SqlStep::Query, p),
        Expect::Execute(p) => (SqlStep::Execute, p),
        Expect::Parse {
            refused: Some(p), ..
        } => (SqlStep::Parse, p),
        Expect::Bind {
            refused: Some(p), ..
        } => (SqlStep::Bind, p),
        _ => return,
    };
    let duration_us = p.started.elapsed().as_micros() as u64;
    for (kind, sql) in &p.judged.statements {
        let mut event = ctx.session.event(
            p.judged.action,
            &p.judged.rule,
            Detail::Sql(SqlDetail {
                step,
                kind: *kind,
                sql: sql.clone(),
                rows: p.rows,
            }),
        );
        event.duration_us = duration_us;
        event.masked = p.masked;
        event.error = p.error.clone();
        event.approval = p.judged.approval.clone().map(Box::new);
        if let Err(e) = ctx.session.record(event) {
            tracing::error!(session.id = ctx.session.admitted.id, error = %e, "audit event lost");
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
                // A value that is not UTF-8 is read as the detectors can (lossily), so it is
                // masked, never skipped.
                let text = String::from_utf8_lossy(raw);
                let hit = masker.mask_text(name, &text).map(|(s, _)| s);
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
    Judged::refused(
        "function-call",
        SqlKind::FUNCTION_CALL,
        String::new(),
        ErrorFields::error(
            POLICY_DENIED,
            format!("gatewayd: policy {policy} refuses the fast-path function call interface"),
        )
        .with_hint("Call the function from a SQL statement instead."),
    )
}

/// A use of a prepared statement, portal or cursor the gateway holds no judgement for (a
/// name never defined through it, or one the server may not have accepted): what it would run
/// was never judged here, so it is refused.
fn unknown_name(policy: &str, what: &str, name: &str) -> Judged {
    Judged::refused(
        "unknown-name",
        SqlKind::Statement(StatementKind::Execute),
        String::new(),
        ErrorFields::error(
            POLICY_DENIED,
            format!("gatewayd: policy {policy} refuses {what} {name:?}: it was not defined through the gateway"),
        )
        .with_hint("Prepare statements and declare cursors through the gateway, in SQL or with Parse and Bind."),
    )
}

/// The agent left while a statement waited for approval: the statement is audited as
/// withdrawn (it never reached the upstream), and the upstream is told goodbye.
async fn left_while_held<W: AsyncWrite + Unpin>(
    ctx: &Ctx<'_>,
    mut held: Expect,
    expect: &ExpectTx,
    mut upstream: W,
) -> Result<(), RelayError> {
    tracing::info!(
        session.id = ctx.session.admitted.id,
        "agent left while its statement was held"
    );
    if let Some(p) = held.pending() {
        p.error = Some("withdrawn: the agent left while the statement waited for approval".into());
    }
    ctx.expect(expect, held);
    let _ = upstream.write_all(&[b'X', 0, 0, 0, 4]).await;
    Ok(())
}

#[cfg(test)]
mod tests;
