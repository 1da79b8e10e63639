//! Retention: whole sessions go, oldest first, until the store is within its age and size
//! bounds. The chain stays verifiable: before a session goes, the hash that the sessions after
//! it chain from is kept as an anchor in `meta`, which verify accepts in its place. Only links
//! into sessions pruned here become anchors, so pruning never hides a session removed by
//! someone else.
//!
//! Kept whatever their age: the head (the next session chains from it) and the sessions this
//! process has open (their events are still coming).

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use sled::Transactional as _;

use super::{
    AuditError, AuditStore,
    chain::{self, ChainFields},
    now_ms,
    writer::lock,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// What went: sessions, their events, and the bytes of both (keys and values).
    pub sessions: u64,
    pub events: u64,
    pub bytes: u64,
    /// What is left.
    pub kept_sessions: u64,
    /// Only counted when a size bound was given.
    pub kept_bytes: Option<u64>,
}

/// What pruning needs of a stored session.
struct Entry {
    id: u64,
    /// When it ended, or started if it has not.
    at_ms: u64,
    bytes: u64,
    chain: Option<ChainFields>,
}

impl AuditStore {
    /// Deletes whole sessions, oldest (by id) first: those that ended (or, unended, started)
    /// more than `max_age` ago, then more while the store holds over `max_bytes` (keys and
    /// values of records and events; sled's files can be larger). Blocking: it reads every
    /// record, and every event too when `max_bytes` is given.
    pub fn prune(
        &self,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> Result<PruneReport, AuditError> {
        let mut report = PruneReport::default();
        if max_age.is_none() && max_bytes.is_none() {
            return Ok(report);
        }
        let cutoff = max_age.map(|a| now_ms().saturating_sub(a.as_millis() as u64));
        let mut entries = Vec::new();
        for item in self.h()?.sessions.iter() {
            let (k, v) = item?;
            let Ok(k8) = <[u8; 8]>::try_from(k.as_ref()) else {
                continue;
            };
            #[derive(Deserialize)]
            struct Times {
                started_at_ms: u64,
                ended_at_ms: Option<u64>,
                chain: Option<ChainFields>,
            }
            let id = u64::from_be_bytes(k8);
            let t: Times =
                serde_json::from_slice(&v).map_err(|source| AuditError::Decode { id, source })?;
            entries.push(Entry {
                id,
                at_ms: t.ended_at_ms.unwrap_or(t.started_at_ms),
                bytes: (k.len() + v.len()) as u64,
                chain: t.chain,
            });
        }
        // Taken after the scan: a session opened while it ran and still open is in use here.
        let in_use: HashSet<u64> = {
            let mut ids: HashSet<u64> = lock(&self.chains.tails).keys().copied().collect();
            let head = match *lock(&self.chains.head) {
                Some(h) => h,
                None => self.load_head()?,
            };
            ids.extend(head.map(|h| h.id));
            ids
        };
        let mut total = None;
        if max_bytes.is_some() {
            let mut events = 0u64;
            for item in self.h()?.events.iter() {
                let (k, v) = item?;
                events += (k.len() + v.len()) as u64;
            }
            total = Some(events + entries.iter().map(|e| e.bytes).sum::<u64>());
        }
        let mut doomed = Vec::new();
        for e in &entries {
            let old = cutoff.is_some_and(|c| e.at_ms < c);
            let big = matches!((total, max_bytes), (Some(t), Some(m)) if t > m);
            if !(old || big) || in_use.contains(&e.id) {
                continue;
            }
            let freed = e.bytes + self.event_bytes(e.id)?;
            total = total.map(|t| t.saturating_sub(freed));
            doomed.push(e.id);
        }
        if doomed.is_empty() {
            report.kept_sessions = entries.len() as u64;
            report.kept_bytes = total;
            return Ok(report);
        }
        // Anchors first: should pruning stop half way, verify still finds every link.
        let gone: HashSet<u64> = doomed.iter().copied().collect();
        let old = chain::decode_anchors(self.h()?.meta.get(chain::ANCHORS_KEY)?.as_deref());
        let mut anchors = BTreeMap::new();
        let mut followed = HashSet::new();
        for e in entries.iter() {
            let Some(c) = &e.chain else { continue };
            let Some(p) = c.prev_id else { continue };
            followed.insert(p);
            if !gone.contains(&e.id) && (gone.contains(&p) || old.get(&p) == Some(&c.prev)) {
                anchors.insert(p, c.prev);
            }
        }
        // A pruned session nothing scanned follows may be followed by one opened since: its
        // own hash is what that one chains from.
        for e in entries.iter().filter(|e| gone.contains(&e.id)) {
            if let Some(c) = e.chain.as_ref().filter(|_| !followed.contains(&e.id)) {
                anchors.insert(e.id, c.open);
            }
        }
        let mut both = old.clone();
        both.extend(anchors.iter().map(|(k, v)| (*k, *v)));
        self.h()?
            .meta
            .insert(chain::ANCHORS_KEY, chain::encode_anchors(&both))?;
        for id in doomed {
            let (events, bytes) = self.remove_session(id)?;
            report.sessions += 1;
            report.events += events;
            report.bytes += bytes;
        }
        self.h()?
            .meta
            .insert(chain::ANCHORS_KEY, chain::encode_anchors(&anchors))?;
        report.kept_sessions = entries.len() as u64 - report.sessions;
        report.kept_bytes = total;
        self.h()?.db.flush()?;
        Ok(report)
    }

    /// Prunes every `every` on the blocking pool until the runtime stops; what it removes is
    /// logged. Bounds are read once: restart the task to change them.
    pub fn spawn_pruning(
        &self,
        every: Duration,
        max_age: Option<Duration>,
        max_bytes: Option<u64>,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s = store.clone();
                match tokio::task::spawn_blocking(move || s.prune(max_age, max_bytes)).await {
                    Ok(Ok(r)) if r.sessions > 0 => tracing::info!(
                        sessions = r.sessions,
                        events = r.events,
                        bytes = r.bytes,
                        kept = r.kept_sessions,
                        "audit retention pruned the oldest sessions"
                    ),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "audit retention"),
                    Err(e) => tracing::error!(error = %e, "audit retention task"),
                }
            }
        })
    }

    fn event_bytes(&self, id: u64) -> Result<u64, AuditError> {
        let mut n = 0;
        for item in self.h()?.events.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item?;
            n += (k.len() + v.len()) as u64;
        }
        Ok(n)
    }

    /// One session's record and events, together: a crash leaves all of it or none.
    fn remove_session(&self, id: u64) -> Result<(u64, u64), AuditError> {
        let h = self.h()?;
        let mut keys = Vec::new();
        let (mut events, mut bytes) = (0u64, 0u64);
        for item in h.events.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item?;
            events += v.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count() as u64;
            bytes += (k.len() + v.len()) as u64;
            keys.push(k);
        }
        let key = id.to_be_bytes();
        bytes += h.sessions.get(key)?.map_or(0, |v| (8 + v.len()) as u64);
        (&h.sessions, &h.events)
            .transaction(|(s, e)| {
                s.remove(&key)?;
                for k in &keys {
                    e.remove(k)?;
                }
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => AuditError::Store(e),
                sled::transaction::TransactionError::Abort(()) => AuditError::Chain {
                    id,
                    what: "pruning aborted".into(),
                },
            })?;
        Ok((events, bytes))
    }
}
