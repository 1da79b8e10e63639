//! The invariants: each connection's messages held against the server's log of them and
//! against the gateway's audit.

use std::collections::HashMap;

use gateway_tests::{APP_ROLE, PgServer};
use serde_json::Value;

use crate::{
    agent::Sent,
    server_log::{LogEntry, command_type, cut, server_texts},
    truncate,
};

/// What the gateway forwards in place of a refused message.
const STAND_IN: &str = "GATEWAYD POLICY REFUSAL";

/// The server backend (the log's `session_id`) of each connection, by its hello in `window`; a
/// statement logged as `APP_ROLE` on a backend no agent connection opened is a violation.
pub(crate) fn backends(
    window: &[LogEntry],
    conns: u64,
    v: &mut Vec<String>,
) -> HashMap<u64, String> {
    let hello_sid: HashMap<u64, String> = (1..=conns)
        .filter_map(|c| {
            let want = format!("SELECT 'pginv-conn-{c}'");
            window
                .iter()
                .find(|e| e.received() == Some(want.as_str()))
                .map(|e| (c, e.session_id.clone()))
        })
        .collect();
    let sid_conn: HashMap<&str, u64> = hello_sid.iter().map(|(c, s)| (s.as_str(), *c)).collect();
    for e in window {
        if e.user == APP_ROLE
            && e.received().is_some()
            && !sid_conn.contains_key(e.session_id.as_str())
        {
            v.push(format!(
                "the server logged a statement on a backend no agent connection opened: {:?}",
                truncate(&e.message, 240)
            ));
        }
    }
    hello_sid
}

/// What the server would log for each message: its bytes, converted if the connection's
/// client_encoding was not UTF8 when it was sent.
pub(crate) fn expected_texts(pg: &PgServer, sent: &[Sent]) -> Vec<Option<String>> {
    let foreign: Vec<(String, Vec<u8>)> = sent
        .iter()
        .filter(|s| !matches!(s.encoding.as_str(), "UTF8" | "UNICODE" | ""))
        .map(|s| (s.encoding.clone(), s.bytes.clone()))
        .collect();
    let converted = server_texts(pg, &foreign);
    let mut conv = converted.into_iter();
    sent.iter()
        .map(|s| {
            if matches!(s.encoding.as_str(), "UTF8" | "UNICODE" | "") {
                String::from_utf8(s.bytes.clone()).ok()
            } else {
                conv.next().flatten()
            }
        })
        .collect()
}

/// What the checks counted over all connections, for the report.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    /// Statements the server logged from the agent's backends.
    pub(crate) logged: usize,
    /// Stand-ins the server logged as failed.
    pub(crate) stand_ins: usize,
    /// Allowed messages for which the server ran statements the gateway did not judge.
    pub(crate) statement_findings: usize,
}

/// The run's record: what the agent sent, what the server logged of it and the gateway's audit.
pub(crate) struct Run<'a> {
    pub(crate) sent: &'a [Sent],
    /// The text the server logs for each message of `sent` (see [`expected_texts`]).
    pub(crate) expected: &'a [Option<String>],
    /// The server's log between the run's two marks.
    pub(crate) window: &'a [LogEntry],
    /// The backend of each connection (see [`backends`]).
    pub(crate) hello_sid: &'a HashMap<u64, String>,
    /// The audit's events, by connection.
    pub(crate) audit: &'a HashMap<u64, Vec<Value>>,
    /// Whether the daemon lived to the end of the run.
    pub(crate) alive: bool,
    /// How a message is named in a violation.
    pub(crate) label: &'a dyn Fn(&Sent) -> String,
}

impl Run<'_> {
    /// Holds each connection's messages against the server's log and the audit; the
    /// invariant violations go to `v`.
    pub(crate) fn check(&self, conns: u64, v: &mut Vec<String>) -> Totals {
        let mut totals = Totals::default();
        for conn in 1..=conns {
            self.check_conn(conn, &mut totals, v);
        }
        totals
    }

    /// One connection's messages against its backend's log entries and its audited session.
    fn check_conn(&self, conn: u64, totals: &mut Totals, v: &mut Vec<String>) {
        let Run {
            sent,
            expected,
            window,
            hello_sid,
            audit,
            alive,
            label,
        } = *self;
        let idx: Vec<usize> = (0..sent.len())
            .filter(|&i| sent[i].conn == Some(conn))
            .collect();
        let mine: Vec<&Sent> = idx.iter().map(|&i| &sent[i]).collect();
        if mine.iter().all(|s| s.role == "login") {
            return; // the login itself was refused: nothing was sent
        }
        let check = ConnCheck {
            conn,
            sent: mine.clone(),
            label,
        };
        let events = audit.get(&conn).cloned().unwrap_or_default();
        // With the daemon dead its audit cannot be read: only the log is checked then.
        let audited = audit.contains_key(&conn) || alive;
        if events.is_empty() && audited {
            v.push(format!("conn {conn}: no audited session carries its hello"));
        }
        let groups = if audited {
            check.audit_groups(&events, v)
        } else {
            HashMap::new()
        };
        // Whether the gateway let the message through, by its audit (the answer may be lost
        // when a connection ends).
        let audited_allow = |k: usize| {
            groups.get(&k).is_some_and(|g| {
                !g.is_empty()
                    && g.iter()
                        .all(|e| matches!(e["verdict"].as_str(), Some("allow" | "mask")))
            })
        };

        // The log: in order, each entry the text of a message of this connection that was
        // let through; skipped messages are those the server did not log (its raw parser or
        // its encoding conversion failed first).
        let sid = hello_sid.get(&conn);
        if sid.is_none()
            && mine
                .iter()
                .any(|s| s.role == "hello" && s.outcome == "answered")
        {
            v.push(format!(
                "conn {conn}: the server never logged the hello it answered"
            ));
        }
        let entries: Vec<&LogEntry> = window
            .iter()
            .filter(|e| Some(&e.session_id) == sid)
            .collect();
        let stand_ins = entries
            .iter()
            .filter(|e| e.statement.as_deref() == Some(STAND_IN))
            .count();
        let refused = mine.iter().filter(|s| s.outcome == "refused").count();
        totals.stand_ins += stand_ins;
        if stand_ins != refused {
            v.push(format!(
                "conn {conn}: the gateway refused {refused} messages but the server failed {stand_ins} stand-ins"
            ));
        }
        // The statements the server analyzed for each message (by index into `mine`), from
        // the parse trees it printed after logging the message: one per distinct location,
        // since PREPARE and COPY (query) print their inner query again at the same place.
        let mut analyzed: HashMap<usize, Vec<(usize, usize, u32)>> = HashMap::new();
        let mut current: Option<usize> = None;
        let mut p = 0;
        for entry in &entries {
            if let Some(tree) = entry.analyzed() {
                if let Some(k) = current {
                    let list = analyzed.entry(k).or_default();
                    if !list.iter().any(|t| (t.0, t.1) == (tree.0, tree.1)) {
                        list.push(tree);
                    }
                }
                continue;
            }
            let Some(e) = entry.received() else {
                continue;
            };
            current = None;
            totals.logged += 1;
            // Within the current slice: up to the next marker the server answered.
            let limit = (p..mine.len())
                .find(|&k| mine[k].is_marker() && mine[k].outcome == "answered")
                .unwrap_or(mine.len().saturating_sub(1));
            let hit = (p..=limit).find(|&k| expected[idx[k]].as_deref() == Some(e));
            let Some(k) = hit else {
                let refused_text = (0..mine.len()).any(|k| {
                    mine[k].outcome == "refused" && expected[idx[k]].as_deref() == Some(e)
                });
                v.push(format!(
                    "conn {conn}: the server logged {:?}, {}",
                    truncate(e, 240),
                    if refused_text {
                        "the text of a message the gateway REFUSED"
                    } else {
                        "which no allowed message of this connection sent (in this order)"
                    }
                ));
                continue;
            };
            for skipped in &mine[p..k] {
                if skipped.is_marker() && skipped.outcome == "answered" {
                    v.push(format!(
                        "conn {conn}: {} answered but missing from the server log",
                        label(skipped)
                    ));
                }
            }
            current = Some(k);
            let s = mine[k];
            match s.outcome.as_str() {
                "answered" => {}
                "refused" => v.push(format!(
                    "conn {conn}: the gateway REFUSED {} and the server logged it",
                    label(s)
                )),
                _ if audited_allow(k) => {}
                other => v.push(format!(
                    "conn {conn}: {} ({other}, not audited as allowed) is in the server log",
                    label(s)
                )),
            }
            p = k + 1;
        }

        // The audit against the answers.
        for (k, s) in mine.iter().enumerate() {
            if s.role != "case" || !audited {
                continue;
            }
            let group = groups.get(&k).cloned().unwrap_or_default();
            let verdicts: Vec<&str> = group.iter().filter_map(|e| e["verdict"].as_str()).collect();
            match s.outcome.as_str() {
                "refused" => {
                    if group.is_empty() {
                        v.push(format!(
                            "conn {conn}: refused {} has no audit event",
                            label(s)
                        ));
                    } else if verdicts.iter().any(|x| matches!(*x, "allow" | "mask")) {
                        v.push(format!(
                            "conn {conn}: refused {} audited as {verdicts:?}",
                            label(s)
                        ));
                    }
                    if !s.tags.is_empty() {
                        v.push(format!(
                            "conn {conn}: refused {} yet the server completed {:?}",
                            label(s),
                            s.tags
                        ));
                    }
                }
                "answered" => {
                    if group.is_empty() {
                        v.push(format!(
                            "conn {conn}: allowed {} has no audit event",
                            label(s)
                        ));
                        continue;
                    }
                    if verdicts.iter().any(|x| !matches!(*x, "allow" | "mask")) {
                        v.push(format!(
                            "conn {conn}: allowed {} audited as {verdicts:?}",
                            label(s)
                        ));
                    }
                    // The server's own record of what it ran: the statements it analyzed (its
                    // log) and completed (its CommandComplete tags).
                    let kinds: Vec<&str> =
                        group.iter().filter_map(|e| e["kind"].as_str()).collect();
                    let trees = analyzed.get(&k).cloned().unwrap_or_default();
                    let mut unjudged: Vec<String> = Vec::new();
                    if trees.len() > group.len() {
                        unjudged.push(format!(
                            "it analyzed {} statements, the gateway judged {}",
                            trees.len(),
                            group.len()
                        ));
                    }
                    for &(_, _, t) in &trees {
                        let want: &[&str] = match t {
                            2 => &["update", "execute"],
                            3 => &["insert", "execute"],
                            4 => &["delete", "execute"],
                            5 => &["merge", "execute"],
                            _ => continue,
                        };
                        if !kinds.iter().any(|k| want.contains(k)) {
                            unjudged.push(format!("it ran an {}", command_type(t)));
                        }
                    }
                    for tag in &s.tags {
                        if let Some(want) = kinds_for_tag(tag)
                            && !kinds.iter().any(|k| want.contains(k))
                        {
                            unjudged.push(format!("it completed {tag:?}"));
                        }
                    }
                    if !unjudged.is_empty() {
                        totals.statement_findings += 1;
                        let text = expected[idx[k]].clone().unwrap_or_default();
                        let server: Vec<String> = trees
                            .iter()
                            .map(|&(loc, len, t)| {
                                format!(
                                    "{} {:?}",
                                    command_type(t),
                                    truncate(cut(&text, loc, len).trim(), 120)
                                )
                            })
                            .collect();
                        v.push(format!(
                            "conn {conn}: allowed {}: {}; the server's statements {server:?}, completed {:?}; the gateway's {kinds:?}",
                            label(s),
                            unjudged.join(", "),
                            s.tags
                        ));
                    }
                }
                "timeout" => v.push(format!(
                    "conn {conn}: no answer within the timeout to {}",
                    label(s)
                )),
                _ => {}
            }
        }
    }
}

/// One connection's messages held against its slice of the server log and of the audit.
struct ConnCheck<'a> {
    conn: u64,
    sent: Vec<&'a Sent>,
    label: &'a dyn Fn(&Sent) -> String,
}

impl ConnCheck<'_> {
    /// Cuts the audit events into one group per message sent (events between two markers
    /// belong to the message, and its ROLLBACK, sent between them). Returns each message's
    /// events by index into `sent`.
    fn audit_groups(&self, events: &[Value], v: &mut Vec<String>) -> HashMap<usize, Vec<Value>> {
        let mut groups: HashMap<usize, Vec<Value>> = HashMap::new();
        let mut at = 0; // next event to look at
        // Marker positions in `events`.
        let mut last_marker: Option<usize> = None;
        let mut pending: Vec<usize> = Vec::new(); // messages sent since the last marker
        for (i, s) in self.sent.iter().enumerate() {
            let Some(lit) = s.marker_literal() else {
                pending.push(i);
                continue;
            };
            if s.outcome != "answered" {
                pending.push(i);
                continue;
            }
            let found = events[at..]
                .iter()
                .position(|e| e["sql"].as_str().is_some_and(|q| q.contains(&lit)));
            let Some(off) = found else {
                v.push(format!(
                    "conn {}: the audit has no event for the marker {lit} the server answered",
                    self.conn
                ));
                continue;
            };
            let pos = at + off;
            let verdict = events[pos]["verdict"].as_str().unwrap_or("");
            if verdict != "allow" {
                v.push(format!(
                    "conn {}: marker {lit} audited as {verdict}",
                    self.conn
                ));
            }
            if last_marker.is_none() && pos > 0 {
                v.push(format!(
                    "conn {}: {} audit events before the connection's hello",
                    self.conn, pos
                ));
            }
            self.assign(&events[at..pos], &pending, &mut groups, v);
            pending.clear();
            last_marker = Some(pos);
            at = pos + 1;
        }
        self.assign(&events[at..], &pending, &mut groups, v);
        groups
    }

    /// Gives `events` to the messages `pending` (one case, maybe its ROLLBACK).
    fn assign(
        &self,
        events: &[Value],
        pending: &[usize],
        groups: &mut HashMap<usize, Vec<Value>>,
        v: &mut Vec<String>,
    ) {
        let mut events = events.to_vec();
        let mut pending = pending.to_vec();
        if pending.len() > 1 && self.sent[*pending.last().unwrap()].role == "rollback" {
            let rb = pending.pop().unwrap();
            let last = events.pop();
            let ok = last
                .as_ref()
                .and_then(|e| e["sql"].as_str())
                .is_some_and(|q| q.trim().eq_ignore_ascii_case("rollback"));
            if !ok {
                v.push(format!(
                    "conn {}: the ROLLBACK after {} is not the last audit event of its slice ({last:?})",
                    self.conn,
                    (self.label)(self.sent[rb - 1])
                ));
            }
        }
        match pending.as_slice() {
            [] if !events.is_empty() => v.push(format!(
                "conn {}: {} audit events belong to no message: {:?}",
                self.conn,
                events.len(),
                events.iter().map(|e| e["sql"].clone()).collect::<Vec<_>>()
            )),
            [] => {}
            [one] => {
                groups.insert(*one, events);
            }
            many => v.push(format!(
                "conn {}: cannot cut the audit between {many:?}",
                self.conn
            )),
        }
    }
}

/// Kinds of audited statement that can make the server complete a statement with this tag; for
/// tags of statements that write or change the schema (the others are not checked).
fn kinds_for_tag(tag: &str) -> Option<&'static [&'static str]> {
    let word = tag.split(' ').next().unwrap_or("");
    Some(match word {
        "INSERT" => &["insert", "execute"],
        "UPDATE" => &["update", "execute"],
        "DELETE" => &["delete", "execute"],
        "MERGE" => &["merge", "execute"],
        "COPY" => &["copy"],
        "TRUNCATE" => &["truncate"],
        "DROP" => &["drop"],
        "ALTER" => &["alter"],
        "CREATE" => &["create"],
        "GRANT" => &["grant"],
        "REVOKE" => &["revoke"],
        "DO" => &["do"],
        "CALL" => &["call"],
        _ => return None,
    })
}
