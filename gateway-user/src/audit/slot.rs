//! The store's sled handles, and getting them back after sled fails.
//!
//! sled 0.34 makes an I/O error sticky: after one failed write (a full disk, say) every later
//! write and flush of that `Db` fails, even once space is back. The way back is to drop every
//! handle and open the store again, which replays sled's log up to its last durable write. So
//! the handles sit in one slot shared by every clone of the store and by its writer thread;
//! a failed write marks the slot broken, and [`Slot::recover`] (the daemon tries every second)
//! swaps in a fresh opening once nothing holds the old one and a probe write succeeds.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{AuditError, writer::lock};

/// One opening of the store.
pub(crate) struct Handles {
    pub(crate) db: sled::Db,
    pub(crate) sessions: sled::Tree,
    pub(crate) events: sled::Tree,
    /// The chain's head and the anchors pruning left.
    pub(crate) meta: sled::Tree,
}

impl Handles {
    fn open(path: &Path) -> Result<Handles, AuditError> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(200))
            .open()?;
        Ok(Handles {
            sessions: db.open_tree("sessions")?,
            events: db.open_tree("events")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }
}

pub(crate) struct Slot {
    path: PathBuf,
    /// `None` only while a recovery has let go of the old handles and not opened new ones.
    current: RwLock<Option<Arc<Handles>>>,
    /// Why the current handles cannot write, until they are replaced.
    broken: Mutex<Option<String>>,
    /// Why the store is full (below its reserve), until there is room again.
    full: Mutex<Option<String>>,
    /// Free bytes the store leaves on its filesystem; 0 for none.
    reserve: AtomicU64,
}

/// Written and flushed before a reopened store is used: opening succeeds on a full disk.
const PROBE_KEY: &[u8] = b"probe";

impl Slot {
    pub(crate) fn open(path: &Path) -> Result<Slot, AuditError> {
        Ok(Slot {
            path: path.to_owned(),
            current: RwLock::new(Some(Arc::new(Handles::open(path)?))),
            broken: Mutex::new(None),
            full: Mutex::new(None),
            reserve: AtomicU64::new(0),
        })
    }

    pub(crate) fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
    }

    /// Whether the store's filesystem is above the reserve; below it, the store is full: it
    /// finishes what it has (events of statements already forwarded, the ends of sessions)
    /// but opens nothing new. Stopping there keeps sled from ever meeting a full disk, where
    /// it would lose what it had taken but not flushed.
    pub(crate) fn check_space(&self) -> Result<(), String> {
        match self.short_of_space() {
            None => Ok(()),
            Some(why) => {
                let mut full = lock(&self.full);
                if full.is_none() {
                    tracing::error!(
                        error = why,
                        "audit store full; sessions stop until there is room"
                    );
                    *full = Some(why.clone());
                }
                Err(why)
            }
        }
    }

    /// Why the store takes no new sessions now: broken, or full.
    pub(crate) fn unavailable(&self) -> Option<String> {
        self.broken().or_else(|| lock(&self.full).clone())
    }

    fn short_of_space(&self) -> Option<String> {
        let reserve = self.reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return None;
        }
        let st = nix::sys::statvfs::statvfs(&self.path).ok()?;
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        (free < reserve).then(|| {
            format!(
                "audit store: {} MiB free on its filesystem, below the reserve of {} MiB \
                 (no space left)",
                free >> 20,
                reserve >> 20
            )
        })
    }

    pub(crate) fn get(&self) -> Result<Arc<Handles>, AuditError> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .clone()
            .ok_or_else(|| AuditError::Unavailable(self.unavailable().unwrap_or_default()))
    }

    /// Marks the handles broken; the first cause is kept.
    pub(crate) fn fail(&self, why: &str) {
        let mut broken = lock(&self.broken);
        if broken.is_none() {
            tracing::error!(
                error = why,
                "audit store failed; reopening once writes succeed"
            );
            *broken = Some(why.to_owned());
        }
    }

    pub(crate) fn broken(&self) -> Option<String> {
        lock(&self.broken).clone()
    }

    /// Opens the store afresh if it is broken, or takes it out of full once there is room.
    /// `Ok(true)` once it is whole again; an error while there is no room, while something
    /// still holds the old handles (sled's file lock) or when the probe write fails.
    pub(crate) fn recover(&self) -> Result<bool, AuditError> {
        if self.unavailable().is_none() {
            return Ok(false);
        }
        if let Some(why) = self.short_of_space() {
            return Err(AuditError::Unavailable(why));
        }
        if self.broken().is_none() {
            let cause = lock(&self.full).take();
            tracing::info!(was = cause.as_deref(), "audit store has room again");
            return Ok(true);
        }
        // Let go of the slot's reference first: sled locks its files per opening, so the old
        // one must be gone before the new one can open.
        let old = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(old);
        let fresh = Handles::open(&self.path)?;
        fresh
            .meta
            .insert(PROBE_KEY, &super::now_ms().to_be_bytes())?;
        fresh.db.flush()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(fresh));
        let cause = lock(&self.broken).take();
        tracing::info!(was = cause.as_deref(), "audit store reopened");
        Ok(true)
    }
}
