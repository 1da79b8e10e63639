//! The audit never fails open: with the store's disk full, a PostgreSQL session whose events
//! cannot be stored forwards nothing more (FATAL 58000), and a new session is refused in
//! PostgreSQL's words rather than with a bare reset. Once space is back the store reopens by
//! itself, and verify names the session that was stopped and what it lost.

use std::process::Command;

use std::time::{Duration, Instant};

use gateway_tests::{Gateway, PgServer, billing_target};
use gateway_user::{
    admin::{Request, client},
    audit::SessionEnd,
};

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_store_stops_forwarding_refuses_new_sessions_and_recovers_by_itself() {
    let pg = PgServer::start("127.10.0.5");
    pg.app_sql("CREATE TABLE notes (id serial PRIMARY KEY, body text)");
    let rules = "\n[[targets.postgres.rules]]\nname = \"app\"\naction = \"allow\"\n";
    let policy = billing_target(&pg) + rules;
    let reserve = "store_reserve_bytes = 4194304\n";
    let mut gw = Gateway::start_with_config("audit-full", &policy, reserve);
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

    // One session inserting in a loop; the disk fills under it, to below the reserve but not
    // to the last byte (sled never meets a full disk).
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
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        use std::io::Write as _;
        let _ = stdin.write_all(script.as_bytes());
    });
    let count = || -> u64 {
        pg.app_sql("SELECT count(*) FROM notes")
            .trim()
            .parse()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < 50 {
        assert!(Instant::now() < deadline, "the inserts never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let free = nix::sys::statvfs::statvfs(&store).unwrap();
    let free = free.blocks_available() * free.fragment_size();
    let filler = store.join("filler");
    let ok = Command::new("fallocate")
        .args(["-l", &(free - (1 << 20)).to_string()])
        .arg(&filler)
        .status()
        .unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let rows = count();
    eprintln!(
        "rows inserted before the stop: {rows}; agent saw: {}",
        err.lines().next().unwrap_or("")
    );
    assert!(
        err.contains("58000") || err.contains("audit store"),
        "the session went on unrecorded ({rows} rows): {err}"
    );
    assert!(rows < 2000, "every insert ran: {err}");
    // A new session hears why, in PostgreSQL's words.
    let (_, err) = agent("SELECT 1");
    assert!(err.contains("audit store"), "{err}");
    let broken = gw.status()["audit_broken"].clone();
    assert!(
        broken.as_str().is_some_and(|b| b.contains("reserve")),
        "{broken}"
    );

    // Space comes back: the store takes sessions again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.status()["audit_broken"].is_null() {
        assert!(Instant::now() < deadline, "never recovered:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (out, err) = agent("SELECT 'recorded again'");
    assert_eq!(out, "recorded again\n", "{err}");
    assert_eq!(count(), rows, "nothing ran meanwhile");

    // Every insert that ran has its event, and verify names the session that was stopped.
    let sessions = gw.ended_sessions(4);
    let stopped: Vec<u64> = sessions
        .iter()
        .filter(|s| matches!(&s.end, Some(SessionEnd::AuditUnavailable(_))))
        .map(|s| s.id)
        .collect();
    assert!(!stopped.is_empty(), "{sessions:#?}");
    let inserting = stopped.iter().copied().min().unwrap();
    let shown = client::call(&gw.socket(), &Request::SessionsShow { id: inserting }).unwrap();
    let inserts = shown["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "insert" && e["error"].is_null())
        .count() as u64;
    assert!(inserts >= rows, "{rows} rows, {inserts} insert events");
    let report = client::call(&gw.socket(), &Request::AuditVerify).unwrap();
    eprintln!("verify after recovery: {report}");
    let failed: Vec<u64> = serde_json::from_value(report["audit_failed"].clone()).unwrap();
    for id in &stopped {
        assert!(failed.contains(id), "{id} not named: {report}");
    }
    assert!(report["open"].as_array().unwrap().is_empty(), "{report}");
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
}
