//! One session's events walked in stored order, each checked against the chain that should
//! run through them; the first that does not match is named.

use serde::Deserialize;

use super::{
    chain::{self, ChainFields, Hash, Seal},
    verify::{Problem, problem},
};

/// One session's events, in stored order, against the chain that should run through them.
pub struct Walk {
    session: u64,
    last: Hash,
    next_seq: u64,
    prev_seq: Option<u64>,
    pub count: u64,
    problem: Option<Problem>,
}

#[derive(Deserialize)]
struct Line {
    session_id: u64,
    seq: u64,
    prev: Option<String>,
}

impl Walk {
    pub fn new(session: u64, chain: Option<&ChainFields>) -> Walk {
        Walk {
            session,
            last: chain.map_or(chain::ZERO, |c| c.open),
            next_seq: 1,
            prev_seq: None,
            count: 0,
            problem: None,
        }
    }

    fn fail(&mut self, seq: Option<u64>, what: String) {
        self.problem
            .get_or_insert_with(|| problem(Some(self.session), seq, what));
    }

    pub fn chunk(&mut self, key_seq: u64, value: &[u8]) {
        let lines = value.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        for (i, line) in lines.enumerate() {
            self.count += 1;
            if self.problem.is_none() {
                self.line(line, (i == 0).then_some(key_seq));
            }
        }
    }

    fn line(&mut self, line: &[u8], key_seq: Option<u64>) {
        let Ok(l) = serde_json::from_slice::<Line>(line) else {
            let at = self.next_seq;
            return self.fail(Some(at), "unreadable: not an event".into());
        };
        let seq = Some(l.seq);
        if l.session_id != self.session {
            return self.fail(seq, format!("belongs to session {}", l.session_id));
        }
        if let Some(k) = key_seq
            && k != l.seq
        {
            return self.fail(seq, format!("stored under seq {k}: events were moved"));
        }
        if l.seq > self.next_seq {
            let what = format!("missing or moved: the event stored next is seq {}", l.seq);
            return self.fail(Some(self.next_seq), what);
        }
        if l.seq < self.next_seq {
            let after = self.prev_seq.unwrap_or(0);
            return self.fail(seq, format!("out of order: stored after seq {after}"));
        }
        match (l.prev.as_deref().and_then(chain::parse_hex), self.prev_seq) {
            (None, _) => return self.fail(seq, "has no chain hash".into()),
            (Some(p), None) if p != self.last => {
                let what = "does not chain from the session's opening record".into();
                return self.fail(seq, what);
            }
            (Some(p), Some(before)) if p != self.last => {
                let what = format!("edited: it does not hash to what seq {} chains from", l.seq);
                return self.fail(Some(before), what);
            }
            _ => {}
        }
        self.last = chain::sha256(line);
        self.prev_seq = seq;
        self.next_seq = l.seq + 1;
    }

    pub fn finish(mut self, seal: Option<&Seal>) -> Option<Problem> {
        if let Some(s) = seal
            && self.problem.is_none()
        {
            let last = self.prev_seq;
            if self.count < s.events {
                let what = format!(
                    "missing: sealed with {} events, {} stored",
                    s.events, self.count
                );
                self.fail(Some(last.unwrap_or(0) + 1), what);
            } else if self.count > s.events {
                let what = format!(
                    "after the seal: sealed with {} events, {} stored",
                    s.events, self.count
                );
                self.fail(Some(s.events + 1), what);
            } else if self.last != s.last {
                let what = "edited: the last event does not hash to the seal's".into();
                self.fail(last, what);
            }
        }
        self.problem
    }
}
