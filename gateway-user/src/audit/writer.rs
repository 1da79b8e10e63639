//! The event writer: one thread that takes every session's statement events off the data path
//! and writes them in batches. A session hands its event over (a channel send, no I/O) and
//! goes on; the writer wakes for the first event of a batch, lets more gather for a moment,
//! then writes each session's share of the batch as one sled value (JSON lines under the key of
//! its first event). Most of sled's cost is per insert, not per byte, so a busy session's
//! events cost a fraction of an insert each.
//!
//! It also chains them ([`super::chain`]): it sees each session's events in the order they were
//! handed over, so it appends to each line the hash of the line before and keeps each open
//! session's tail in [`Chains::tails`] for the seal.
//!
//! [`Writer::settle`] is the barrier: it returns once everything handed over before it is in
//! the store (and, when asked, flushed to disk, one flush shared by every settle of the batch).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::Thread,
    time::Duration,
};

use tokio::sync::oneshot;

use super::{
    Event, Slot,
    chain::{self, Chains, Tail},
    event_key,
};

/// How long a batch may gather after its first event. Bounds how stale the store can be.
const WINDOW: Duration = Duration::from_millis(5);
/// Events handed over but not yet written, at most; beyond it `append` waits (backpressure).
const QUEUE: usize = 1 << 16;
/// At most this many messages per batch, so a flood still gets written in steady steps.
const BATCH: usize = 4096;
/// A session's share of a batch is cut into values of about this size: sled writes any log
/// item over a quarter of its 512 KiB segment as a file of its own, created and later deleted,
/// which costs more than the insert.
const VALUE: usize = 96 * 1024;

enum Msg {
    Event(Event),
    Settle { flush: bool, done: Done },
}

/// Where a settle's answer goes: a task, or a thread that blocks for it (which may be a
/// runtime's worker, so not a tokio channel's `blocking_recv`).
enum Done {
    Task(oneshot::Sender<Result<(), String>>),
    Thread(mpsc::SyncSender<Result<(), String>>),
}

impl Done {
    fn send(self, result: Result<(), String>) {
        let _ = match self {
            Done::Task(tx) => tx.send(result).map_err(drop),
            Done::Thread(tx) => tx.send(result).map_err(drop),
        };
    }
}

pub struct Writer {
    tx: mpsc::SyncSender<Msg>,
    thread: Thread,
    lost: Arc<AtomicU64>,
    chains: Arc<Chains>,
}

impl Writer {
    pub(super) fn start(slot: Arc<Slot>, chains: Arc<Chains>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let counter = lost.clone();
        let shared = chains.clone();
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(&rx, &slot, &shared, &counter))?;
        Ok(Writer {
            tx,
            thread: handle.thread().clone(),
            lost,
            chains,
        })
    }

    /// Hands an event to the writer; never waits (the caller is an async worker). An event
    /// the queue cannot take is lost, and its session is marked so it forwards nothing more:
    /// the session stops rather than run on unrecorded, and verify shows the gap.
    pub fn append(&self, event: Event) -> Result<(), String> {
        // Counted before the send, so the writer can never have chained more than this says.
        self.chains.appended.fetch_add(1, Ordering::AcqRel);
        let session = event.session_id;
        let why = match self.tx.try_send(Msg::Event(event)) {
            Ok(()) => return Ok(()),
            Err(mpsc::TrySendError::Full(_)) => "the audit writer's queue is full",
            Err(mpsc::TrySendError::Disconnected(_)) => "the audit writer stopped",
        };
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.chains.written.fetch_add(1, Ordering::AcqRel);
        self.chains.mark_lost([session]);
        tracing::error!(session.id = session, why, "audit event lost");
        Err(why.to_owned())
    }

    /// Waits until every event appended before this call is written (and flushed, if `flush`).
    pub async fn settle(&self, flush: bool) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Settle {
                flush,
                done: Done::Task(done),
            })
            .map_err(|_| "audit writer stopped".to_owned())?;
        // Cut the gathering window short: someone is waiting.
        self.thread.unpark();
        wait.await.map_err(|_| "audit writer stopped".to_owned())?
    }

    /// [`Self::settle`] that blocks the calling thread.
    pub fn settle_blocking(&self, flush: bool) -> Result<(), String> {
        let (done, wait) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Settle {
                flush,
                done: Done::Thread(done),
            })
            .map_err(|_| "audit writer stopped".to_owned())?;
        self.thread.unpark();
        wait.recv().map_err(|_| "audit writer stopped".to_owned())?
    }

    /// Events that could not be written since the start (store errors).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

fn run(rx: &mpsc::Receiver<Msg>, slot: &Slot, chains: &Chains, lost: &AtomicU64) {
    let mut batch: Vec<Msg> = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        let urgent = matches!(first, Msg::Settle { .. });
        batch.push(first);
        if !urgent {
            std::thread::park_timeout(WINDOW);
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let result = write(&batch, slot, chains, lost);
        for m in batch.drain(..) {
            if let Msg::Settle { done, .. } = m {
                done.send(result.clone());
            }
        }
    }
}

/// One session's share of a batch: the key of its first event, the chained JSON lines, and
/// the chain's tail after them.
struct Chunk {
    key: [u8; 16],
    lines: Vec<u8>,
    /// Values already cut at [`VALUE`], with their keys.
    full: Vec<([u8; 16], Vec<u8>)>,
    count: u64,
    /// `None` for a session that is not open here (no record, or already sealed): its lines
    /// chain from zeros, which verify names, and nothing is kept of it.
    tail: Option<Tail>,
}

/// Chains and writes the batch's events, one sled value per session, and flushes if a settle
/// asked. A failure breaks the store (see [`super::recover`]).
fn write(batch: &[Msg], slot: &Slot, chains: &Chains, lost: &AtomicU64) -> Result<(), String> {
    let mut chunks: HashMap<u64, Chunk> = HashMap::new();
    let mut flush = false;
    let mut handled = 0u64;
    for m in batch {
        match m {
            Msg::Event(e) => {
                handled += 1;
                let chunk = chunks.entry(e.session_id).or_insert_with(|| Chunk {
                    key: event_key(e.session_id, e.seq),
                    lines: Vec::with_capacity(512),
                    full: Vec::new(),
                    count: 0,
                    tail: lock(&chains.tails).get(&e.session_id).copied(),
                });
                if chunk.lines.len() >= VALUE {
                    let lines = std::mem::take(&mut chunk.lines);
                    chunk.full.push((chunk.key, lines));
                    chunk.key = event_key(e.session_id, e.seq);
                }
                let start = chunk.lines.len();
                if serde_json::to_writer(&mut chunk.lines, e).is_ok() {
                    let prev = chunk.tail.map_or(chain::ZERO, |t| t.last);
                    let last = chain::chain_line(&mut chunk.lines, start, &prev);
                    if let Some(t) = &mut chunk.tail {
                        t.last = last;
                        t.events += 1;
                    }
                    chunk.lines.push(b'\n');
                    chunk.count += 1;
                } else {
                    chunk.lines.truncate(start);
                }
            }
            Msg::Settle { flush: f, .. } => flush |= f,
        }
    }
    let count: u64 = chunks.values().map(|c| c.count).sum();
    let sessions: Vec<u64> = chunks.keys().copied().collect();
    let mut sled_batch = sled::Batch::default();
    let mut tails = Vec::with_capacity(chunks.len());
    for (session, chunk) in chunks {
        for (key, lines) in chunk.full {
            sled_batch.insert(&key, lines);
        }
        sled_batch.insert(&chunk.key, chunk.lines);
        if let Some(tail) = chunk.tail {
            tails.push((session, tail));
        }
    }
    if slot.check_space().is_err() {
        // This batch still goes in, into the reserve: its statements were forwarded.
        super::recover::stop_sessions(chains);
    }
    let store = slot.get().map_err(|e| e.to_string());
    let mut result = store.as_ref().map_err(Clone::clone).and_then(|h| {
        h.events
            .apply_batch(sled_batch)
            .map_err(|e| format!("audit store: {e}"))
    });
    if let Err(e) = &result {
        lost.fetch_add(count, Ordering::Relaxed);
        chains.mark_lost(sessions);
        super::recover::fail(slot, chains, e);
        tracing::error!(events = count, error = %e, "audit events lost");
    }
    // The tails move on even when the write failed: the seal then counts the lost events, and
    // verify reports them missing rather than the loss going unseen.
    if !tails.is_empty() {
        lock(&chains.tails).extend(tails);
    }
    chains.written.fetch_add(handled, Ordering::AcqRel);
    if flush && let (Ok(()), Ok(h)) = (&result, &store) {
        result =
            h.db.flush()
                .map(|_| ())
                .map_err(|e| format!("audit store: {e}"));
        if let Err(e) = &result {
            super::recover::fail(slot, chains, e);
        }
    }
    result
}

/// A poisoned lock only means another thread panicked mid-update of plain values.
pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
