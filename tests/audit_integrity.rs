//! The audit chain end to end: real sessions through the real daemon (psql against a real
//! PostgreSQL, and a refused connection), across a restart; then copies of the store tampered
//! as someone holding its files could, and `gatewayctl audit verify --store COPY` naming each
//! place. Replay and export show exactly the statements that ran.

use std::{
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use gateway_tests::{Gateway, PgServer, billing_target, bin};
use gateway_user::audit::{AuditStore, VerdictKind, chain, tamper};
use serde_json::{Value, json};

const SCHEMA: &str = "CREATE TABLE notes (id int PRIMARY KEY, body text);
INSERT INTO notes VALUES (1, 'a'), (2, 'b');";

const RULES: &str = r#"
[[targets.postgres.rules]]
name = "no-unbounded-writes"
action = "deny"
kinds = ["update", "delete"]
without_where = true

[[targets.postgres.rules]]
name = "app"
action = "allow"
kinds = ["select", "insert", "update", "delete", "transaction", "set", "show"]
"#;

/// Four statements, the third refused by its rule.
const SCRIPT: &str = "SELECT id, body FROM notes ORDER BY id;
INSERT INTO notes VALUES (3, 'c');
UPDATE notes SET body = 'x';
SELECT count(*) FROM notes;
";

fn start(test: &str) -> (PgServer, Gateway) {
    let pg = PgServer::start("127.10.0.6");
    pg.app_sql(SCHEMA);
    let gw = Gateway::start(test, &(billing_target(&pg) + RULES));
    (pg, gw)
}

/// psql inside the governed cgroup; its stdout.
fn psql(gw: &Gateway, pg: &PgServer, script: &str) -> String {
    let mut cmd = Command::new("psql");
    cmd.args([pg.agent_url().as_str(), "-X", "-q", "-A", "-t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = gw.cgroup.command(cmd).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn gatewayctl(args: &[&str]) -> Output {
    Command::new(bin("gatewayctl")).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// gatewayctl that must succeed; its stdout.
fn ctl_ok(args: &[&str]) -> String {
    let out = gatewayctl(args);
    assert!(
        out.status.success(),
        "gatewayctl {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The session's exported lines: the stored record, then its events.
fn export(via: &[&str], id: u64) -> (Value, Vec<Value>, Vec<String>) {
    let id = id.to_string();
    let out = ctl_ok(&[via, &["export", &id, "--format", "jsonl"][..]].concat());
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (parsed[0].clone(), parsed[1..].to_vec(), lines[1..].to_vec())
}

#[test]
fn replay_and_export_show_exactly_the_statements_that_ran() {
    let (pg, gw) = start("audit-replay");
    let out = psql(&gw, &pg, SCRIPT);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["1|a", "2|b", "3"],
        "{out}"
    );
    let id = gw.ended_sessions(1).last().unwrap().id;
    let show = gateway_user::admin::client::call(
        &gw.socket(),
        &gateway_user::admin::Request::SessionsShow { id },
    )
    .unwrap();
    let events = show["events"].as_array().unwrap().clone();
    let verdicts: Vec<&str> = events
        .iter()
        .map(|e| e["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["allow", "allow", "deny", "allow"], "{events:#?}");
    let sockets = gw.socket().display().to_string();
    let socket = ["--socket", sockets.as_str()];

    let (record, exported, lines) = export(&socket, id);
    assert_eq!(record["id"], id);
    assert!(record["chain"]["seal"]["events"] == 4, "{record}");
    for (e, x) in events.iter().zip(&exported) {
        for field in [
            "seq", "step", "kind", "sql", "verdict", "rule", "rows", "error",
        ] {
            assert_eq!(e[field], x[field], "{field} of {x}");
        }
    }
    // Other tools can follow the chain: each line's SHA-256 is the next one's prev.
    assert_eq!(exported[0]["prev"], record["chain"]["open"]);
    for (i, w) in lines.windows(2).enumerate() {
        assert_eq!(
            exported[i + 1]["prev"],
            chain::hex(&chain::sha256(w[0].as_bytes()))
        );
    }
    assert_eq!(
        record["chain"]["seal"]["last"],
        chain::hex(&chain::sha256(lines[3].as_bytes()))
    );

    let replay = ctl_ok(&[&socket[..], &["replay", &id.to_string(), "--no-wait"][..]].concat());
    let mut rest = replay.as_str();
    for e in &events {
        let sql = e["sql"].as_str().unwrap();
        let at = rest
            .find(&format!("\n    {sql}\n"))
            .unwrap_or_else(|| panic!("{sql:?} missing or out of order in:\n{replay}"));
        rest = &rest[at + sql.len()..];
    }
    assert!(
        replay.contains("#3  query  update  deny (no-unbounded-writes)"),
        "{replay}"
    );
    assert!(
        replay.contains("error: refused by rule no-unbounded-writes"),
        "{replay}"
    );
    assert!(replay.contains("end: closed"), "{replay}");
    let started = std::time::Instant::now();
    let paced = ctl_ok(
        &[
            &socket[..],
            &["replay", &id.to_string(), "--speed", "1000"][..],
        ]
        .concat(),
    );
    assert_eq!(paced, replay);
    assert!(started.elapsed() < Duration::from_secs(5));

    // The same from the store itself once the daemon is gone.
    let mut gw = gw;
    gw.stop();
    let store = gw.store().display().to_string();
    let direct = ["--store", store.as_str()];
    assert_eq!(
        ctl_ok(&[&direct[..], &["replay", &id.to_string(), "--no-wait"][..]].concat()),
        replay
    );
    assert_eq!(export(&direct, id).2, lines);
}

/// Waits until no process (sled's flusher of a dropped store included) holds the store's lock.
fn wait_unlocked(store: &Path) {
    let db = std::fs::File::open(store.join("db")).unwrap();
    for _ in 0..250 {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(db.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            unsafe { libc::flock(db.as_raw_fd(), libc::LOCK_UN) };
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} stays locked", store.display());
}

/// A copy of the stopped daemon's store, changed by `change`.
fn tampered_copy(
    store: &Path,
    dir: &Path,
    name: &str,
    change: impl FnOnce(&AuditStore),
) -> PathBuf {
    let copy = dir.join(name);
    let status = Command::new("cp")
        .arg("-a")
        .arg(store)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let opened = AuditStore::open(&copy).unwrap();
    change(&opened);
    opened.flush().unwrap();
    drop(opened);
    wait_unlocked(&copy);
    copy
}

/// A way of tampering with a store.
type Change = Box<dyn FnOnce(&AuditStore)>;

fn verify(store: &Path) -> Output {
    let store = store.display().to_string();
    gatewayctl(&["--store", &store, "audit", "verify"])
}

#[test]
fn verify_passes_the_real_store_and_names_each_tampering_of_a_copy() {
    let (pg, mut gw) = start("audit-verify");
    psql(&gw, &pg, SCRIPT);
    let a = gw.ended_sessions(1).last().unwrap().id;
    // A refused connection is a session too, sealed at its one write.
    gw.agent(&["tcp", "127.10.0.99:81", "--send", "x"]);
    let sessions = gw.ended_sessions(2);
    let refused = sessions
        .iter()
        .find(|s| s.verdict == VerdictKind::Deny)
        .unwrap()
        .id;
    let sockets = gw.socket().display().to_string();
    let live = ctl_ok(&["--socket", &sockets, "audit", "verify"]);
    assert!(live.contains("chain intact"), "{live}");

    // After a restart, even from kill -9, the chain goes on from the last session stored.
    gw.kill9();
    gw.spawn();
    psql(&gw, &pg, "SELECT 1;\n");
    let c = gw.ended_sessions(3).last().unwrap().id;
    gw.stop();
    let store = gw.store();
    let (record, ..) = export(&["--store", &store.display().to_string()], c);
    assert_eq!(record["chain"]["prev_id"], refused, "{record}");

    let dir = tempfile::tempdir().unwrap();
    let untouched = tampered_copy(&store, dir.path(), "untouched", |_| {});
    let out = verify(&untouched);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("3 sessions (3 sealed, 0 open), 5 events: chain intact"));

    let at = |seq: u64| format!("session {a}, event seq {seq}: ");
    #[rustfmt::skip]
    let cases: Vec<(&str, Change, String)> = vec![
        ("edit", Box::new(move |s| tamper::edit_event(s, a, 2, "sql", json!("SELECT 1")).unwrap()),
            at(2) + "edited"),
        ("delete", Box::new(move |s| tamper::remove_event(s, a, 2).unwrap()), at(2) + "missing"),
        ("reorder", Box::new(move |s| tamper::swap_events(s, a, 2, 3).unwrap()), at(2) + "missing or moved"),
        ("truncate", Box::new(move |s| tamper::truncate_events(s, a, 1).unwrap()),
            at(2) + "missing: sealed with 4 events, 1 stored"),
        ("delete-session", Box::new(move |s| tamper::remove_session(s, refused).unwrap()),
            format!("session {c}: chains from session {refused}, which is missing")),
        ("edit-record", Box::new(move |s| tamper::edit_record(s, a, "bytes_down", json!(0)).unwrap()),
            format!("session {a}: record edited")),
    ];
    for (name, change, says) in cases {
        let copy = tampered_copy(&store, dir.path(), name, change);
        let out = verify(&copy);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{name}: unseen:\n{stdout}");
        assert!(
            stderr.contains(&format!("the first: {says}")),
            "{name}: want {says:?}:\n{stdout}{stderr}"
        );
    }
    // The daemon's own store was never touched.
    let out = verify(&store);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// `retention` in the daemon's config: sessions past `max_age` go, whole, and what stays
/// still verifies (the pruned sessions' hashes are kept as anchors).
#[test]
fn retention_prunes_old_sessions_and_the_rest_still_verifies() {
    let pg = PgServer::start("127.10.0.6");
    pg.app_sql(SCHEMA);
    let gw = Gateway::start_with_config(
        "audit-retain",
        &(billing_target(&pg) + RULES),
        "retention = { max_age = \"2s\", every = \"1s\" }\n",
    );
    for _ in 0..3 {
        psql(&gw, &pg, "SELECT 1;\n");
    }
    let old: Vec<u64> = gw.ended_sessions(3).iter().map(|s| s.id).collect();
    std::thread::sleep(Duration::from_secs(4));
    psql(&gw, &pg, "SELECT 2;\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let kept: Vec<u64> = gw.sessions().iter().map(|s| s.id).collect();
        if !kept.iter().any(|id| old.contains(id)) {
            assert!(!kept.is_empty(), "the newest session was pruned too");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never pruned: {kept:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let sockets = gw.socket().display().to_string();
    let live = ctl_ok(&["--socket", &sockets, "audit", "verify"]);
    assert!(live.contains("chain intact"), "{live}");
}
