//! PostgreSQL through the gateway beyond tests/postgres.rs: psycopg2 (Python's libpq driver)
//! as the agent, an upstream restarted under a live session, and agent tokens checked
//! against a JWKS document.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
};

use gateway_tests::{
    APP_PASSWORD, APP_ROLE, Gateway, PgServer, billing_target, bin, es256_key, output_json,
};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet},
};
use serde_json::{Value, json};

const SCHEMA: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, note text);
INSERT INTO customers VALUES
  (1, 'Ada', 'ada@example.com', '123-45-6789', 'card 4111 1111 1111 1111 on file'),
  (2, 'Bob', 'bob@example.org', '078-05-1120', 'nothing to hide'),
  (3, 'Cy', NULL, NULL, NULL);
CREATE TABLE invoices (id serial PRIMARY KEY, customer_id int, amount int);
INSERT INTO invoices (customer_id, amount) VALUES (1, 100), (2, 250), (1, 75), (1, 20);
";

const RULES: &str = r#"
[[targets.postgres.rules]]
name = "no-unbounded-writes"
action = "deny"
kinds = ["update", "delete"]
without_where = true

[[targets.postgres.rules]]
name = "customer-pii"
action = "mask"
tables = ["public.customers"]
columns = ["email", "ssn"]
detectors = ["card"]

[[targets.postgres.rules]]
name = "app"
action = "allow"
kinds = ["select", "insert", "update", "delete", "transaction", "set", "show"]
"#;

struct Fixture {
    pg: PgServer,
    gw: Gateway,
}

impl Fixture {
    fn start(test: &str, rules: &str) -> Fixture {
        let pg = PgServer::start("127.10.0.5");
        pg.app_sql(SCHEMA);
        let gw = Gateway::start(test, &(billing_target(&pg) + rules));
        Fixture { pg, gw }
    }

    /// psql in the governed cgroup, verbose errors, with `password` (a token) offered.
    fn psql_cmd(&self, password: Option<&str>, sql: &str) -> Command {
        let mut cmd = Command::new("psql");
        cmd.args([
            &self.pg.agent_url(),
            "-X",
            "-A",
            "-t",
            "-w",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(["-c", sql]);
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        self.gw.cgroup.command(cmd)
    }

    /// [`Self::psql_cmd`] run to its end: (stdout, stderr).
    fn psql(&self, password: Option<&str>, sql: &str) -> (String, String) {
        let out = self.psql_cmd(password, sql).output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `gatewayctl sessions show ID` against the running daemon, as an auditor runs it.
    fn show(&self, id: u64) -> Value {
        output_json(
            Command::new(bin("gatewayctl"))
                .arg("--socket")
                .arg(self.gw.socket())
                .args(["--json", "sessions", "show", &id.to_string()]),
        )
    }
}

/// The Python agents, run by Debian's interpreter: its dist-packages hold python3-psycopg2,
/// which a `python3` earlier on PATH (pyenv's, say) would not see.
fn py_agent(args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/support/py_agent.py"))
        .args(args);
    cmd
}

#[test]
fn psycopg2_reads_writes_is_refused_and_masked_like_any_driver() {
    let f = Fixture::start("pgc-psycopg2", RULES);
    let direct = output_json(&mut py_agent(&[
        "psycopg2",
        &f.pg.url(APP_ROLE, APP_PASSWORD, "billing"),
        "direct",
    ]));
    let agent =
        output_json(
            &mut f
                .gw
                .cgroup
                .command(py_agent(&["psycopg2", &f.pg.agent_url(), "agent"])),
        );

    assert_eq!(direct["rows"], json!([[1, 1, 100], [3, 1, 75]]));
    assert_eq!(agent["rows"], direct["rows"]);
    assert_eq!(agent["inserted"], 5, "{agent}");

    let denied = &agent["denied"];
    assert_eq!(denied["pgcode"], "42501", "{agent}");
    assert_eq!(denied["class"], "InsufficientPrivilege", "{agent}");
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("(rule no-unbounded-writes)"),
        "{agent}"
    );
    // The committed insert stayed; the one in the refused transaction was rolled back with
    // it; the same connection answered afterwards.
    assert_eq!(agent["after_rollback"], json!([5, 452]), "{agent}");
    assert_eq!(
        f.pg.app_sql("SELECT count(*), sum(amount) FROM invoices"),
        "5|452\n"
    );

    let customers = agent["customers"].as_array().unwrap();
    assert_eq!(customers.len(), 3, "{agent}");
    for row in &customers[..2] {
        assert_eq!(
            (&row[2], &row[3]),
            (&json!("[redacted]"), &json!("[redacted]"))
        );
    }
    assert_eq!(customers[0][1], "Ada");
    let note = customers[0][4].as_str().unwrap();
    assert!(
        note.starts_with("card ") && note.ends_with(" on file") && !note.contains("4111"),
        "{note}"
    );
    assert_eq!(customers[1][4], "nothing to hide");
    assert_eq!(
        customers[2],
        json!([3, "Cy", null, null, null]),
        "NULL stays NULL"
    );

    let sessions = f.gw.ended_sessions(1);
    let events = f.show(sessions.last().unwrap().id)["events"].clone();
    let seen: Vec<(&str, &str)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["verdict"].as_str().unwrap()))
        .filter(|(kind, _)| *kind != "transaction")
        .collect();
    assert_eq!(
        seen,
        [
            ("select", "allow"),
            ("insert", "allow"),
            ("insert", "allow"),
            ("delete", "deny"),
            ("select", "allow"),
            ("select", "mask"),
        ]
    );
}

#[test]
fn an_upstream_restart_ends_the_live_session_cleanly_and_new_sessions_work() {
    let mut f = Fixture::start("pgc-restart", RULES);
    let mut cmd = Command::new(bin("pg-agent"));
    cmd.args(["restart", &f.pg.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut agent = f.gw.cgroup.command(cmd).spawn().unwrap();
    let mut stdout = BufReader::new(agent.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n", "the first session did not come up");

    f.pg.restart();
    agent.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(agent.wait().unwrap().success(), "{rest}");
    let out: Value = serde_json::from_str(&rest).unwrap();

    assert!(out["before"].as_str().unwrap().contains("before-restart"));
    // PostgreSQL's fast shutdown ends each backend with FATAL 57P01; the gateway passes it on
    // and closes. Neither that nor a query sent afterwards may leave the agent waiting.
    let unprompted = &out["unprompted"];
    assert_eq!(unprompted["end"], "eof", "{out}");
    assert_eq!(unprompted["codes"], json!(["57P01"]), "{out}");
    assert_ne!(out["old_query"]["end"], "timeout", "{out}");
    assert!(out["old_ms"].as_u64().unwrap() < 8_000, "{out}");

    assert!(
        out["new_login"].as_str().unwrap().ends_with("Z\0\0\0\x05I"),
        "{out}"
    );
    assert!(
        out["after"].as_str().unwrap().contains("after-restart"),
        "{out}"
    );
    let (rows, err) = f.psql(None, "SELECT count(*) FROM invoices");
    assert_eq!(rows, "4\n", "{err}");

    // The daemon went on serving and recorded which side ended the first session.
    assert!(f.gw.status().is_object());
    let sessions = f.gw.ended_sessions(3);
    assert!(
        matches!(
            sessions[0].end,
            Some(gateway_user::audit::SessionEnd::UpstreamError(_))
        ),
        "{:?}",
        sessions[0]
    );

    // A restart while a statement runs: the agent waiting on it hears why, at once.
    let mut sleeper = f.psql_cmd(None, "SELECT pg_sleep(60)");
    let sleeper = sleeper
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let restarted = std::time::Instant::now();
    f.pg.restart();
    let out = sleeper.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("FATAL:  57P01: terminating connection due to administrator command"),
        "{err}"
    );
    assert!(restarted.elapsed().as_secs() < 10, "{err}");
    let (rows, err) = f.psql(None, "SELECT count(*) FROM invoices");
    assert_eq!(rows, "4\n", "{err}");
}

/// Every statement the gateway forwarded is an event of its session, even when the session
/// ends before the answer comes back: the upstream still answers what it received (and the
/// event has the answer), or the event says it went unanswered.
#[test]
fn statements_in_flight_when_a_session_ends_are_still_audited() {
    let mut f = Fixture::start("pgc-inflight", RULES);
    let (ip, port) = (f.pg.addr.ip().to_string(), f.pg.addr.port().to_string());
    let cases = [
        (
            "INSERT INTO invoices (customer_id, amount) VALUES (9, 1)",
            true,
            "insert",
        ),
        (
            "INSERT INTO invoices (customer_id, amount) SELECT 9, 2 FROM pg_sleep(1)",
            false,
            "insert",
        ),
        ("DELETE FROM invoices", true, "delete"),
    ];
    for (sql, terminate, _) in cases {
        let mut cmd = py_agent(&["fire-and-close", &ip, &port, sql]);
        if terminate {
            cmd.arg("--terminate");
        }
        assert!(f.gw.cgroup.command(cmd).status().unwrap().success());
    }
    // Both inserts ran to their commit on the server although their agents were gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f
        .pg
        .app_sql("SELECT count(*) FROM invoices WHERE customer_id = 9")
        != "2\n"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the inserts never landed"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // And a statement cut short by an upstream restart.
    let sleeper = f
        .psql_cmd(None, "SELECT pg_sleep(60)")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    f.pg.restart();
    sleeper.wait_with_output().unwrap();
    let sessions = f.gw.ended_sessions(cases.len() + 1);
    let expected = cases
        .iter()
        .map(|&(sql, _, kind)| (sql, kind))
        .chain([("SELECT pg_sleep(60)", "select")]);
    let mut missing = Vec::new();
    for (s, (sql, kind)) in sessions.iter().zip(expected) {
        let events = f.show(s.id)["events"].clone();
        if !events.as_array().unwrap().iter().any(|e| e["kind"] == kind) {
            missing.push(format!("session {} ({sql}): {events}", s.id));
        }
    }
    assert!(
        missing.is_empty(),
        "forwarded but not audited:\n{}",
        missing.join("\n")
    );
}

/// The public half of `key` as a JWK named `kid`.
fn jwk(key: &[u8], kid: &str) -> Jwk {
    let mut jwk =
        Jwk::from_encoding_key(&EncodingKey::from_ec_pem(key).unwrap(), Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn token(key: &[u8], kid: Option<&str>, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": "https://idp.test", "aud": "billing-db", "sub": sub,
        "groups": ["billing"], "exp": now + 300,
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_pem(key).unwrap()).unwrap()
}

#[test]
fn agent_jwts_are_verified_against_a_jwks_by_kid() {
    let keys = tempfile::tempdir().unwrap();
    let (a, b, stranger) = (
        es256_key(keys.path(), "a.key"),
        es256_key(keys.path(), "b.key"),
        es256_key(keys.path(), "c.key"),
    );
    let jwks = keys.path().join("jwks.json");
    let set = JwkSet {
        keys: vec![jwk(&a, "key-a"), jwk(&b, "key-b")],
    };
    std::fs::write(&jwks, serde_json::to_vec_pretty(&set).unwrap()).unwrap();
    let rules = format!(
        r#"
[targets.postgres.agent_jwt]
issuer = "https://idp.test"
audience = "billing-db"
jwks_file = "{}"
algorithms = ["ES256"]

[[targets.postgres.rules]]
name = "known-bots-read"
action = "allow"
kinds = ["select"]
subjects = ["bot-a", "bot-b"]
"#,
        jwks.display()
    );
    let f = Fixture::start("pgc-jwks", &rules);

    // Each key of the set verifies its own tokens, chosen by `kid`.
    for (n, (key, kid, sub)) in [(&a, "key-a", "bot-a"), (&b, "key-b", "bot-b")]
        .into_iter()
        .enumerate()
    {
        let (out, err) = f.psql(
            Some(&token(key, Some(kid), sub)),
            "SELECT count(*) FROM invoices",
        );
        assert_eq!(out, "4\n", "{kid}: {err}");
        let sessions = f.gw.ended_sessions(n + 1);
        let shown = f.show(sessions.last().unwrap().id);
        assert_eq!(shown["token"]["subject"], sub, "{shown}");
        assert_eq!(shown["token"]["issuer"], "https://idp.test");
        assert_eq!(shown["token"]["groups"], json!(["billing"]));
        assert_eq!(shown["events"][0]["rule"], "known-bots-read", "{shown}");
    }

    for (bad, why) in [
        // Another key claiming a known kid: the signature does not verify.
        (token(&stranger, Some("key-a"), "bot-a"), "InvalidSignature"),
        (
            token(&stranger, Some("key-z"), "bot-a"),
            "no key \"key-z\" in the JWKS",
        ),
        (token(&a, None, "bot-a"), "the token has no `kid`"),
    ] {
        let before = f.gw.sessions().len();
        let (out, err) = f.psql(Some(&bad), "SELECT count(*) FROM invoices");
        assert!(out.is_empty(), "{why}: ran {out}");
        assert!(
            err.contains("gatewayd: token rejected") && err.contains(why),
            "{why}: {err}"
        );
        let sessions = f.gw.ended_sessions(before + 1);
        let shown = f.show(sessions.last().unwrap().id);
        assert_eq!(shown["token"], Value::Null, "{shown}");
        assert_eq!(shown["events"], json!([]), "{shown}");
        assert_eq!(shown["end"]["kind"], "agent_error", "{shown}");
    }
}
