//! Human approval through the real daemon: psql inside a governed cgroup, running as an
//! unprivileged uid, meets a `hold` rule and waits; gatewayctl approves or denies it from
//! another uid; watchers and a webhook receiver see the request and the decision.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use gateway_tests::{Gateway, PgServer, billing_target, bin, output_json};
use serde_json::Value;

/// The agent's uid: nobody. It is also an approver in the config, and still may not approve
/// its own requests.
const AGENT_UID: u32 = 65534;

const SCHEMA: &str = "
CREATE TABLE payouts (id serial PRIMARY KEY, amount int);
CREATE TABLE ledger (id int PRIMARY KEY);
INSERT INTO ledger VALUES (1), (2);
";

const RULES: &str = r#"
[[targets.postgres.rules]]
name = "payouts-need-approval"
action = "hold"
writes = ["public.payouts"]
timeout_secs = 30

[[targets.postgres.rules]]
name = "ledger-quick-hold"
action = "hold"
tables = ["public.ledger"]
kinds = ["delete"]
timeout_secs = 2

[[targets.postgres.rules]]
name = "ledger-inserts-once-a-session"
action = "hold"
tables = ["public.ledger"]
kinds = ["insert"]
timeout_secs = 30
approval = "session"

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
    fn start(test: &str, webhook_port: u16) -> Fixture {
        let pg = PgServer::start("127.10.0.6");
        pg.app_sql(SCHEMA);
        let config = format!(
            "approvers = {{ users = [\"nobody\"] }}\n\
             auditors = {{ users = [\"daemon\"] }}\n\
             webhook = {{ url = \"http://127.0.0.1:{webhook_port}/hooks/gatewayd\", max_attempts = 3 }}\n"
        );
        let gw = Gateway::start_with_config(test, &(billing_target(&pg) + RULES), &config);
        Fixture { pg, gw }
    }

    /// psql as the agent uid inside the governed cgroup, running `sql`.
    fn agent(&self, sql: &str) -> Child {
        self.agent_runs(&[sql])
    }

    /// psql running each of `sqls` as its own message, in one session.
    fn agent_runs(&self, sqls: &[&str]) -> Child {
        let mut cmd = Command::new("psql");
        cmd.args([
            &self.pg.agent_url(),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(sqls.iter().flat_map(|sql| ["-c", sql]))
        .uid(AGENT_UID)
        .gid(AGENT_UID)
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        self.gw.cgroup.command(cmd).spawn().expect("psql")
    }

    /// gatewayctl as `uid` against the running daemon.
    fn ctl(&self, uid: u32, args: &[&str]) -> Output {
        Command::new(bin("gatewayctl"))
            .arg("--socket")
            .arg(self.gw.socket())
            .args(args)
            .uid(uid)
            .output()
            .expect("gatewayctl")
    }

    fn pending(&self) -> Vec<Value> {
        let v = output_json(
            Command::new(bin("gatewayctl"))
                .arg("--socket")
                .arg(self.gw.socket())
                .args(["--json", "approvals", "list"]),
        );
        v.as_array().unwrap().clone()
    }

    /// Waits until exactly `n` requests are pending and returns them.
    fn wait_pending(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let p = self.pending();
            if p.len() == n {
                return p;
            }
            assert!(Instant::now() < deadline, "pending {p:?}, want {n}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn count(&self, table: &str) -> String {
        self.pg.app_sql(&format!("SELECT count(*) FROM {table}"))
    }

    /// The statement event that waited for approval `id`, from whichever session holds it.
    fn approval_event(&self, id: &Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for s in self.gw.sessions().iter().rev() {
                let v = output_json(
                    Command::new(bin("gatewayctl"))
                        .arg("--socket")
                        .arg(self.gw.socket())
                        .args(["--json", "sessions", "show", &s.id.to_string()]),
                );
                if let Some(e) = v["events"]
                    .as_array()
                    .and_then(|es| es.iter().find(|e| &e["approval"]["id"] == id))
                {
                    return e.clone();
                }
            }
            assert!(Instant::now() < deadline, "no event for approval {id}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The statement events of the newest ended session.
    fn last_events(&self) -> Vec<Value> {
        let id = self.gw.ended_sessions(1).last().unwrap().id;
        let v = output_json(
            Command::new(bin("gatewayctl"))
                .arg("--socket")
                .arg(self.gw.socket())
                .args(["--json", "sessions", "show", &id.to_string()]),
        );
        v["events"].as_array().unwrap().clone()
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A local webhook receiver: every POSTed JSON body, answered 200.
fn receiver() -> (u16, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn);
            let mut len = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice(&body)
            {
                sink.lock().unwrap().push(v);
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (port, got)
}

/// Waits until `got` holds an event of kind `event` for approval `id`.
fn wait_event(got: &Mutex<Vec<Value>>, event: &str, id: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = got
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["event"] == event && &v["request"]["id"] == id)
        {
            return v.clone();
        }
        assert!(Instant::now() < deadline, "no {event} for {id} in {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_held_statement_waits_for_an_approver_and_then_runs() {
    let (port, hooks) = receiver();
    let f = Fixture::start("appr-ok", port);
    // A live view, as an approver keeps it open.
    let mut watch = Command::new(bin("gatewayctl"))
        .arg("--socket")
        .arg(f.gw.socket())
        .args(["--json", "approvals", "watch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let watched = Arc::new(Mutex::new(Vec::new()));
    let sink = watched.clone();
    let lines = BufReader::new(watch.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                sink.lock().unwrap().push(v);
            }
        }
    });

    let sql = "INSERT INTO payouts (amount) VALUES (42) RETURNING amount";
    let agent = f.agent(sql);
    let pending = f.wait_pending(1);
    let r = &pending[0];
    assert_eq!(r["command"], sql);
    assert_eq!(r["rule"], "payouts-need-approval");
    assert_eq!(r["target"], "billing-db");
    assert_eq!(r["agent"]["uid"], AGENT_UID);
    assert_eq!(r["agent"]["cgroup"], f.gw.cgroup.rel());
    let id = r["id"].clone();
    // An auditor (uid 1, `daemon`) sees it with the literals hidden.
    let audited = f.ctl(1, &["--json", "approvals", "list"]);
    let (stdout, stderr) = text(&audited);
    assert!(audited.status.success(), "{stderr}");
    let audited: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        audited[0]["command"],
        "INSERT INTO payouts (amount) VALUES (?) RETURNING amount"
    );
    // Nothing reaches the upstream while it waits.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.count("payouts"), "0\n");

    // The agent's own uid is an approver, and still cannot approve its own request.
    let own = f.ctl(AGENT_UID, &["approve", &id.to_string()]);
    let (_, err) = text(&own);
    assert!(!own.status.success() && err.contains("own uid"), "{err}");
    assert_eq!(f.pending().len(), 1);

    let ok = f.ctl(0, &["approve", &id.to_string(), "--note", "ticket OPS-7"]);
    assert!(ok.status.success(), "{:?}", text(&ok));
    let out = agent.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "42\n");
    assert_eq!(f.count("payouts"), "1\n");

    let events = f.last_events();
    let approval = &events[0]["approval"];
    assert_eq!(events[0]["verdict"], "hold");
    assert_eq!(approval["outcome"], "approved");
    assert_eq!(approval["by"], "root");
    assert_eq!(approval["by_uid"], 0);
    assert_eq!(approval["note"], "ticket OPS-7");
    assert_eq!(events[0]["rows"], 1);

    // The approver's live view has the exact command; the webhook, which leaves the host, the
    // audit's text with literals hidden, as does an auditor's listing.
    let redacted = "INSERT INTO payouts (amount) VALUES (?) RETURNING amount";
    for (got, command) in [(&hooks, redacted), (&watched, sql)] {
        assert_eq!(
            wait_event(got, "pending", &id)["request"]["command"],
            command
        );
        let decided = wait_event(got, "decided", &id);
        assert_eq!(decided["decision"]["outcome"], "approved");
        assert_eq!(decided["decision"]["by"]["user"], "root");
    }
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn denied_and_unanswered_holds_refuse_with_the_reason() {
    // The webhook points at a port nobody listens on: deliveries fail and are retried, and
    // no session waits for them.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let f = Fixture::start("appr-deny", port);

    let agent = f.agent("INSERT INTO payouts (amount) VALUES (7)");
    let id = f.wait_pending(1)[0]["id"].to_string();
    let asked = Instant::now();
    let denied = f.ctl(0, &["deny", &id, "--reason", "outside the change window"]);
    assert!(denied.status.success(), "{:?}", text(&denied));
    let out = agent.wait_with_output().unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "a dead webhook held up the deny"
    );
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "42501: gatewayd: root denied this statement (approval {id}, rule payouts-need-approval): outside the change window"
        )),
        "{err}"
    );
    assert_eq!(f.count("payouts"), "0\n");
    assert_eq!(f.last_events()[0]["approval"]["outcome"], "denied");

    // Nobody answers: after the rule's 2 s the hold is a deny.
    let started = Instant::now();
    let out = f
        .agent("DELETE FROM ledger WHERE id = 1")
        .wait_with_output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("no approver decided within 2s") && err.contains("ledger-quick-hold"),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(f.count("ledger"), "2\n");
    assert_eq!(f.last_events()[0]["approval"]["outcome"], "expired");
    assert!(f.gw.log().contains("webhook delivery"), "{}", f.gw.log());
}

#[test]
fn an_agent_that_leaves_withdraws_its_request_and_strangers_see_nothing() {
    let (port, hooks) = receiver();
    let f = Fixture::start("appr-leave", port);
    let mut agent = f.agent("INSERT INTO payouts (amount) VALUES (9)");
    let id = f.wait_pending(1)[0]["id"].clone();

    // A uid that is neither approver nor auditor may not even look.
    let stranger = f.ctl(4242, &["approvals", "list"]);
    let (_, err) = text(&stranger);
    assert!(!stranger.status.success() && err.contains("403"), "{err}");

    // psql's Ctrl-C: a CancelRequest withdraws the held statement, answered as PostgreSQL
    // answers a cancelled one.
    let cancelled = f.agent("INSERT INTO payouts (amount) VALUES (10)");
    let pending = f.wait_pending(2);
    let cancelled_id = pending[1]["id"].clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cancelled.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = cancelled.wait_with_output().unwrap();
    let (_, err) = text(&out);
    assert!(
        err.contains("57014: canceling statement due to user request"),
        "{err}"
    );
    let decided = wait_event(&hooks, "decided", &cancelled_id);
    assert_eq!(decided["decision"]["outcome"], "withdrawn");
    assert_eq!(f.pending().len(), 1);

    agent.kill().unwrap();
    agent.wait().unwrap();
    f.wait_pending(0);
    let withdrawn = wait_event(&hooks, "decided", &id);
    assert_eq!(withdrawn["decision"]["outcome"], "withdrawn");
    let event = f.approval_event(&id);
    assert_eq!(event["approval"]["outcome"], "withdrawn");
    assert!(
        event["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("withdrawn")),
        "{event:?}"
    );
    let event = f.approval_event(&cancelled_id);
    assert_eq!(event["approval"]["note"], "cancelled by the agent");
    assert_eq!(f.count("payouts"), "0\n");
    // Approving what is gone says so.
    let late = f.ctl(0, &["approve", &id.to_string()]);
    let (_, err) = text(&late);
    assert!(
        !late.status.success() && err.contains("no pending approval"),
        "{err}"
    );
}

#[test]
fn a_session_scoped_approval_covers_the_same_statement_again_in_that_session_only() {
    let (port, hooks) = receiver();
    let f = Fixture::start("appr-scope", port);
    let sql = "INSERT INTO ledger SELECT max(id) + 1 FROM ledger";
    let agent = f.agent_runs(&[sql, sql, "SELECT count(*) FROM ledger"]);
    let id = f.wait_pending(1)[0]["id"].clone();
    let ok = f.ctl(0, &["approve", &id.to_string()]);
    assert!(ok.status.success(), "{:?}", text(&ok));
    let out = agent.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "4\n", "both inserts ran");
    let events = f.last_events();
    assert_eq!(events[0]["approval"]["outcome"], "approved");
    assert_eq!(events[1]["approval"]["covered_by"], id, "{events:?}");
    assert_eq!(
        hooks
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "pending")
            .count(),
        1,
        "the second insert asked nobody"
    );
    // Another session asks again.
    let again = f.agent(sql);
    f.wait_pending(1);
    let denied = f.ctl(
        0,
        &[
            "deny",
            &f.pending()[0]["id"].to_string(),
            "--reason",
            "enough",
        ],
    );
    assert!(denied.status.success());
    assert!(!again.wait_with_output().unwrap().status.success());
    assert_eq!(f.count("ledger"), "4\n");
}

/// The extended protocol: a held prepared statement is parsed and bound as usual and waits at
/// each Execute, where the approver sees the bound values; one approval is one execution.
#[test]
fn a_held_prepared_statement_waits_at_each_execute_with_its_parameters() {
    let (port, _) = receiver();
    let f = Fixture::start("appr-exec", port);
    let sql = "INSERT INTO payouts (amount) VALUES ($1::text::int)";
    let mut cmd = Command::new(bin("pg-agent"));
    cmd.args(["execute", &f.pg.agent_url(), sql, "42", "43"])
        .uid(AGENT_UID)
        .stdout(Stdio::piped());
    let agent = f.gw.cgroup.command(cmd).spawn().unwrap();
    let first = f.wait_pending(1);
    assert_eq!(
        first[0]["command"],
        format!("{sql}\n-- parameters: $1 = '42' (binary)")
    );
    assert_eq!(f.count("payouts"), "0\n");
    let ok = f.ctl(0, &["approve", &first[0]["id"].to_string()]);
    assert!(ok.status.success(), "{:?}", text(&ok));
    // The approval was for one execution: the second asks again.
    let second = loop {
        let p = f.pending();
        if p.len() == 1 && p[0]["id"] != first[0]["id"] {
            break p;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        second[0]["command"]
            .as_str()
            .unwrap()
            .ends_with("$1 = '43' (binary)")
    );
    let no = f.ctl(
        0,
        &[
            "deny",
            &second[0]["id"].to_string(),
            "--reason",
            "one is enough",
        ],
    );
    assert!(no.status.success(), "{:?}", text(&no));
    let out: Value = serde_json::from_slice(&agent.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out["runs"][0]["rows"], 1, "{out}");
    assert_eq!(out["runs"][1]["error"]["code"], "42501", "{out}");
    assert!(
        out["runs"][1]["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("one is enough"),
        "{out}"
    );
    assert_eq!(f.pg.app_sql("SELECT amount FROM payouts"), "42\n");
}
