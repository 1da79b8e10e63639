//! Judge what the server will run: hostile SQL through the real gateway, held against the
//! server's own record.
//!
//! A PostgreSQL server logs every statement it receives (`log_statement = 'all'`, JSON lines),
//! a gateway with a policy in the spirit of `policies/billing-bot.toml` sits in front of it and
//! an agent in the governed cgroup sends every message of `tests/corpus/pg_hostile.sql`, a few
//! hundred generated ones and a few deeply nested ones, each as one simple Query. The test does
//! not say which of them the gateway must refuse (the judge may change); it shows that
//!
//! - every statement the server logged was sent by a message the gateway allowed (the log's
//!   text is the message's, in the order sent), and no refused message reached the server: in
//!   its place the server saw (and failed to parse) the stand-in `GATEWAYD POLICY REFUSAL`,
//!   once per refusal;
//! - the audit agrees: a deny event for each refused message, an allow (or mask) event for each
//!   allowed one;
//! - the server ran nothing in an allowed message that the gateway did not judge: it analyzed
//!   no more statements there (its `debug_print_parse` record, one parse tree per top-level
//!   statement) than the audit has events, and no INSERT, UPDATE, DELETE or MERGE (parse
//!   tree) nor DDL, COPY, DO or CALL (CommandComplete tag) of a kind the audit does not name;
//! - the daemon survives all of it and serves a healthy session at the end.
//!
//! How messages are found again: the agent (`pg-agent script`) opens each connection with
//! `SELECT 'pginv-conn-C'` and follows each message with `SELECT 'pginv-mark-C-K'`. The hello
//! names the server backend (the log's `session_id`) and the gateway session; the marks cut
//! the audit into one slice per message. In the log, the `statement:` entries of a backend
//! must be the texts of its allowed messages in the order sent (a message the server could
//! not parse or decode is not logged, and skipped); the parse trees that follow an entry are
//! the statements of that message.
//!
//! `PG_INVARIANT_SEED` seeds the generator (default fixed), `PG_INVARIANT_CASES` sets how many
//! messages it makes (default 300), `PG_INVARIANT_DEPTH` the terms of the deep ones (default
//! 25,000); see bench/PG_INVARIANT.md for a long run.
//!
//! The plan's messages come from `corpus`, `generator` and `deep`; `agent` runs them and
//! reads the audit back, `server_log` reads the server's record, `checks` holds the two
//! against each other and `report` says what came of it.

mod agent;
mod checks;
mod corpus;
mod deep;
mod generator;
mod report;
mod server_log;

use std::{collections::HashMap, fmt::Write as _, path::Path, process::Command, time::Instant};

use gateway_tests::{Gateway, PgServer, billing_target, bin, output_json};
use serde_json::Value;

use crate::{
    agent::{Sent, daemon_alive, run_script, settle_and_audit},
    checks::{Run, backends, expected_texts},
    corpus::{Case, parse_corpus},
    deep::{DEEP, deep},
    generator::generated,
    report::{Report, cases_with},
    server_log::{LogEntry, cut, log_mark},
};

/// Fixtures of the billing database. `secrets` (both) hold the canary the agent watches for.
const SCHEMA: &str = "
CREATE TABLE invoices (id serial PRIMARY KEY, customer_id int, amount int);
INSERT INTO invoices (customer_id, amount) VALUES (1, 100), (2, 250), (1, 75);
CREATE TABLE payouts (id serial PRIMARY KEY, amount int);
INSERT INTO payouts (amount) VALUES (10), (20), (30);
CREATE TABLE secrets (id int, secret text);
INSERT INTO secrets VALUES (1, 'pginv-canary-public');
CREATE SCHEMA secret_schema;
CREATE TABLE secret_schema.secrets (id int, secret text);
INSERT INTO secret_schema.secrets VALUES (1, 'pginv-canary-schema');
CREATE TABLE t (x int);
CREATE TABLE x (y int);
";

const CANARY: &str = "pginv-canary";

/// Reads and writes as an agent needs them; writes to payouts, secrets, server files, sleeps,
/// dblink, COPY PROGRAM, DDL and unbounded writes denied.
const RULES: &str = r#"
[[targets.postgres.rules]]
name = "no-unbounded-writes"
action = "deny"
kinds = ["update", "delete"]
without_where = true

[[targets.postgres.rules]]
name = "no-payout-writes"
action = "deny"
writes = ["public.payouts"]

[[targets.postgres.rules]]
name = "no-secrets"
action = "deny"
tables = ["secrets"]

[[targets.postgres.rules]]
name = "no-server-files-or-sleeps"
action = "deny"
functions = ["pg_read_file", "pg_read_binary_file", "pg_ls_dir", "lo_import", "lo_export", "pg_sleep*", "dblink*"]

[[targets.postgres.rules]]
name = "no-copy-program"
action = "deny"
copy_program = true

[[targets.postgres.rules]]
name = "no-ddl"
action = "deny"
kinds = ["create", "alter", "drop", "truncate", "grant", "revoke"]

[[targets.postgres.rules]]
name = "agent-work"
action = "allow"
kinds = ["select", "insert", "update", "delete", "transaction", "set", "show", "copy", "prepare", "execute", "deallocate", "explain"]
"#;

/// `bytes` in lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `s`, or when longer than `max` bytes its first `max` at most (cut at a character boundary)
/// and its length.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// `bytes` as a short quoted text, for a message's label.
fn show(bytes: &[u8]) -> String {
    format!("{:?}", truncate(&String::from_utf8_lossy(bytes), 240))
}

#[test]
fn the_server_runs_only_what_the_gateway_allowed() {
    let seed: u64 = std::env::var("PG_INVARIANT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0F1A);
    let count: usize = std::env::var("PG_INVARIANT_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);

    // The plan: the corpus, generated messages, deep ones, a healthy session.
    let corpus_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/pg_hostile.sql");
    let corpus = std::fs::read_to_string(&corpus_path).expect("tests/corpus/pg_hostile.sql");
    let mut next_id = 0;
    let mut sessions = parse_corpus(&corpus, &mut next_id);
    let corpus_cases = next_id;
    assert!(
        corpus_cases > 150,
        "the corpus has only {corpus_cases} cases"
    );
    sessions.extend(generated(seed, count, &mut next_id));
    // The deep messages go in a second run: the audit of the first is read before them, so a
    // daemon they kill still leaves the rest checked.
    let depth: usize = std::env::var("PG_INVARIANT_DEPTH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEEP)
        .max(2);
    let deep_sessions = deep(depth, &mut next_id);
    let cases: HashMap<usize, Case> = sessions
        .iter()
        .chain(&deep_sessions)
        .flat_map(|s| s.cases.iter().cloned())
        .map(|c| (c.id, c))
        .collect();

    let pg = PgServer::start_logging("127.10.0.7");
    pg.app_sql(SCHEMA);
    let body = billing_target(&pg) + "audit_literals = true\n" + RULES;
    let gw = Gateway::start("pg-invariant", &body);
    let dir = tempfile::tempdir().unwrap();

    // Everything the server logs between these two marks is the run.
    let (before, _) = log_mark(&pg, "SELECT 'pginv-window-start'");
    let started = Instant::now();
    let mut sent = run_script(
        &gw,
        &pg,
        &sessions,
        1,
        &dir.path().join("run1.json"),
        &cases,
    );
    let mut audit = HashMap::new();
    let mut v: Vec<String> = Vec::new(); // invariant violations
    let first_alive = daemon_alive(gw.pid());
    if first_alive {
        let (a, problems) = settle_and_audit(&gw, &sent);
        audit.extend(a);
        v.extend(problems);
    }
    let next_conn = sent.iter().filter_map(|s| s.conn).max().unwrap_or(0) + 1;
    if first_alive {
        sent.extend(run_script(
            &gw,
            &pg,
            &deep_sessions,
            next_conn,
            &dir.path().join("run2.json"),
            &cases,
        ));
    }
    let elapsed = started.elapsed();
    let alive = daemon_alive(gw.pid());
    if alive {
        let (a, problems) = settle_and_audit(&gw, &sent);
        audit.extend(a);
        v.extend(problems);
    } else {
        // Which message it died of: the last one sent before connections were refused.
        let last = sent
            .iter()
            .rev()
            .find(|s| s.case.is_some() && s.outcome != "not_sent")
            .map(|s| match s.case {
                Some(id) => format!("[{}] ({} bytes)", cases[&id].label, s.bytes.len()),
                None => String::new(),
            });
        v.push(format!(
            "gatewayd died; the last message it was sent: {}",
            last.unwrap_or_default()
        ));
    }
    let conns = sent.iter().filter_map(|s| s.conn).max().unwrap_or(0);
    let (upto_end, bad_lines) = log_mark(&pg, "SELECT 'pginv-window-end'");
    let window: Vec<LogEntry> = upto_end[before.len()..upto_end.len() - 1].to_vec();

    let label = |s: &Sent| -> String {
        match s.case {
            Some(id) => format!("[{}] {}", cases[&id].label, show(&s.bytes)),
            None => format!("[{}] {}", s.role, show(&s.bytes)),
        }
    };
    v.extend(
        bad_lines
            .iter()
            .map(|l| format!("unreadable server log line: {l}")),
    );

    // --- What the server logged, by connection, against what was sent and the audit.
    let hello_sid = backends(&window, conns, &mut v);
    let expected = expected_texts(&pg, &sent);
    let totals = Run {
        sent: &sent,
        expected: &expected,
        window: &window,
        hello_sid: &hello_sid,
        audit: &audit,
        alive,
        label: &label,
    }
    .check(conns, &mut v);

    // --- The daemon lives and serves.
    let healthy = sent
        .iter()
        .find(|s| {
            s.case
                .is_some_and(|id| cases[&id].label == "deep/healthy-after")
        })
        .cloned();
    let (status, wire) = if alive {
        let mut cmd = Command::new(bin("pg-agent"));
        cmd.args(["wire", &pg.addr.to_string(), "SELECT 'alive-at-the-end'"]);
        (gw.status(), output_json(&mut gw.cgroup.command(cmd)))
    } else {
        (Value::Null, Value::Null)
    };

    // --- Report.
    let report = Report {
        seed,
        count,
        corpus_cases,
        cases: &cases,
        elapsed,
        alive,
        sent: &sent,
        conns,
        audit: &audit,
        totals: &totals,
        violations: &v,
        label: &label,
    }
    .write(&pg);
    eprintln!("{report}");

    let of = |o: &str| cases_with(&sent, o);
    assert!(alive, "gatewayd died during the run (its log follows)");
    assert_eq!(status["audit_events_lost"], 0, "{status}");
    let healthy = healthy.expect("the healthy case was sent");
    assert_eq!(
        (healthy.outcome.as_str(), healthy.first.as_deref()),
        ("answered", Some("healthy")),
        "the session after the deep ones: {healthy:?}"
    );
    assert!(
        wire["received"]
            .as_str()
            .is_some_and(|r| r.contains("alive-at-the-end")),
        "a fresh session at the end: {wire}"
    );
    assert!(
        of("refused") > 0 && of("answered") > 0,
        "a run with no refusal or no allowed message proves nothing"
    );
    assert!(totals.logged > 0, "the server logged nothing of the run");
    assert!(
        v.is_empty(),
        "{} invariant violations (see the report above)",
        v.len()
    );
}

#[test]
fn the_corpus_format_reads_messages_exactly() {
    let text = "description, ignored\n\
                %% case a/one\nSELECT 1 --\n\n\n\
                %% # a comment\n\
                %% case a/two esc nl\nSELECT 1 -- x\\r; \\xe2\\x80\\xa8 \\\\\n\
                %% session s client_encoding=SJIS options=-c\\x20a=b\n\
                %% case b/three\nSELECT 'a'\n'b'\n\
                %% case b/empty\n";
    let mut id = 0;
    let sessions = parse_corpus(text, &mut id);
    assert_eq!(id, 4);
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].name, "main");
    let bytes: Vec<&[u8]> = sessions[0].cases.iter().map(|c| &c.bytes[..]).collect();
    assert_eq!(
        bytes,
        [&b"SELECT 1 --"[..], b"SELECT 1 -- x\r; \xe2\x80\xa8 \\\n"]
    );
    assert_eq!(
        sessions[1].params,
        [
            ("client_encoding".to_owned(), "SJIS".to_owned()),
            ("options".to_owned(), "-c a=b".to_owned())
        ]
    );
    assert_eq!(sessions[1].cases[0].bytes, b"SELECT 'a'\n'b'");
    assert_eq!(sessions[1].cases[1].label, "b/empty");
    assert!(sessions[1].cases[1].bytes.is_empty());

    // The shipped corpus reads, with every class the test is about.
    let corpus = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/pg_hostile.sql"),
    )
    .unwrap();
    let cases: Vec<Case> = parse_corpus(&corpus, &mut 0)
        .into_iter()
        .flat_map(|s| s.cases)
        .collect();
    for class in [
        "differential",
        "encoding",
        "names",
        "roles",
        "writes",
        "prepare",
    ] {
        let n = cases
            .iter()
            .filter(|c| c.label.starts_with(&format!("{class}/")))
            .count();
        assert!(n >= 5, "{class}: {n} cases");
    }
}

#[test]
fn the_generator_is_deterministic_by_seed() {
    let texts = |seed| -> Vec<Vec<u8>> {
        generated(seed, 120, &mut 0)
            .into_iter()
            .flat_map(|s| s.cases)
            .map(|c| c.bytes)
            .collect()
    };
    let a = texts(7);
    assert_eq!(a, texts(7));
    assert_ne!(a, texts(8));
    assert_eq!(a.len(), 120);
    let all = a.concat();
    // The fragments the generator exists for do show up.
    for needle in ["U&", "$", "E'", "/*", "--", "\n'", "PREPARE", "TABLE"] {
        let hit = all
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()));
        assert!(hit, "no {needle:?} in 120 generated messages");
    }
}

#[test]
fn the_servers_parse_tree_names_the_statement() {
    let entry = |detail: &str, context: Option<&str>| LogEntry {
        session_id: "s".into(),
        user: "u".into(),
        message: "parse tree:".into(),
        statement: None,
        detail: Some(detail.into()),
        context: context.map(str::to_owned),
    };
    // The outer Query's location and length come last, after any nested query's.
    let tree = "{QUERY :commandType 4 :querySource 0 :canSetTag true :utilityStmt <> \
                :cteList ({COMMONTABLEEXPR :ctequery {QUERY :commandType 1 :stmt_location 0 \
                :stmt_len 0}}) :stmt_location 14 :stmt_len 0}";
    assert_eq!(entry(tree, None).analyzed(), Some((14, 0, 4)));
    assert_eq!(
        entry(tree, Some("SQL statement \"SELECT 1\"")).analyzed(),
        None
    );
    assert_eq!(cut("SET ROLE NONE; DELETE FROM t", 14, 0), " DELETE FROM t");
    assert_eq!(cut("SET ROLE NONE; DELETE FROM t", 0, 13), "SET ROLE NONE");
}
