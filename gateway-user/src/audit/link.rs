//! Writing session records into the chain: the first write of a session links it to the head,
//! the write that carries its end seals it.

use std::{collections::HashSet, sync::atomic::Ordering};

use sled::Transactional as _;

use super::{
    AuditError, AuditStore, SessionRecord,
    chain::{self, Hash, Head, Tail},
    writer::lock,
};

impl AuditStore {
    /// True when the writer has chained every event handed to it, so every tail is current.
    pub(super) fn events_chained(&self) -> bool {
        let c = &self.chains;
        c.written.load(Ordering::Acquire) >= c.appended.load(Ordering::Acquire)
    }

    /// [`AuditStore::put`]; `settled` when the caller has already waited for the writer.
    pub(super) fn put_chained(
        &self,
        record: &SessionRecord,
        settled: bool,
    ) -> Result<(), AuditError> {
        let key = record.id.to_be_bytes();
        let stored = self.h()?.sessions.get(key)?;
        let Some(chain) = stored.as_deref().and_then(chain::chain_of) else {
            return self.open_session(record);
        };
        // A later write of a chained session keeps its link; an end seals it once, and a write
        // after the seal keeps what the seal counted.
        let seal = match (&chain.seal, record.end.is_some()) {
            (Some(s), _) => Some((s.events, s.last)),
            (None, true) => {
                let tail = self.take_tail(record.id, chain.open, settled)?;
                Some((tail.events, tail.last))
            }
            (None, false) => None,
        };
        let (bytes, _) = chain::stored_form(record, chain.prev_id, chain.prev, seal)?;
        self.h()?.sessions.insert(key, bytes)?;
        // Only now: until the sealed record is in, pruning must see the session as in use.
        if seal.is_some() {
            lock(&self.chains.tails).remove(&record.id);
            lock(&self.chains.lost).remove(&record.id);
        }
        Ok(())
    }

    /// The first write of a session: linked to the head, which it becomes, in one transaction
    /// so that a crash cannot leave the head behind its sessions.
    fn open_session(&self, record: &SessionRecord) -> Result<(), AuditError> {
        let mut head = lock(&self.chains.head);
        if head.is_none() {
            *head = Some(self.load_head()?);
        }
        let (prev_id, prev) = match head.expect("loaded above") {
            Some(h) => (Some(h.id), h.open),
            None => (None, chain::ZERO),
        };
        let closing = record.end.is_some();
        let open = chain::opening_hash(&serde_json::to_value(record)?, prev_id, &prev);
        // Ended at its first write (refused): sealed at once, with no events.
        let seal = closing.then_some((0, open));
        let (bytes, fields) = chain::stored_form(record, prev_id, prev, seal)?;
        debug_assert_eq!(fields.open, open);
        let new_head = Head {
            id: record.id,
            open,
        };
        let head_bytes = serde_json::to_vec(&new_head)?;
        let key = record.id.to_be_bytes();
        let h = self.h()?;
        (&h.sessions, &h.meta)
            .transaction(|(s, m)| {
                s.insert(&key, bytes.as_slice())?;
                m.insert(chain::HEAD_KEY, head_bytes.as_slice())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => AuditError::Store(e),
                sled::transaction::TransactionError::Abort(()) => AuditError::Chain {
                    id: record.id,
                    what: "opening write aborted".into(),
                },
            })?;
        *head = Some(Some(new_head));
        if closing {
            // A session whose opening was lost with a broken store's unflushed writes.
            lock(&self.chains.tails).remove(&record.id);
        } else {
            lock(&self.chains.tails).insert(
                record.id,
                Tail {
                    last: open,
                    events: 0,
                },
            );
        }
        Ok(())
    }

    /// The head from `meta`, or, when that is gone, found again: the chained session nothing
    /// links to (the newest such, should there be several).
    pub(super) fn load_head(&self) -> Result<Option<Head>, AuditError> {
        if let Some(bytes) = self.h()?.meta.get(chain::HEAD_KEY)? {
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| AuditError::Decode { id: 0, source });
        }
        let mut linked = HashSet::new();
        let mut chained = Vec::new();
        for item in self.h()?.sessions.iter() {
            let (k, v) = item?;
            if let Some(c) = chain::chain_of(&v) {
                linked.extend(c.prev_id);
                chained.push((
                    u64::from_be_bytes(k.as_ref().try_into().unwrap_or_default()),
                    c,
                ));
            }
        }
        Ok(chained
            .into_iter()
            .rev()
            .find(|(id, _)| !linked.contains(id))
            .map(|(id, c)| Head { id, open: c.open }))
    }

    /// Where a session's events end, for its seal. Events still queued are chained first
    /// (the calling thread waits unless `settled`); a session this process did not open is
    /// read back from the store.
    fn take_tail(&self, id: u64, open: Hash, settled: bool) -> Result<Tail, AuditError> {
        if !settled
            && !self.events_chained()
            && let Some(w) = self.writer.get()
            && let Err(e) = w.settle_blocking(false)
        {
            // Sealed with what was chained: verify reports anything that follows the seal.
            tracing::error!(session.id = id, error = %e, "sealing without queued events");
        }
        if let Some(tail) = lock(&self.chains.tails).get(&id) {
            return Ok(*tail);
        }
        let mut tail = Tail {
            last: open,
            events: 0,
        };
        for item in self.h()?.events.scan_prefix(id.to_be_bytes()) {
            let (_, v) = item?;
            for line in v.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                tail.last = chain::sha256(line);
                tail.events += 1;
            }
        }
        Ok(tail)
    }
}
