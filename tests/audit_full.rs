//! The audit never fails open: with the store's disk full, a PostgreSQL session whose events
//! cannot be stored forwards nothing more (FATAL 58000), and a new session is refused in
//! PostgreSQL's words rather than with a bare reset.

use std::process::Command;

use gateway_tests::{Gateway, PgServer, billing_target};

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_store_stops_forwarding_and_refuses_new_sessions_in_their_protocol() {
    let pg = PgServer::start("127.10.0.5");
    pg.app_sql("CREATE TABLE notes (id serial PRIMARY KEY, body text)");
    let rules = "\n[[targets.postgres.rules]]\nname = \"app\"\naction = \"allow\"\n";
    let mut gw = Gateway::start("audit-full", &(billing_target(&pg) + rules));
    gw.stop();
    // The store on a small tmpfs of its own.
    let store = gw.store();
    let _ = std::fs::remove_dir_all(&store);
    std::fs::create_dir_all(&store).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&store)
        .status()
        .unwrap();
    assert!(ok.success());
    let _mount = Tmpfs(store.clone());
    gw.spawn();

    let agent = |sql: &str| {
        let mut cmd = Command::new("psql");
        cmd.args([pg.agent_url().as_str(), "-X", "-q", "-A", "-t", "-c", sql]);
        let out = gw.cgroup.command(cmd).output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (out, err) = agent("SELECT 'recorded'");
    assert_eq!(out, "recorded\n", "{err}");

    // Fill the disk.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", store.join("filler").display()))
        .output()
        .unwrap();
    // One session inserting in a loop: once its events cannot be stored, nothing more of it
    // reaches the server.
    let script: String = (0..2000)
        .map(|i| {
            format!(
                "INSERT INTO notes (body) VALUES ('{i} {}');\n",
                "x".repeat(200)
            )
        })
        .collect();
    let mut cmd = Command::new("psql");
    cmd.args([pg.agent_url().as_str(), "-X", "-q", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = gw.cgroup.command(cmd).spawn().unwrap();
    {
        use std::io::Write as _;
        let _ = child.stdin.take().unwrap().write_all(script.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let rows: u64 = pg
        .app_sql("SELECT count(*) FROM notes")
        .trim()
        .parse()
        .unwrap();
    eprintln!(
        "rows inserted before the stop: {rows}; agent saw: {}",
        err.lines().next().unwrap_or("")
    );
    assert!(
        err.contains("58000") || err.contains("audit store"),
        "the session went on unrecorded ({rows} rows): {err}"
    );
    assert!(rows < 2000, "every insert ran: {err}");
    assert!(gw.status()["audit_events_lost"].as_u64().unwrap() > 0);
    // A new session hears why, in PostgreSQL's words.
    let (_, err) = agent("SELECT 1");
    assert!(err.contains("audit"), "{err}");
}
