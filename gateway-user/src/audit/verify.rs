//! Checking the chain: every record against its opening hash and seal, every event against the
//! one before it, every session against the one it links to. A session not sealed yet (live,
//! or cut off by a crash) is reported open, with its events checked as far as they go.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    AuditError, AuditStore, SessionEnd, SessionRecord,
    chain::{self, ChainFields, Hash, Head},
    walk::Walk,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub sessions: u64,
    pub sealed: u64,
    pub events: u64,
    /// Sessions not sealed.
    pub open: Vec<u64>,
    /// Sessions older than the chain (written before this store chained its records).
    pub unchained: Vec<u64>,
    /// Sessions a crash or kill left open, sealed at the daemon's next start with the events
    /// the store had: what they did after their last stored event is unknown.
    #[serde(default)]
    pub interrupted: Vec<u64>,
    /// Sessions refused or stopped because the store could not record them; those stopped
    /// mid-way are also in `problems` when events they were sealed with are missing.
    #[serde(default)]
    pub audit_failed: Vec<u64>,
    /// The session the next one will chain from, and its opening hash. Kept elsewhere, it
    /// shows a store rewritten wholesale.
    pub head: Option<Head>,
    /// At most one per session, the first found, in id order.
    pub problems: Vec<Problem>,
}

/// What does not match, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub session: Option<u64>,
    pub seq: Option<u64>,
    pub what: String,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.session, self.seq) {
            (Some(s), Some(q)) => write!(f, "session {s}, event seq {q}: {}", self.what),
            (Some(s), None) => write!(f, "session {s}: {}", self.what),
            _ => write!(f, "store: {}", self.what),
        }
    }
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sessions ({} sealed, {} open), {} events: ",
            self.sessions,
            self.sealed,
            self.open.len(),
            self.events
        )?;
        match self.problems.len() {
            0 => writeln!(f, "chain intact")?,
            n => writeln!(f, "{n} not matching")?,
        }
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        if !self.open.is_empty() {
            let ids: Vec<String> = self.open.iter().map(u64::to_string).collect();
            writeln!(f, "open (not sealed yet): {}", ids.join(" "))?;
        }
        let list = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        if !self.interrupted.is_empty() {
            let ids = list(&self.interrupted);
            writeln!(
                f,
                "interrupted (left open by a crash, sealed at restart): {ids}"
            )?;
        }
        if !self.audit_failed.is_empty() {
            let ids = list(&self.audit_failed);
            writeln!(f, "refused or stopped because the store failed: {ids}")?;
        }
        if !self.unchained.is_empty() {
            writeln!(f, "{} sessions older than the chain", self.unchained.len())?;
        }
        if let Some(h) = &self.head {
            writeln!(f, "head: session {} {}", h.id, chain::hex(&h.open))?;
        }
        Ok(())
    }
}

pub(super) fn problem(session: Option<u64>, seq: Option<u64>, what: impl Into<String>) -> Problem {
    Problem {
        session,
        seq,
        what: what.into(),
    }
}

pub(super) fn key_id(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(..8)?.try_into().ok()?))
}

impl AuditStore {
    /// Checks every chain of the store. `Err` only when the store cannot be read; what does not
    /// match is in the report.
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        let mut r = VerifyReport::default();
        let mut problems: BTreeMap<Option<u64>, Problem> = BTreeMap::new();
        let mut note = |p: Problem| {
            problems.entry(p.session).or_insert(p);
        };
        // One opening throughout, should the store be reopened meanwhile.
        let h = self.h()?;
        let head_bytes = h.meta.get(chain::HEAD_KEY)?;
        r.head = head_bytes
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok());
        if head_bytes.is_some() && r.head.is_none() {
            note(problem(None, None, "the chain's head record is unreadable"));
        }
        let anchors = chain::decode_anchors(h.meta.get(chain::ANCHORS_KEY)?.as_deref());
        let mut chained: BTreeMap<u64, ChainFields> = BTreeMap::new();
        let mut present = HashSet::new();
        let mut unchained = Vec::new();
        let mut events = h.events.iter().peekable();
        for item in h.sessions.iter() {
            let (k, v) = item?;
            let Some(id) = key_id(&k).filter(|_| k.len() == 8) else {
                note(problem(
                    None,
                    None,
                    format!("a session key of {} bytes", k.len()),
                ));
                continue;
            };
            r.sessions += 1;
            present.insert(id);
            let record = check_record(id, &v);
            let mut walk = Walk::new(id, record.chain.as_ref());
            // Events are keyed by session id first: one merge pass over both trees.
            while let Some(item) = events.next_if(|e| {
                e.as_ref()
                    .map_or(true, |(k, _)| key_id(k).is_none_or(|s| s <= id))
            }) {
                let (ek, ev) = item?;
                let Some(sid) = key_id(&ek) else {
                    let what = format!("an event key of {} bytes", ek.len());
                    note(problem(None, None, what));
                    continue;
                };
                if sid < id {
                    self.orphan(sid, &mut note)?;
                    continue;
                }
                walk.chunk(key_id(&ek[8..]).unwrap_or(0), &ev);
            }
            r.events += walk.count;
            let walked = walk.finish(record.chain.as_ref().and_then(|c| c.seal.as_ref()));
            // The record's own problem first; the rest of the chain is still checked against
            // what the record claims, so that one edit is not reported again downstream.
            if record.problem.or(walked).is_some()
                && let Some(p) = self.recheck(id)?
            {
                note(p);
            }
            match record.end {
                Some(SessionEnd::Interrupted) => r.interrupted.push(id),
                Some(SessionEnd::AuditUnavailable(_)) => r.audit_failed.push(id),
                _ => {}
            }
            match record.chain {
                None => unchained.push(id),
                Some(c) => {
                    match &c.seal {
                        Some(_) => r.sealed += 1,
                        None => r.open.push(id),
                    }
                    chained.insert(id, c);
                }
            }
        }
        for item in events {
            let (ek, _) = item?;
            if let Some(sid) = key_id(&ek) {
                self.orphan(sid, &mut note)?;
            }
        }
        let first = chained.keys().next().copied().unwrap_or(u64::MAX);
        for id in unchained {
            if id < first {
                r.unchained.push(id);
            } else {
                note(problem(
                    Some(id),
                    None,
                    "has no chain: it was stripped, or written around it",
                ));
            }
        }
        links(&chained, &present, &anchors, r.head.as_ref(), &mut note);
        r.problems = problems.into_values().collect();
        r.problems.sort_by_key(|p| (p.session, p.seq));
        Ok(r)
    }

    /// One session again, read afresh: in a live store a session may have been sealed while
    /// the merge pass read it, and is judged on what it is now.
    fn recheck(&self, id: u64) -> Result<Option<Problem>, AuditError> {
        let Some(v) = self.h()?.sessions.get(id.to_be_bytes())? else {
            return Ok(None);
        };
        let record = check_record(id, &v);
        let mut walk = Walk::new(id, record.chain.as_ref());
        for item in self.h()?.events.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item?;
            walk.chunk(key_id(&k[8..]).unwrap_or(0), &v);
        }
        let walked = walk.finish(record.chain.as_ref().and_then(|c| c.seal.as_ref()));
        Ok(record.problem.or(walked))
    }

    /// Events under a session id with no record: the record was deleted. Checked again, as a
    /// live store may have written the record after the scan passed its place.
    fn orphan(&self, sid: u64, note: &mut impl FnMut(Problem)) -> Result<(), AuditError> {
        if !self.h()?.sessions.contains_key(sid.to_be_bytes())? {
            note(problem(
                Some(sid),
                None,
                "has events but no record (the record was deleted)",
            ));
        }
        Ok(())
    }
}

/// What a record's own checks found: the chain it claims (when readable) and what is wrong.
struct Checked {
    chain: Option<ChainFields>,
    /// How the record says the session ended, when it reads.
    end: Option<SessionEnd>,
    problem: Option<Problem>,
}

/// The record's own checks: it reads, it is where its id says, its opening fields and (once
/// sealed) all of it hash as its chain says.
fn check_record(id: u64, bytes: &[u8]) -> Checked {
    let bad = |what: String, chain: Option<ChainFields>| Checked {
        problem: Some(problem(Some(id), None, what)),
        chain,
        end: None,
    };
    let v: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return bad(format!("record is not JSON: {e}"), None),
    };
    let chain = match v
        .get("chain")
        .cloned()
        .map(serde_json::from_value::<ChainFields>)
    {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return bad(format!("record's chain is unreadable: {e}"), None),
    };
    let end = match serde_json::from_value::<SessionRecord>(v.clone()) {
        Ok(r) => r.end,
        Err(e) => return bad(format!("record is not a session record: {e}"), chain),
    };
    if v["id"].as_u64() != Some(id) {
        let what = format!("record is stored under {id} but says id {}", v["id"]);
        return bad(what, chain);
    }
    if let Some(c) = &chain {
        if chain::opening_hash(&v, c.prev_id, &c.prev) != c.open {
            let what = "record edited: its opening fields do not hash to its opening hash";
            return bad(what.into(), chain);
        }
        if let Some(seal) = &c.seal
            && chain::seal_hash(&v) != seal.hash
        {
            return bad("record edited: it does not hash to its seal".into(), chain);
        }
    }
    Checked {
        chain,
        end,
        problem: None,
    }
}

/// Each session's link to the one opened before it, and the head's to the newest.
fn links(
    chained: &BTreeMap<u64, ChainFields>,
    present: &HashSet<u64>,
    anchors: &BTreeMap<u64, Hash>,
    head: Option<&Head>,
    note: &mut impl FnMut(Problem),
) {
    let opening = |id: u64| chained.get(&id).map(|c| c.open);
    let mut successor: HashMap<Option<u64>, u64> = HashMap::new();
    for (&id, c) in chained {
        let here = |what: String| problem(Some(id), None, what);
        if let Some(other) = successor.insert(c.prev_id, id) {
            let from = c
                .prev_id
                .map_or("nothing".into(), |p| format!("session {p}"));
            note(here(format!(
                "chains from {from} as session {other} does: a session between them was removed"
            )));
            continue;
        }
        let Some(p) = c.prev_id else { continue };
        match opening(p) {
            Some(h) if h == c.prev => {}
            Some(_) => note(here(format!(
                "chains from session {p}, whose opening hash is another (session {p} edited?)"
            ))),
            None if anchors.get(&p) == Some(&c.prev) => {}
            None if present.contains(&p) => {
                note(here(format!("chains from session {p}, which has no chain")))
            }
            None => note(here(format!(
                "chains from session {p}, which is missing (deleted)"
            ))),
        }
    }
    match head {
        Some(h) => match opening(h.id) {
            Some(open) if open == h.open => {}
            Some(_) => note(problem(
                Some(h.id),
                None,
                "is the chain's head, but with another opening hash",
            )),
            None if anchors.get(&h.id) == Some(&h.open) => {}
            None => note(problem(
                Some(h.id),
                None,
                "is missing: it was the newest session (the chain's head)",
            )),
        },
        None if !chained.is_empty() => {
            note(problem(None, None, "the chain's head record is missing"))
        }
        None => {}
    }
}
