//! PostgreSQL through the gateway: a real server from Debian's packages with SCRAM, real
//! clients (psql, tokio-postgres, raw wire) inside a governed cgroup.

use std::process::Command;

use gateway_tests::{
    APP_PASSWORD, APP_ROLE, Gateway, PgServer, billing_target, bin, es256_keys, output_json,
};
use serde_json::Value;

const SCHEMA: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, note text);
INSERT INTO customers VALUES
  (1, 'Ada', 'ada@example.com', '123-45-6789', 'card 4111 1111 1111 1111 on file'),
  (2, 'Bob', 'bob@example.org', '078-05-1120', 'call +14155550123 after 5'),
  (3, 'Cy', NULL, NULL, 'nothing sensitive');
CREATE TABLE invoices (id serial PRIMARY KEY, customer_id int, amount int);
INSERT INTO invoices (customer_id, amount) VALUES (1, 100), (2, 250), (1, 75);
CREATE TABLE payouts (id serial PRIMARY KEY, amount int);
";

/// One rule of each kind the tests exercise.
const RULES: &str = r#"
[[targets.postgres.rules]]
name = "no-unbounded-writes"
action = "deny"
kinds = ["update", "delete"]
without_where = true

[[targets.postgres.rules]]
name = "no-file-access"
action = "deny"
functions = ["pg_read_file", "pg_read_binary_file", "lo_export", "lo_import", "dblink*"]

[[targets.postgres.rules]]
name = "no-copy-program"
action = "deny"
copy_program = true

[[targets.postgres.rules]]
name = "no-ddl"
action = "deny"
kinds = ["drop", "truncate", "alter", "grant", "revoke"]

[[targets.postgres.rules]]
name = "payouts-need-approval"
action = "hold"
writes = ["public.payouts"]
# Nobody approves in these tests (tests/approvals.rs does): a second, then a deny.
timeout_secs = 1

[[targets.postgres.rules]]
name = "customer-pii"
action = "mask"
tables = ["public.customers"]
columns = ["email", "ssn"]
detectors = ["card", "phone", "email"]

[[targets.postgres.rules]]
name = "app"
action = "allow"
kinds = ["select", "insert", "update", "delete", "transaction", "set", "show", "copy", "notify"]
"#;

fn policy(pg: &PgServer) -> String {
    billing_target(pg) + RULES
}

struct Fixture {
    pg: PgServer,
    gw: Gateway,
}

impl Fixture {
    fn start(test: &str) -> Fixture {
        Self::with(test, PgServer::start("127.10.0.5"))
    }

    fn with(test: &str, pg: PgServer) -> Fixture {
        pg.app_sql(SCHEMA);
        let gw = Gateway::start(test, &policy(&pg));
        Fixture { pg, gw }
    }

    /// psql inside the governed cgroup, reading `script` from stdin: (stdout, stderr, ok).
    fn psql(&self, args: &[&str], script: &str) -> (String, String, bool) {
        self.psql_with(args, script, &[])
    }

    fn psql_env(&self, args: &[&str], env: &[(&str, &str)]) -> (String, String, bool) {
        self.psql_with(args, "", env)
    }

    fn psql_with(
        &self,
        args: &[&str],
        script: &str,
        env: &[(&str, &str)],
    ) -> (String, String, bool) {
        let mut cmd = Command::new("psql");
        cmd.envs(env.iter().copied());
        let url = self.pg.agent_url();
        cmd.args([
            url.as_str(),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let mut child = self.gw.cgroup.command(cmd).spawn().unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        )
    }

    fn pg_agent(&self, args: &[&str]) -> Value {
        let mut cmd = Command::new(bin("pg-agent"));
        cmd.args(args);
        output_json(&mut self.gw.cgroup.command(cmd))
    }

    /// The events of the newest ended session.
    fn last_events(&self) -> Vec<Value> {
        let sessions = self.gw.ended_sessions(1);
        let id = sessions.last().unwrap().id;
        let v = gateway_user::admin::client::call(
            &self.gw.socket(),
            &gateway_user::admin::Request::SessionsShow { id },
        )
        .unwrap();
        v["events"].as_array().unwrap().clone()
    }
}

#[test]
fn psql_reads_and_writes_exactly_as_directly() {
    let f = Fixture::start("pg-rw");
    let query = "SELECT id, customer_id, amount FROM invoices ORDER BY id";
    let (out, err, ok) = f.psql(&["-c", query], "");
    assert!(ok, "{err}");
    assert_eq!(out, f.pg.app_sql(query));
    let (_, err, ok) = f.psql(
        &["-f", "-"],
        "INSERT INTO invoices (customer_id, amount) VALUES (2, 9);\n\
         UPDATE invoices SET amount = amount + 1 WHERE customer_id = 1;\n",
    );
    assert!(ok, "{err}");
    assert_eq!(f.pg.app_sql("SELECT sum(amount) FROM invoices"), "436\n");

    let events = f.last_events();
    let seen: Vec<(&str, &str, Option<u64>)> = events
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["verdict"].as_str().unwrap(),
                e["rows"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("insert", "allow", Some(1)), ("update", "allow", Some(2))]
    );
    // Literals stay out of the audit unless the policy keeps them.
    let sql = events[0]["sql"].as_str().unwrap();
    assert!(sql.contains('?') && !sql.contains("9)"), "{sql}");
    assert_eq!(events[0]["rule"], "app");
    assert_eq!(f.gw.status()["audit_events_lost"], 0);
}

#[test]
fn every_rule_kind_refuses_with_42501_and_the_session_stays_usable() {
    let f = Fixture::start("pg-deny");
    let script = "DELETE FROM invoices;
SELECT pg_read_file('/etc/passwd');
COPY invoices TO PROGRAM 'cat';
DROP TABLE invoices;
INSERT INTO payouts (amount) VALUES (1);
SELECT 'still usable';
";
    let (out, err, _) = f.psql(&["-f", "-"], script);
    let name = &f.gw.name;
    for rule in [
        "no-unbounded-writes",
        "no-file-access",
        "no-copy-program",
        "no-ddl",
    ] {
        let want =
            format!("ERROR:  42501: gatewayd: policy {name} denies this statement (rule {rule})");
        assert!(err.contains(&want), "want {want:?} in:\n{err}");
    }
    let held = "no approver decided within 1s (approval 1, rule payouts-need-approval)";
    assert!(err.contains(held), "{err}");
    assert_eq!(out, "still usable\n");
    assert_eq!(f.pg.app_sql("SELECT count(*) FROM invoices"), "3\n");
    assert_eq!(f.pg.app_sql("SELECT count(*) FROM payouts"), "0\n");

    // A statement PostgreSQL's parser cannot read is refused, not guessed at.
    let (_, err, ok) = f.psql(&["-c", "SELEC 1 FROM invoices"], "");
    assert!(
        !ok && err.contains("refuses a statement it cannot parse"),
        "{err}"
    );

    // Several statements in one message are refused whole.
    let (out, err, ok) = f.psql(&["-c", "SELECT 1; DELETE FROM invoices"], "");
    assert!(!ok && out.is_empty() && err.contains("42501"), "{out}{err}");

    // Inside a transaction the refusal aborts it, as PostgreSQL itself would, and the COMMIT
    // becomes a ROLLBACK: the insert before the refusal is gone.
    let (_, err, _) = f.psql(
        &["-f", "-"],
        "BEGIN;\nINSERT INTO invoices (customer_id, amount) VALUES (3, 1);\nDELETE FROM invoices;\nSELECT 1;\nCOMMIT;\n",
    );
    assert!(err.contains("current transaction is aborted"), "{err}");
    assert_eq!(f.pg.app_sql("SELECT count(*) FROM invoices"), "3\n");

    let events = f.last_events();
    let verdicts: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["verdict"].as_str().unwrap(), e["rule"].as_str().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("allow", "app"),
            ("allow", "app"),
            ("deny", "no-unbounded-writes"),
            ("allow", "app"),
            ("allow", "app"),
        ]
    );
    assert_eq!(
        events[3]["error"].as_str().map(|e| e.starts_with("25P02")),
        Some(true)
    );
}

/// The judge reads '...' strings as PostgreSQL does while standard_conforming_strings is on;
/// with it off a backslash would end the two's agreement on where a string ends, and
/// `SELECT 'x\' , ' ; DELETE FROM invoices; --'` would be one harmless SELECT to the gateway
/// and a DELETE to the server. So the agent may not turn it off, by any route (nor change the
/// client encoding, search_path or role, which the gateway pins the same way).
#[test]
fn the_agent_cannot_change_how_postgres_reads_strings() {
    let f = Fixture::start("pg-strings");
    let script = "SET standard_conforming_strings = off;
SELECT set_config('standard_conforming_strings', 'off', false);
SELECT set_config('standard_' || 'conforming_strings', 'off', false);
SELECT * FROM set_config('standard_conforming_strings', 'off', false);
SHOW standard_conforming_strings;
SELECT 'x\\' , ' ; DELETE FROM invoices; --';
";
    let (out, err, _) = f.psql(&["-f", "-"], script);
    let refusal = format!(
        "ERROR:  42501: gatewayd: policy {} refuses changing standard_conforming_strings",
        f.gw.name
    );
    assert_eq!(err.matches(&refusal).count(), 3, "{err}");
    assert!(
        err.contains("refuses changing a setting named by an expression"),
        "{err}"
    );
    assert_eq!(out, "on\nx\\| ; DELETE FROM invoices; --\n");
    assert_eq!(f.pg.app_sql("SELECT count(*) FROM invoices"), "3\n");
    let rules: Vec<String> = f
        .last_events()
        .iter()
        .map(|e| e["rule"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rules[..4], ["pinned-setting"; 4]);

    // Functions that run SQL text would hide it from the judge.
    let (_, err, ok) = f.psql(
        &["-c", "SELECT query_to_xml('SELECT 1', true, false, '')"],
        "",
    );
    assert!(
        !ok && err.contains("refuses running SQL given as text"),
        "{err}"
    );

    // A role configured with it off (or another encoding) still gets the gateway's settings:
    // they are pinned at login, where the client's word outranks the role's.
    f.pg.superuser_sql(&format!(
        "ALTER ROLE {APP_ROLE} SET standard_conforming_strings = off"
    ));
    f.pg.superuser_sql(&format!(
        "ALTER ROLE {APP_ROLE} SET client_encoding = 'SJIS'"
    ));
    let (out, err, ok) = f.psql(
        &["-A", "-t", "-f", "-"],
        "SHOW standard_conforming_strings;
SELECT current_setting('client_encoding');
",
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "on
UTF8
"
    );
    // Whatever the agent asks for at startup, too.
    let (out, err, ok) = f.psql_env(
        &[
            "-A",
            "-t",
            "-c",
            "SELECT current_setting('client_encoding')",
        ],
        &[("PGCLIENTENCODING", "GBK")],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "UTF8
"
    );
    let (_, err, ok) = f.psql(&["-c", "SET client_encoding = 'SJIS'"], "");
    assert!(
        !ok && err.contains("refuses changing client_encoding"),
        "{err}"
    );
    let (_, err, ok) = f.psql(&["-c", "SET search_path = pg_temp, public"], "");
    assert!(!ok && err.contains("refuses changing search_path"), "{err}");
    // Who the session is is its own kind (`role`), which this policy does not allow; and no
    // set_config may do it either.
    let (_, err, ok) = f.psql(&["-c", "SET ROLE postgres"], "");
    assert!(
        !ok && err.contains("denies this statement (rule default)"),
        "{err}"
    );
    let (_, err, ok) = f.psql(&["-c", "SELECT set_config('role', 'postgres', false)"], "");
    assert!(!ok && err.contains("refuses changing role"), "{err}");
    // Setting a pinned setting to its pinned value changes nothing and is let through.
    let (out, err, ok) = f.psql(
        &["-f", "-"],
        "SET standard_conforming_strings = on;
SET client_encoding = 'UTF8';
SELECT 'same';
",
    );
    assert!(ok && out == "same\n", "{err}");
}

#[test]
fn masking_hides_values_by_column_and_by_detector_in_text_and_binary() {
    let f = Fixture::start("pg-mask");
    let (out, err, ok) = f.psql(
        &[
            "-c",
            "SELECT id, name, email, ssn, note FROM customers ORDER BY id",
        ],
        "",
    );
    assert!(ok, "{err}");
    for secret in [
        "ada@example.com",
        "bob@example.org",
        "123-45-6789",
        "078-05-1120",
        "4111 1111 1111 1111",
        "+14155550123",
    ] {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("1|Ada|") && lines[2] == "3|Cy|||nothing sensitive",
        "{out}"
    );
    assert!(
        lines[1].contains("call ") && lines[1].contains(" after 5"),
        "the rest of the text stays: {out}"
    );
    let events = f.last_events();
    assert_eq!(events[0]["verdict"], "mask");
    assert!(events[0]["masked"].as_u64().unwrap() >= 6, "{events:?}");

    // tokio-postgres asks for binary results: masked values arrive as NULL.
    let out = f.pg_agent(&["extended", &f.pg.agent_url()]);
    assert_eq!(out["rows"][0]["name"], "Ada");
    assert_eq!(out["rows"][0]["email"], Value::Null);
    assert_eq!(
        out["rows"][0]["note"],
        Value::Null,
        "a card number in free text: {out}"
    );
    assert_eq!(out["rows"][1]["email"], Value::Null);
}

#[test]
fn extended_protocol_prepared_statements_and_pipelining() {
    let f = Fixture::start("pg-ext");
    let out = f.pg_agent(&["extended", &f.pg.agent_url()]);
    assert_eq!(out["again"], 1, "{out}");
    assert_eq!(out["pipelined"], serde_json::json!([1, 3, 3]), "{out}");
    assert_eq!(out["denied"]["code"], "42501", "{out}");
    assert_eq!(out["pipeline_refusal"]["before"], 10, "{out}");
    assert_eq!(out["pipeline_refusal"]["refused"]["code"], "42501", "{out}");
    assert_eq!(out["pipeline_refusal"]["after"], 20, "{out}");
    assert_eq!(out["insert"], 1, "{out}");
    assert_eq!(out["usable_after"], 42, "{out}");
    assert_eq!(f.pg.app_sql("SELECT count(*) FROM invoices"), "4\n");
}

#[test]
fn the_agent_never_receives_the_upstream_role_or_password() {
    let f = Fixture::start("pg-leak");
    let out = f.pg_agent(&[
        "wire",
        &f.pg.addr.to_string(),
        "SELECT 1",
        "SHOW application_name",
        "SELECT session_user = current_user",
    ]);
    let received = out["received"].as_str().unwrap();
    assert!(
        received.contains("ReadyForQuery") || received.contains('Z'),
        "{received}"
    );
    assert!(
        !received.contains(APP_PASSWORD),
        "password leaked: {received}"
    );
    assert!(!received.contains(APP_ROLE), "role leaked: {received}");
    assert!(
        received.contains("session_authorization\0agent\0"),
        "{received:?}"
    );
}

#[test]
fn cancel_reaches_the_agents_own_query() {
    let f = Fixture::start("pg-cancel");
    let out = f.pg_agent(&["cancel", &f.pg.agent_url()]);
    assert_eq!(out["cancel_sent"], true, "{out}");
    assert_eq!(out["code"], "57014", "query_canceled: {out}");
    assert!(out["elapsed_ms"].as_u64().unwrap() < 10_000, "{out}");
    assert_eq!(out["usable_after"], true);
}

#[test]
fn malformed_messages_end_the_session_with_an_error_and_others_go_on() {
    let f = Fixture::start("pg-malformed");
    let out = f.pg_agent(&["malformed", &f.pg.addr.to_string()]);
    assert_eq!(out["error_tag"], "E", "{out}");
    assert!(out["reply"].as_str().unwrap().contains("gatewayd"), "{out}");
    assert_eq!(out["closed"], true);
    let (out, err, ok) = f.psql(&["-c", "SELECT 'next agent'"], "");
    assert!(ok && out == "next agent\n", "{err}");
}

#[test]
fn an_upstream_that_is_down_gives_a_clean_error() {
    let mut f = Fixture::start("pg-down");
    f.pg.stop();
    let (_, err, ok) = f.psql(&["-c", "SELECT 1"], "");
    assert!(!ok);
    assert!(
        err.contains("gatewayd: upstream billing-db is unreachable"),
        "{err}"
    );
    let s = f.gw.ended_sessions(1);
    assert!(matches!(
        s[0].end,
        Some(gateway_user::audit::SessionEnd::UpstreamUnreachable(_))
    ));
}

#[test]
fn tls_upstream_is_verified_against_the_configured_ca() {
    // The server refuses plain TCP: the rows can only have come over TLS.
    let f = Fixture::with("pg-tls", PgServer::start_tls("127.10.0.5"));
    let (out, err, ok) = f.psql(
        &[
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "t\n");

    // A CA that did not sign the server's certificate: refused, and the agent is told so.
    let other = tempfile::tempdir().unwrap();
    let ca = gateway_tests::test_ca(other.path(), "127.10.0.5");
    let body = policy(&f.pg).replace(
        &f.pg.cert.as_ref().unwrap().display().to_string(),
        &ca.display().to_string(),
    );
    f.gw.write_policy(&body);
    f.gw.signal(nix::sys::signal::Signal::SIGHUP);
    // Reloads are asynchronous: poll until the new CA is in force (or give up).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let err = loop {
        let (_, err, ok) = f.psql(&["-c", "SELECT 1"], "");
        if !ok || std::time::Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        err.contains("gatewayd: upstream TLS: invalid peer certificate"),
        "{err}"
    );
}

fn token(key: &[u8], aud: &str, sub: &str, groups: &[&str], exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": "https://idp.test", "aud": aud, "sub": sub, "groups": groups, "exp": now + exp_in,
    });
    gateway_tests::es256_token(key, &claims)
}

#[test]
fn agent_jwts_are_verified_audited_and_usable_in_rules() {
    let pg = PgServer::start("127.10.0.5");
    pg.app_sql(SCHEMA);
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = es256_keys(keys.path());
    let body = billing_target(&pg)
        + &format!(
            r#"
[targets.postgres.agent_jwt]
issuer = "https://idp.test"
audience = "billing-db"
key_file = "{public}"
algorithms = ["ES256"]

[[targets.postgres.rules]]
name = "analysts-read"
action = "allow"
kinds = ["select"]
groups = ["analysts"]
"#,
            public = public.display(),
        );
    let f = Fixture {
        gw: Gateway::start("pg-jwt", &body),
        pg,
    };
    let psql_with = |password: &str, sql: &str| {
        let mut cmd = Command::new("psql");
        cmd.args([
            f.pg.agent_url().as_str(),
            "-X",
            "-A",
            "-t",
            "-w",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password);
        let out = f.gw.cgroup.command(cmd).output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let good = token(&private, "billing-db", "bot-7", &["analysts"], 300);
    let (out, err) = psql_with(&good, "SELECT count(*) FROM invoices");
    assert_eq!(out, "3\n", "{err}");
    let sessions = f.gw.ended_sessions(1);
    let id = sessions
        .last()
        .unwrap()
        .token
        .as_ref()
        .expect("token audited");
    assert_eq!(
        (id.subject.as_str(), id.groups.as_slice()),
        ("bot-7", &["analysts".to_string()][..])
    );

    // Verified, but not in a group any rule allows: the default refuses.
    let other = token(&private, "billing-db", "bot-8", &["dev"], 300);
    let (_, err) = psql_with(&other, "SELECT count(*) FROM invoices");
    assert!(
        err.contains("42501") && err.contains("(rule default)"),
        "{err}"
    );

    for (bad, why) in [
        (
            token(&private, "other-db", "bot-7", &["analysts"], 300),
            "InvalidAudience",
        ),
        (
            token(&private, "billing-db", "bot-7", &["analysts"], -600),
            "ExpiredSignature",
        ),
        ("not.a.jwt".to_string(), "token rejected"),
    ] {
        let (out, err) = psql_with(&bad, "SELECT 1");
        assert!(
            out.is_empty() && err.contains("gatewayd: token rejected") && err.contains(why),
            "{why}: {err}"
        );
    }
}

#[test]
fn copy_both_ways_notices_and_notifications_pass_through() {
    let f = Fixture::start("pg-copy");
    f.pg.app_sql(
        "CREATE FUNCTION hello() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'hi there'; RETURN 1; END $$",
    );
    let (out, err, ok) = f.psql(&["-c", "COPY invoices TO STDOUT"], "");
    assert!(ok, "{err}");
    assert_eq!(out, "1\t1\t100\n2\t2\t250\n3\t1\t75\n");

    let script = "COPY invoices (customer_id, amount) FROM STDIN;\n3\t11\n3\t12\n\\.\nSELECT hello();\nLISTEN ch;\nSELECT pg_notify('ch', 'payload-1');\n";
    let (out, err, ok) = f.psql(&["-f", "-"], script);
    assert!(ok, "{err}");
    assert_eq!(
        f.pg.app_sql("SELECT sum(amount) FROM invoices WHERE customer_id = 3"),
        "23\n"
    );
    assert!(err.contains("NOTICE:  00000: hi there"), "{err}");
    assert!(
        out.contains("Asynchronous notification \"ch\" with payload \"payload-1\""),
        "{out}"
    );
    let copy = f
        .last_events()
        .into_iter()
        .find(|e| e["kind"] == "copy")
        .unwrap();
    assert_eq!(
        (copy["verdict"].as_str(), copy["rows"].as_u64()),
        (Some("allow"), Some(2))
    );
}

#[test]
fn pgbench_runs_as_a_workload_through_the_gateway() {
    let f = Fixture::start("pg-bench");
    let pgbench = |url: &str, args: &[&str]| {
        let mut cmd = Command::new("pgbench");
        cmd.args(args).arg(url);
        cmd
    };
    // Initialised directly: creating tables is not something the test policy allows.
    let out = pgbench(
        &f.pg.url(APP_ROLE, APP_PASSWORD, "billing"),
        &["-i", "-q", "-s", "1"],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for mode in ["simple", "extended"] {
        let cmd = pgbench(
            &f.pg.agent_url(),
            &["-n", "-c", "4", "-j", "2", "-T", "3", "-M", mode],
        );
        let out = f.gw.cgroup.command(cmd).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mode}: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("number of failed transactions: 0"),
            "{mode}: {text}"
        );
        let processed: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next()?.parse().ok())
            .unwrap();
        assert!(processed > 50, "{mode}: only {processed} transactions");
    }
    let sessions = f.gw.ended_sessions(8);
    assert!(sessions.iter().all(|s| s.rule == "targets.billing-db"));
}

/// One agent's worst statements (deep 25,000-term chains, one past the size bound) cost the
/// other sessions little: they are parsed on the judge pool, not on the workers every session
/// shares, and refused without taking the daemon down.
#[test]
fn hostile_statements_cost_other_sessions_little() {
    let f = Fixture::start("pg-hostile");
    let url = f.pg.agent_url();
    let healthy = {
        let mut cmd = Command::new(bin("pg-agent"));
        cmd.args(["latency", &url, "8"])
            .stdout(std::process::Stdio::piped());
        f.gw.cgroup.command(cmd).spawn().unwrap()
    };
    let mut cmd = Command::new(bin("pg-agent"));
    cmd.args(["hostile", &url, "12"]);
    let hostile = output_json(&mut f.gw.cgroup.command(cmd));
    let latency: Value =
        serde_json::from_slice(&healthy.wait_with_output().unwrap().stdout).unwrap();
    eprintln!("healthy session beside a hostile one: {latency}; hostile answers: {hostile}");
    // Every hostile statement was answered (refused or run), none crashed anything.
    let codes = hostile["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 12, "{hostile}");
    assert!(codes.iter().all(|c| c != "none"), "{hostile}");
    assert_eq!(codes[3], "42501", "over the size bound: {hostile}");
    assert!(latency["count"].as_u64().unwrap() > 100, "{latency}");
    // A few milliseconds, with room for a loaded 2-core machine running a debug build.
    assert!(latency["p99_ms"].as_f64().unwrap() < 25.0, "{latency}");
    let (out, err, ok) = f.psql(&["-c", "SELECT 'alive'"], "");
    assert!(ok && out == "alive\n", "{err}");
}

/// Large messages share one memory budget: of ten agents that each start a 15 MiB Bind, only
/// as many as fit in the budget are read (the others hear 53200 at the header), the daemon's
/// memory stays near the budget, a healthy session keeps its latency, and a row from the
/// upstream wider than the budget ends only its own session.
#[test]
fn large_messages_share_one_memory_budget() {
    let pg = PgServer::start("127.10.0.5");
    pg.app_sql(SCHEMA);
    let budget = 64 << 20;
    let config = format!("memory_budget_bytes = {budget}\n");
    let f = Fixture {
        gw: Gateway::start_with_config("pg-memory", &policy(&pg), &config),
        pg,
    };
    let url = f.pg.agent_url();
    let healthy = {
        let mut cmd = Command::new(bin("pg-agent"));
        cmd.args(["latency", &url, "6"])
            .stdout(std::process::Stdio::piped());
        f.gw.cgroup.command(cmd).spawn().unwrap()
    };
    let size = (15 << 20).to_string();
    let addr = f.pg.addr.to_string();
    let partial = {
        let mut cmd = Command::new(bin("pg-agent"));
        cmd.args(["partial", &addr, "10", &size, "3"])
            .stdout(std::process::Stdio::piped());
        f.gw.cgroup.command(cmd).spawn().unwrap()
    };
    // While the partial messages are held: the budget is all the daemon took for them.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let status = f.gw.status();
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", f.gw.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    let partial: Value =
        serde_json::from_slice(&partial.wait_with_output().unwrap().stdout).unwrap();
    let latency: Value =
        serde_json::from_slice(&healthy.wait_with_output().unwrap().stdout).unwrap();
    eprintln!(
        "memory in use {} of {}, daemon RSS {rss_kib} KiB; healthy session: {latency}",
        status["memory_in_use"], status["memory_budget"]
    );
    let sessions = partial["sessions"].as_array().unwrap();
    let refused = sessions
        .iter()
        .filter(|s| s["codes"].as_array().unwrap().iter().any(|c| c == "53200"))
        .count();
    // 4 x 15 MiB fit in 64 MiB; the other 6 are refused on their header.
    assert_eq!(refused, 6, "{partial}");
    assert!(
        sessions
            .iter()
            .filter(|s| s["body"] == true)
            .all(|s| s["codes"].as_array().unwrap().is_empty()),
        "{partial}"
    );
    assert!(
        status["memory_in_use"].as_u64().unwrap() <= budget,
        "{status}"
    );
    assert!(
        status["memory_in_use"].as_u64().unwrap() >= 4 * (15 << 20),
        "{status}"
    );
    // The budget, what four half-sent messages hold, and the daemon's own few tens of MiB.
    assert!(rss_kib < 256 * 1024, "daemon RSS {rss_kib} KiB");
    assert!(latency["count"].as_u64().unwrap() > 100, "{latency}");
    assert!(latency["p99_ms"].as_f64().unwrap() < 25.0, "{latency}");
    // All given back once those sessions are gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.gw.status()["memory_in_use"].as_u64().unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "leases kept");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A large message that stops arriving gives its share back: the session ends (08P01)
    // within the stall bound, not when the agent chooses to leave.
    let out = f.pg_agent(&["partial", &addr, "1", &size, "14"]);
    let codes = &out["sessions"][0]["codes"];
    assert_eq!(out["sessions"][0]["body"], true, "{out}");
    assert!(
        codes.as_array().unwrap().iter().any(|c| c == "08P01"),
        "{out}"
    );
    assert_eq!(f.gw.status()["memory_in_use"], 0);

    // A row the upstream builds wider than the budget: that session ends, others go on.
    let (_, err, ok) = f.psql(&["-c", "SELECT repeat('x', 80000000)"], "");
    assert!(!ok && err.contains("memory budget"), "{err}");
    let (out, err, ok) = f.psql(&["-c", "SELECT 'alive'"], "");
    assert!(ok && out == "alive\n", "{err}");
}

/// A target's statement_timeout is pinned upstream: `pg_sleep` and runaway queries end with
/// PostgreSQL's own 57014, and the agent cannot lift it.
#[test]
fn statement_timeout_is_pinned_and_ends_long_statements() {
    let pg = PgServer::start("127.10.0.5");
    pg.app_sql(SCHEMA);
    let body = billing_target(&pg) + "statement_timeout = \"1s\"\n" + RULES;
    let f = Fixture {
        gw: Gateway::start("pg-timeout", &body),
        pg,
    };
    let start = std::time::Instant::now();
    let (_, err, ok) = f.psql(&["-c", "SELECT pg_sleep(5)"], "");
    assert!(!ok && err.contains("57014"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(4));
    for lift in [
        "SET statement_timeout = 0",
        "SELECT set_config('statement_timeout', '0', false)",
    ] {
        let (_, err, ok) = f.psql(&["-c", lift], "");
        assert!(
            !ok && err.contains("refuses changing statement_timeout"),
            "{lift}: {err}"
        );
    }
}

/// Bytes that are not UTF-8 in a Query get PostgreSQL's own answer (22021) and the session goes
/// on, as it would directly.
#[test]
fn a_query_that_is_not_utf8_is_answered_and_the_session_goes_on() {
    let f = Fixture::start("pg-not-utf8");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    std::fs::write(
        &script,
        serde_json::json!({
            "addr": f.pg.addr.to_string(),
            "watch": "never-there",
            "timeout_ms": 5000,
            "sessions": [{"name": "s", "params": [], "cases": [
                {"id": 1, "hex": hex(b"SELECT '\xff\xfe'")},
                {"id": 2, "hex": hex(b"SELECT 'after'")},
            ]}],
        })
        .to_string(),
    )
    .unwrap();
    // The agent is unprivileged enough to read its script.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(bin("pg-agent"));
    cmd.arg("script").arg(&script);
    let out = output_json(&mut f.gw.cgroup.command(cmd));
    let cases: Vec<&Value> = out["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["role"] == "case")
        .collect();
    assert_eq!(cases.len(), 2, "{out}");
    assert!(cases[0]["errors"].to_string().contains("22021"), "{out}");
    assert_eq!(cases[1]["outcome"], "answered", "{out}");
    assert_eq!(cases[0]["conn"], cases[1]["conn"], "one session: {out}");
}

/// Agents that connect and say nothing hold no server backend: the upstream connection is
/// opened only once the agent's startup is complete (and each handshake step is bounded).
#[test]
fn silent_agents_hold_no_upstream_connection() {
    let f = Fixture::start("pg-silent");
    let backends = || {
        // Every client backend, authenticated or not: a connection that has not logged in
        // has no user yet, and it still holds a backend.
        f.pg.superuser_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
    };
    let before = backends();
    let code = format!(
        "import socket, time\nconns = [socket.create_connection(('{}', {})) for _ in range(30)]\nprint('open', flush=True)\ntime.sleep(4)",
        f.pg.addr.ip(),
        f.pg.addr.port()
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &code]).stdout(std::process::Stdio::piped());
    let mut silent = f.gw.cgroup.command(cmd).spawn().unwrap();
    let mut line = String::new();
    use std::io::BufRead as _;
    std::io::BufReader::new(silent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(backends(), before, "30 silent agents opened backends");
    // A real agent beside them is served.
    let (out, err, ok) = f.psql(&["-c", "SELECT 'served'"], "");
    assert!(ok && out == "served\n", "{err}");
    silent.kill().unwrap();
    silent.wait().unwrap();
}
