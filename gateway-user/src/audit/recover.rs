//! What the store does about failures: a failed write stops every open session and breaks the
//! store until it can be reopened ([`super::slot`]); the daemon retries that by itself; and at
//! start, sessions a crash left open are sealed with how they ended.

use std::time::Duration;

use super::{AuditError, AuditStore, SessionEnd, writer::lock};

/// How often a broken store is tried again.
const RETRY: Duration = Duration::from_secs(1);

impl AuditStore {
    /// Records that a write failed. Writes that sled took but had not flushed are gone with the
    /// failed opening, whichever session made them, so no open session may forward anything
    /// more: each would go on with a chain whose last events are not in the store.
    pub(super) fn failed(&self, e: &AuditError) {
        if let AuditError::Store(_) = e {
            fail(&self.slot, &self.chains, &e.to_string());
        }
    }

    /// Whether a session may open now: the store is neither broken nor full. When full, every
    /// open session is stopped too.
    pub(super) fn may_open(&self) -> Result<(), AuditError> {
        if let Some(why) = self.slot.broken() {
            return Err(AuditError::Unavailable(why));
        }
        self.slot.check_space().map_err(|why| {
            stop_sessions(&self.chains);
            AuditError::Unavailable(why)
        })
    }

    /// Why the store takes no sessions now (broken or full), if it does not.
    pub fn unavailable(&self) -> Option<String> {
        self.slot.unavailable()
    }

    /// Reopens the store if it is broken; `Ok(true)` once it is whole again.
    pub fn recover(&self) -> Result<bool, AuditError> {
        let recovered = self.slot.recover()?;
        if recovered {
            // The head is read again from the new opening: a session whose opening write
            // was lost with the old one must not be linked to.
            *lock(&self.chains.head) = None;
            let ends = std::mem::take(&mut *lock(&self.chains.pending_ends));
            let written = ends
                .iter()
                .try_for_each(|r| self.put(r))
                .and_then(|()| Ok(self.h()?.db.flush().map(drop)?));
            if let Err(e) = written {
                lock(&self.chains.pending_ends).extend(ends);
                self.failed(&e);
                return Err(e);
            }
        }
        Ok(recovered)
    }

    /// Tries to reopen a broken store every second, for as long as the daemon runs.
    pub fn spawn_recovery(&self) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY).await;
                if store.unavailable().is_none() {
                    continue;
                }
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.recover()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "audit store not reopened yet"),
                    Err(e) => tracing::error!(error = %e, "audit store reopening failed"),
                }
            }
        })
    }

    /// Seals every session a previous run left open (it crashed or was killed before the
    /// session's end was written), with [`SessionEnd::Interrupted`] and the events that made
    /// it to the store. Call at start, before any session opens. Returns their ids.
    pub fn seal_leftovers(&self) -> Result<Vec<u64>, AuditError> {
        let mut open = Vec::new();
        for item in self.h()?.sessions.iter() {
            let (k, v) = item?;
            if super::chain::chain_of(&v).is_some_and(|c| c.seal.is_none()) {
                let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or_default());
                open.push(super::decode(id, &v)?);
            }
        }
        for record in &mut open {
            let last_event = self.events(record.id)?.last().map(|e| e.at_ms);
            record.ended_at_ms = Some(last_event.unwrap_or(record.started_at_ms));
            record.end = Some(SessionEnd::Interrupted);
            self.put(record)?;
        }
        let open: Vec<u64> = open.iter().map(|r| r.id).collect();
        if !open.is_empty() {
            self.flush()?;
            tracing::warn!(sessions = ?open, "sealed sessions a previous run left open");
        }
        Ok(open)
    }
}

/// Breaks the store and stops every open session (see [`AuditStore::failed`]).
pub(super) fn fail(slot: &super::Slot, chains: &super::chain::Chains, why: &str) {
    slot.fail(why);
    stop_sessions(chains);
}

/// Every open session forwards nothing more: see [`AuditStore::session_lost_events`].
pub(super) fn stop_sessions(chains: &super::chain::Chains) {
    let open: Vec<u64> = lock(&chains.tails).keys().copied().collect();
    chains.mark_lost(open);
}
