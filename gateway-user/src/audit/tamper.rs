//! For tests only: changes a store behind the chain's back, as someone with write access to its
//! files could, to show that verify notices. Not part of the API.

use serde_json::Value;

use super::{AuditError, AuditStore, event_key};

/// A session's event lines in stored order.
fn lines(store: &AuditStore, session: u64) -> Result<Vec<Vec<u8>>, AuditError> {
    let mut out = Vec::new();
    for item in store.h()?.events.scan_prefix(session.to_be_bytes()) {
        let (_, v) = item?;
        out.extend(
            v.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    Ok(out)
}

fn seq_of(line: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(line).map_or(0, |v| v["seq"].as_u64().unwrap_or(0))
}

/// Rewrites a session's events as `f` leaves them, one value under the first line's seq (as
/// the writer would have keyed them).
pub fn rewrite_events(
    store: &AuditStore,
    session: u64,
    f: impl FnOnce(&mut Vec<Vec<u8>>),
) -> Result<(), AuditError> {
    let mut all = lines(store, session)?;
    f(&mut all);
    for item in store.h()?.events.scan_prefix(session.to_be_bytes()) {
        let (k, _) = item?;
        store.h()?.events.remove(k)?;
    }
    if let Some(first) = all.first() {
        let mut value = Vec::new();
        for l in &all {
            value.extend_from_slice(l);
            value.push(b'\n');
        }
        store
            .h()?
            .events
            .insert(event_key(session, seq_of(first)), value)?;
    }
    Ok(())
}

/// Changes one field of event `seq`, keeping the rest of the line (its `prev` too).
pub fn edit_event(
    store: &AuditStore,
    session: u64,
    seq: u64,
    field: &str,
    value: Value,
) -> Result<(), AuditError> {
    rewrite_events(store, session, |all| {
        for l in all.iter_mut().filter(|l| seq_of(l) == seq) {
            let mut v: Value = serde_json::from_slice(l).expect("an event line");
            v[field] = value.clone();
            *l = serde_json::to_vec(&v).expect("encodes");
        }
    })
}

pub fn remove_event(store: &AuditStore, session: u64, seq: u64) -> Result<(), AuditError> {
    rewrite_events(store, session, |all| all.retain(|l| seq_of(l) != seq))
}

/// Swaps the places of events `a` and `b`.
pub fn swap_events(store: &AuditStore, session: u64, a: u64, b: u64) -> Result<(), AuditError> {
    rewrite_events(store, session, |all| {
        let i = all.iter().position(|l| seq_of(l) == a).expect("event a");
        let j = all.iter().position(|l| seq_of(l) == b).expect("event b");
        all.swap(i, j);
    })
}

/// Keeps the first `keep` events.
pub fn truncate_events(store: &AuditStore, session: u64, keep: usize) -> Result<(), AuditError> {
    rewrite_events(store, session, |all| all.truncate(keep))
}

/// Removes a session: its record and its events.
pub fn remove_session(store: &AuditStore, session: u64) -> Result<(), AuditError> {
    rewrite_events(store, session, Vec::clear)?;
    store.h()?.sessions.remove(session.to_be_bytes())?;
    Ok(())
}

/// Changes one field of a session's stored record, leaving its chain as it was.
pub fn edit_record(
    store: &AuditStore,
    session: u64,
    field: &str,
    value: Value,
) -> Result<(), AuditError> {
    let key = session.to_be_bytes();
    let stored = store.h()?.sessions.get(key)?.expect("a stored session");
    let mut v: Value = serde_json::from_slice(&stored)?;
    v[field] = value;
    store.h()?.sessions.insert(key, serde_json::to_vec(&v)?)?;
    Ok(())
}

/// The stored record, chain included.
pub fn stored_record(store: &AuditStore, session: u64) -> Result<Option<Value>, AuditError> {
    store
        .h()?
        .sessions
        .get(session.to_be_bytes())?
        .map(|v| serde_json::from_slice(&v).map_err(AuditError::from))
        .transpose()
}
