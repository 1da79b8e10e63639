//! The audit store. All use of sled sits behind this module: key layout, encoding and
//! flushing, so that another store could slot in here.
//!
//! Layout: tree `sessions`, key = session id (u64 big-endian, so iteration is in start
//! order), value = JSON of [`SessionRecord`]; tree `events`, key = session id then the
//! sequence number of the value's first event (both u64 big-endian, so a session's events are
//! one ordered range), value = one or more [`Event`]s as JSON lines, as the
//! [`writer`] batched them; tree `meta`, the chain's head and anchors. Ids come from sled's
//! persistent generator, so they keep growing across restarts. Records and events are chained
//! by hashes ([`chain`]), checked by [`verify`], bounded by [`prune`].

pub mod cast;
pub mod chain;
pub mod filter;
mod link;
pub mod prune;
pub mod record;
mod recover;
pub mod replay;
mod slot;
#[doc(hidden)]
pub mod tamper;
pub mod verify;
mod walk;
pub mod writer;

use std::{
    path::Path,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use slot::{Handles, Slot};
use writer::Writer;

pub use filter::SessionFilter;
pub use prune::PruneReport;
pub use record::{
    Agent, ApprovalOutcome, ApprovalRecord, Detail, Event, OutputDetail, SessionEnd, SessionRecord,
    SqlDetail, SqlStep, SshDetail, SshRequestKind, Stream, VerdictKind, now_ms,
};
pub use verify::{Problem, VerifyReport};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store: {0}")]
    Store(#[from] sled::Error),
    #[error("audit store: record {id} is corrupt: {source}")]
    Decode { id: u64, source: serde_json::Error },
    #[error("audit store: encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("audit store: event writer: {0}")]
    Writer(String),
    #[error("audit store: session {id}: {what}")]
    Chain { id: u64, what: String },
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct AuditStore {
    /// sled's handles, replaced when the store is reopened after a failure ([`slot`]).
    slot: Arc<Slot>,
    chains: Arc<chain::Chains>,
    group: Arc<GroupCommit>,
    /// Started by the first event: a store opened only to read (`gatewayctl --store`) has none.
    writer: Arc<OnceLock<Writer>>,
}

/// Shared by the clones of one store: who asked for durability, and how far it got.
struct GroupCommit {
    requested: AtomicU64,
    flushing: AtomicBool,
    flushed: tokio::sync::watch::Sender<u64>,
}

impl AuditStore {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Ok(AuditStore {
            slot: Arc::new(Slot::open(path)?),
            chains: Arc::default(),
            group: Arc::new(GroupCommit {
                requested: AtomicU64::new(0),
                flushing: AtomicBool::new(false),
                flushed: tokio::sync::watch::Sender::new(0),
            }),
            writer: Arc::default(),
        })
    }

    /// Keeps `bytes` free on the store's filesystem: below that, it opens no session and
    /// stops those open (see [`slot::Slot::check_space`]).
    pub fn set_reserve(&self, bytes: u64) {
        self.slot.set_reserve(bytes);
    }

    /// The current opening of the store.
    fn h(&self) -> Result<Arc<Handles>, AuditError> {
        self.slot.get()
    }

    pub fn next_id(&self) -> Result<u64, AuditError> {
        // generate_id starts at 0; 0 reads badly as a session id.
        Ok(self.h()?.db.generate_id()? + 1)
    }

    /// Writes a session record, chained: its first write links it to the session opened before
    /// it; a write with `end` set seals it with its events' count and last hash. Sealing waits
    /// (blocking the thread) for the writer to chain events still queued; the daemon uses
    /// [`Self::put_durable`], which waits without blocking.
    pub fn put(&self, record: &SessionRecord) -> Result<(), AuditError> {
        self.put_chained(record, false)
    }

    /// Writes and makes durable: the record is on disk when this returns.
    pub async fn put_durable(&self, record: &SessionRecord) -> Result<(), AuditError> {
        // The seal counts the session's events: the writer chains those still queued first.
        if record.end.is_some()
            && !self.events_chained()
            && let Err(e) = self.settle(false).await
        {
            // The end is written all the same; verify reports whatever follows the seal.
            tracing::error!(session.id = record.id, error = %e, "sealing without queued events");
        }
        // A full store still takes the ends of sessions (into its reserve), not openings.
        let allowed = match &record.end {
            None => self.may_open(),
            Some(_) => self
                .slot
                .broken()
                .map_or(Ok(()), |why| Err(AuditError::Unavailable(why))),
        };
        // sled's insert and transaction take locks and may wait on its log: on the blocking
        // pool, so that a burst of sessions opening cannot stall the async workers.
        let written = match allowed {
            Ok(()) => {
                let (store, owned) = (self.clone(), record.clone());
                tokio::task::spawn_blocking(move || store.put_chained(&owned, true))
                    .await
                    .unwrap_or_else(|e| Err(AuditError::Writer(e.to_string())))
            }
            Err(e) => Err(e),
        };
        let result = match written {
            Ok(()) => self.commit().await,
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.failed(e);
            if record.end.is_some() && self.slot.broken().is_some() {
                // How the session ended is written when the store reopens.
                writer::lock(&self.chains.pending_ends).push(record.clone());
            }
        }
        result
    }

    /// Makes everything written so far durable. Concurrent callers share flushes (group
    /// commit): one caller flushes for all who wrote before it started, the others wait for
    /// it. sled 0.34's own `flush_async` can deadlock when many run at once
    /// (spacejam/sled#1241), so the flush is sled's blocking one, on the blocking pool, one
    /// at a time.
    pub async fn commit(&self) -> Result<(), AuditError> {
        let g = &self.group;
        let ticket = g.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = g.flushed.subscribe();
        loop {
            if *flushed.borrow_and_update() >= ticket {
                return Ok(());
            }
            if g.flushing
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                let upto = g.requested.load(Ordering::SeqCst);
                let slot = self.slot.clone();
                let result = tokio::task::spawn_blocking(move || {
                    slot.get().and_then(|h| Ok(h.db.flush()?))
                })
                .await;
                // Released before waking the waiters, so that one of them can take over.
                g.flushing.store(false, Ordering::SeqCst);
                match result {
                    Ok(Ok(_)) => g.flushed.send_modify(|f| *f = (*f).max(upto)),
                    Ok(Err(e)) => {
                        g.flushed.send_modify(|_| {});
                        self.failed(&e);
                        return Err(e);
                    }
                    Err(join) => {
                        g.flushed.send_modify(|_| {});
                        return Err(AuditError::Store(sled::Error::ReportableBug(
                            join.to_string(),
                        )));
                    }
                }
                continue;
            }
            if flushed.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    pub fn get(&self, id: u64) -> Result<Option<SessionRecord>, AuditError> {
        self.h()?
            .sessions
            .get(id.to_be_bytes())?
            .map(|v| decode(id, &v))
            .transpose()
    }

    /// The newest `limit` sessions matching `filter`, oldest first.
    pub fn list(
        &self,
        filter: &SessionFilter,
        limit: usize,
    ) -> Result<Vec<SessionRecord>, AuditError> {
        let mut out = Vec::new();
        for item in self.h()?.sessions.iter().rev() {
            let (k, v) = item?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or_default());
            let r = decode(id, &v)?;
            if filter.matches(&r) {
                out.push(r);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Hands a statement event to the writer thread: no I/O on the caller's path. The event is
    /// in the store within the writer's window, or once [`Self::settle`] returns.
    pub fn append(&self, event: Event) -> Result<(), AuditError> {
        let writer = match self.writer.get() {
            Some(w) => w,
            None => {
                let started = Writer::start(self.slot.clone(), self.chains.clone())
                    .map_err(|e| AuditError::Writer(e.to_string()))?;
                // A racing first append may have won; its writer is the one kept.
                let _ = self.writer.set(started);
                self.writer.get().expect("set above")
            }
        };
        writer.append(event).map_err(AuditError::Writer)
    }

    /// Whether this session must not forward another statement: some of its events could not
    /// be stored, or the store is full or broken.
    pub fn session_lost_events(&self, session_id: u64) -> bool {
        self.chains.any_lost.load(Ordering::Acquire)
            && writer::lock(&self.chains.lost).contains(&session_id)
    }

    /// Events the writer could not store since this store was opened (it logs each loss too).
    pub fn events_lost(&self) -> u64 {
        self.writer.get().map_or(0, Writer::lost)
    }

    /// Waits until every event appended before is in the store; with `flush`, on disk too.
    pub async fn settle(&self, flush: bool) -> Result<(), AuditError> {
        match self.writer.get() {
            Some(w) => w.settle(flush).await.map_err(AuditError::Writer),
            None if flush => self.commit().await,
            None => Ok(()),
        }
    }

    /// A session with its events, as `sessions show` presents it.
    pub fn show(&self, id: u64) -> Result<Option<serde_json::Value>, AuditError> {
        let Some(record) = self.get(id)? else {
            return Ok(None);
        };
        let mut v = serde_json::to_value(record)?;
        v["events"] = serde_json::to_value(self.events(id)?)?;
        Ok(Some(v))
    }

    /// A session's events in order.
    pub fn events(&self, session_id: u64) -> Result<Vec<Event>, AuditError> {
        let mut out = Vec::new();
        for item in self.h()?.events.scan_prefix(session_id.to_be_bytes()) {
            let (_, v) = item?;
            for line in v.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                out.push(
                    serde_json::from_slice(line).map_err(|source| AuditError::Decode {
                        id: session_id,
                        source,
                    })?,
                );
            }
        }
        Ok(out)
    }

    /// Flushes everything written so far to disk; outside the runtime, pending events first.
    pub fn flush(&self) -> Result<(), AuditError> {
        if let Some(w) = self.writer.get()
            && tokio::runtime::Handle::try_current().is_err()
        {
            w.settle_blocking(false).map_err(AuditError::Writer)?;
        }
        self.h()?.db.flush()?;
        Ok(())
    }
}

fn event_key(session_id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&session_id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn decode(id: u64, bytes: &[u8]) -> Result<SessionRecord, AuditError> {
    serde_json::from_slice(bytes).map_err(|source| AuditError::Decode { id, source })
}

#[cfg(test)]
mod integrity_tests;
#[cfg(test)]
mod tests;
