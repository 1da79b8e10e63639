//! The event writer: one thread that takes every session's statement events off the data path
//! and writes them in batches. A session hands its event over (a channel send, no I/O) and
//! goes on; the writer wakes for the first event of a batch, lets more gather for a moment,
//! then writes each session's share of the batch as one sled value (JSON lines under the key of
//! its first event). Most of sled's cost is per insert, not per byte, so a busy session's
//! events cost a fraction of an insert each.
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

use super::{StatementEvent, event_key};

/// How long a batch may gather after its first event. Bounds how stale the store can be.
const WINDOW: Duration = Duration::from_millis(5);
/// Events handed over but not yet written, at most; beyond it `append` waits (backpressure).
const QUEUE: usize = 1 << 16;
/// At most this many messages per batch, so a flood still gets written in steady steps.
const BATCH: usize = 4096;

enum Msg {
    Event(StatementEvent),
    Settle {
        flush: bool,
        done: oneshot::Sender<Result<(), String>>,
    },
}

pub struct Writer {
    tx: mpsc::SyncSender<Msg>,
    thread: Thread,
    lost: Arc<AtomicU64>,
}

impl Writer {
    pub fn start(db: sled::Db, events: sled::Tree) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let counter = lost.clone();
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run(&rx, &db, &events, &counter))?;
        Ok(Writer {
            tx,
            thread: handle.thread().clone(),
            lost,
        })
    }

    /// Hands an event to the writer. Returns at once unless the queue is full.
    pub fn append(&self, event: StatementEvent) {
        if self.tx.send(Msg::Event(event)).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every event appended before this call is written (and flushed, if `flush`).
    pub async fn settle(&self, flush: bool) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Settle { flush, done })
            .map_err(|_| "audit writer stopped".to_owned())?;
        // Cut the gathering window short: someone is waiting.
        self.thread.unpark();
        wait.await.map_err(|_| "audit writer stopped".to_owned())?
    }

    /// [`Self::settle`] for threads outside the runtime (shutdown, the CLI).
    pub fn settle_blocking(&self, flush: bool) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Settle { flush, done })
            .map_err(|_| "audit writer stopped".to_owned())?;
        self.thread.unpark();
        wait.blocking_recv()
            .map_err(|_| "audit writer stopped".to_owned())?
    }

    /// Events that could not be written since the start (store errors).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

fn run(rx: &mpsc::Receiver<Msg>, db: &sled::Db, events: &sled::Tree, lost: &AtomicU64) {
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
        let result = write(&mut batch, db, events, lost);
        for m in batch.drain(..) {
            if let Msg::Settle { done, .. } = m {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// Writes the batch's events, one sled value per session, and flushes if a settle asked.
fn write(
    batch: &mut [Msg],
    db: &sled::Db,
    events: &sled::Tree,
    lost: &AtomicU64,
) -> Result<(), String> {
    // Per session: the key of its first event in the batch, and the JSON lines.
    let mut chunks: HashMap<u64, ([u8; 16], Vec<u8>, u64)> = HashMap::new();
    let mut flush = false;
    for m in batch.iter() {
        match m {
            Msg::Event(e) => {
                let (_, buf, n) = chunks.entry(e.session_id).or_insert_with(|| {
                    (event_key(e.session_id, e.seq), Vec::with_capacity(512), 0)
                });
                if serde_json::to_writer(&mut *buf, e).is_ok() {
                    buf.push(b'\n');
                    *n += 1;
                }
            }
            Msg::Settle { flush: f, .. } => flush |= f,
        }
    }
    let count: u64 = chunks.values().map(|c| c.2).sum();
    let mut sled_batch = sled::Batch::default();
    for (key, value, _) in chunks.into_values() {
        sled_batch.insert(&key, value);
    }
    let mut result = events.apply_batch(sled_batch).map_err(|e| e.to_string());
    if result.is_err() {
        lost.fetch_add(count, Ordering::Relaxed);
        tracing::error!(events = count, error = ?result, "audit events lost");
    }
    if flush && result.is_ok() {
        result = db.flush().map(|_| ()).map_err(|e| e.to_string());
    }
    result
}
