//! `durability = "before-forward"`: a statement is on disk before the upstream sees it, so a
//! kill -9 of the daemon in the middle of a stream of writes loses none that ran, and the next
//! start seals the session the kill left open.

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{Gateway, PgServer, billing_target, bin, output_json};
use gateway_user::admin::{Request, client};

const RULES: &str = r#"
[[targets.postgres.rules]]
name = "app"
action = "allow"
kinds = ["insert", "select"]
"#;

#[test]
fn kill_9_never_loses_a_statement_the_upstream_received() {
    let pg = PgServer::start("127.10.0.8");
    pg.app_sql("CREATE TABLE marks (v int PRIMARY KEY);");
    // Literals kept in the audit, so each row can be matched to its statement's event.
    let target = billing_target(&pg).replace(
        "[targets.postgres]\n",
        "[targets.postgres]\ndurability = \"before-forward\"\naudit_literals = true\n",
    );
    let mut gw = Gateway::start("durable", &(target + RULES));

    let script: String = (1..=20_000)
        .map(|v| format!("INSERT INTO marks VALUES ({v});\n"))
        .collect();
    let mut cmd = Command::new("psql");
    cmd.args([&pg.agent_url(), "-X", "-q", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut agent = gw.cgroup.command(cmd).spawn().unwrap();
    let mut stdin = agent.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        let _ = stdin.write_all(script.as_bytes());
    });
    // Kill the daemon while the writes stream through it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let count = || -> u64 {
        pg.app_sql("SELECT count(*) FROM marks")
            .trim()
            .parse()
            .unwrap()
    };
    while count() < 200 {
        assert!(Instant::now() < deadline, "the inserts never got going");
        std::thread::sleep(Duration::from_millis(20));
    }
    gw.kill9();
    let out = agent.wait_with_output().unwrap();
    let _ = writer.join();
    assert!(
        !out.status.success(),
        "psql finished all 20000 inserts before the kill; nothing was tested"
    );

    let ran: BTreeSet<u64> = pg
        .app_sql("SELECT v FROM marks ORDER BY v")
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(ran.len() >= 200, "{}", ran.len());

    // The store as the killed daemon left it, read directly.
    let sessions = output_json(
        Command::new(bin("gatewayctl"))
            .arg("--store")
            .arg(gw.store())
            .args(["--json", "sessions", "list"]),
    );
    let id = sessions.as_array().unwrap().last().unwrap()["id"].to_string();
    let show = output_json(
        Command::new(bin("gatewayctl"))
            .arg("--store")
            .arg(gw.store())
            .args(["--json", "sessions", "show", &id]),
    );
    let sent: BTreeSet<u64> = show["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "query:sent")
        .filter_map(|e| {
            e["sql"]
                .as_str()?
                .strip_prefix("INSERT INTO marks VALUES (")?
                .strip_suffix(')')?
                .parse()
                .ok()
        })
        .collect();
    let lost: Vec<_> = ran.difference(&sent).collect();
    assert!(
        lost.is_empty(),
        "{} statements ran upstream without a durable audit event, first {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // The next start seals the session the kill left open, and verify names it.
    let id: u64 = id.parse().unwrap();
    gw.spawn();
    let report = client::call(&gw.socket(), &Request::AuditVerify).unwrap();
    let interrupted: Vec<u64> = serde_json::from_value(report["interrupted"].clone()).unwrap();
    assert_eq!(interrupted, vec![id], "{report}");
    assert!(report["open"].as_array().unwrap().is_empty(), "{report}");
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let sealed = client::call(&gw.socket(), &Request::SessionsShow { id }).unwrap();
    assert_eq!(sealed["end"]["kind"], "interrupted", "{sealed}");
    assert!(
        gw.log()
            .contains("sealed sessions a previous run left open")
    );
}
