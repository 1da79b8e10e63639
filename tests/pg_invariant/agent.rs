//! The agent's side: `pg-agent script` run in the governed cgroup over the plan, what it sent
//! and saw, and the gateway's audit of it read back by connection.

use std::{collections::HashMap, path::Path, process::Command};

use gateway_tests::{Gateway, PgServer, bin, output_json};
use serde_json::{Value, json};

use crate::{
    CANARY,
    corpus::{Case, Session},
    hex,
};

/// One message the agent sent and what it saw.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) conn: Option<u64>,
    pub(crate) role: String,
    pub(crate) case: Option<usize>,
    pub(crate) bytes: Vec<u8>,
    pub(crate) encoding: String,
    pub(crate) outcome: String,
    pub(crate) errors: Vec<Value>,
    pub(crate) tags: Vec<String>,
    pub(crate) first: Option<String>,
    pub(crate) watched: bool,
}

impl Sent {
    fn from_record(r: &Value, cases: &HashMap<usize, Case>) -> Sent {
        let case = r["case"].as_u64().map(|c| c as usize);
        let bytes = match case {
            Some(id) => cases[&id].bytes.clone(),
            None => r["text"].as_str().unwrap_or("").as_bytes().to_vec(),
        };
        Sent {
            conn: r["conn"].as_u64(),
            role: r["role"].as_str().unwrap_or("").to_owned(),
            case,
            bytes,
            encoding: r["encoding"].as_str().unwrap_or("UTF8").to_owned(),
            outcome: r["outcome"].as_str().unwrap_or("").to_owned(),
            errors: r["errors"].as_array().cloned().unwrap_or_default(),
            tags: r["tags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            first: r["first"].as_str().map(str::to_owned),
            watched: r["watched"].as_bool().unwrap_or(false),
        }
    }

    pub(crate) fn is_marker(&self) -> bool {
        self.role == "hello" || self.role == "mark"
    }

    /// The quoted literal a hello or mark carries: what finds it in the audit.
    pub(crate) fn marker_literal(&self) -> Option<String> {
        if !self.is_marker() {
            return None;
        }
        let t = String::from_utf8_lossy(&self.bytes);
        t.find('\'').map(|i| t[i..].to_owned())
    }
}

/// Runs `pg-agent script` in the governed cgroup over `sessions`, numbering connections from
/// `first_conn`; what it sent and saw.
pub(crate) fn run_script(
    gw: &Gateway,
    pg: &PgServer,
    sessions: &[Session],
    first_conn: u64,
    path: &Path,
    cases: &HashMap<usize, Case>,
) -> Vec<Sent> {
    let plan = json!({
        "addr": pg.addr.to_string(),
        "watch": CANARY,
        "timeout_ms": 120_000,
        "first_conn": first_conn,
        "sessions": sessions.iter().map(|s| json!({
            "name": s.name,
            "params": s.params.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "cases": s.cases.iter().map(|c| json!({"id": c.id, "hex": hex(&c.bytes)})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(path, serde_json::to_vec(&plan).unwrap()).unwrap();
    let mut cmd = Command::new(bin("pg-agent"));
    cmd.arg("script").arg(path);
    let out = output_json(&mut gw.cgroup.command(cmd));
    out["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| Sent::from_record(r, cases))
        .collect()
}

/// Waits until every connection in `sent` that reached the daemon has ended as a gateway
/// session, then reads the audit by connection.
pub(crate) fn settle_and_audit(
    gw: &Gateway,
    sent: &[Sent],
) -> (HashMap<u64, Vec<Value>>, Vec<String>) {
    let conns = sent.iter().filter_map(|s| s.conn).max().unwrap_or(0);
    let unreached = sent
        .iter()
        .filter(|s| {
            s.role == "login"
                && s.errors
                    .first()
                    .and_then(|e| e["message"].as_str())
                    .is_some_and(|m| m.starts_with("connect:"))
        })
        .count();
    gw.ended_sessions(conns as usize - unreached);
    audit_by_conn(gw, conns)
}

/// The events of every audited session, by the connection whose hello they carry.
fn audit_by_conn(gw: &Gateway, conns: u64) -> (HashMap<u64, Vec<Value>>, Vec<String>) {
    let mut problems = Vec::new();
    let mut by_conn = HashMap::new();
    for s in gw.sessions() {
        let v = gateway_user::admin::client::call(
            &gw.socket(),
            &gateway_user::admin::Request::SessionsShow { id: s.id },
        )
        .expect("sessions show");
        let mut events = v["events"].as_array().cloned().unwrap_or_default();
        events.sort_by_key(|e| e["seq"].as_u64());
        let conn = (1..=conns).find(|c| {
            let hello = format!("'pginv-conn-{c}'");
            events
                .iter()
                .any(|e| e["sql"].as_str().is_some_and(|q| q.contains(&hello)))
        });
        match conn {
            Some(c) => {
                by_conn.insert(c, events);
            }
            None if events.is_empty() => {}
            None => problems.push(format!(
                "audit session {} has {} events but no hello of the agent's",
                s.id,
                events.len()
            )),
        }
    }
    (by_conn, problems)
}

/// Whether the daemon still runs (a dead child stays a zombie until the fixture reaps it).
pub(crate) fn daemon_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}
