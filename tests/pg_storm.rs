//! A login storm through the PostgreSQL gateway: a thousand agents logging in, each of whose
//! sessions costs the gateway a SCRAM login upstream (4096 PBKDF2 rounds), admitted in bounded
//! time while a healthy session beside them is not stalled. Results: bench/LOGIN_STORM.md.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use gateway_tests::{APP_PASSWORD, APP_ROLE, Gateway, PgServer, billing_target, bin, output_json};
use serde_json::Value;

const LOGINS: u64 = 1000;
/// Logins in flight at once: half the server's default max_connections (100), which leaves
/// room for the healthy session, the test's own psql and backends still exiting.
const CONCURRENCY: u64 = 50;

const RULES: &str = r#"
[[targets.postgres.rules]]
name = "read"
action = "allow"
kinds = ["select"]
"#;

#[test]
fn a_login_storm_is_admitted_without_stalling_a_healthy_session() {
    let pg = PgServer::start("127.10.0.12");
    // The storm costs what it should only if the gateway's upstream login is SCRAM: the role's
    // stored verifier and every TCP line of pg_hba.conf say so.
    assert_eq!(
        pg.superuser_sql(&format!(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = '{APP_ROLE}'"
        )),
        "t\n"
    );
    assert_eq!(
        pg.superuser_sql(
            "SELECT string_agg(DISTINCT auth_method, ',') FROM pg_hba_file_rules WHERE type LIKE 'host%'"
        ),
        "scram-sha-256\n"
    );
    // The same storm and healthy session straight to the server first, outside any governed
    // cgroup: what the machine itself does with them, to read the gateway's figures against.
    let direct = pg.url(APP_ROLE, APP_PASSWORD, "billing");
    let (direct_storm, direct_latency) = storm_beside_healthy(&direct, Command::new);
    eprintln!(
        "{LOGINS} logins, {CONCURRENCY} at once, directly: {direct_storm}\n\
         healthy session during the storm: {direct_latency}"
    );

    assert_eq!(
        direct_storm["failures"], 0,
        "the server alone: {direct_storm}"
    );

    let gw = Gateway::start("pg-storm", &(billing_target(&pg) + RULES));
    let before = thread_cpu(gw.pid());
    let (storm, latency) = storm_beside_healthy(&pg.agent_url(), |program| {
        gw.cgroup.command(Command::new(program))
    });
    let mut cpu = thread_cpu(gw.pid());
    for (name, s) in &mut cpu {
        *s -= before.get(name).copied().unwrap_or(0.0);
    }
    eprintln!(
        "{LOGINS} logins, {CONCURRENCY} at once, through the gateway: {storm}\n\
         healthy session during the storm: {latency}\n\
         gatewayd CPU seconds meanwhile, by thread: {cpu:.2?}"
    );

    assert_eq!(storm["ok"], LOGINS, "{storm}");
    assert_eq!(storm["failures"], 0, "{storm}");
    let ms = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k}: {v}"));
    // Bounds about 3x the worst a debug build measured on 2 cores that other builds kept busy
    // (bench/LOGIN_STORM.md): the storm 11-18 s; the healthy session 1,400-2,200 round trips,
    // p99 145-267 ms, max 260-1,300 ms. With the upstream SCRAM on the async workers the
    // healthy session stalled for 10 s.
    assert!(ms(&storm, "total_s") < 60.0, "{storm}");
    // The logins' PBKDF2 ran on the CPU pool, not on the async workers beside the healthy
    // session: 1.5-2 ms a login measured here; 0.25 ms is below what 4096 rounds of
    // HMAC-SHA-256 (16,000 SHA-256 blocks) cost on any current CPU.
    let pool = cpu.get("cpu").copied().unwrap_or(0.0);
    assert!(pool > 0.25 * LOGINS as f64 / 1000.0, "{cpu:?}");
    assert!(latency["count"].as_u64().unwrap() > 500, "{latency}");
    assert!(ms(&latency, "p99_ms") < 800.0, "{latency}");
    assert!(ms(&latency, "max_ms") < 4000.0, "{latency}");
}

/// `pg-agent storm` against `url`, with a `pg-agent latency` session measuring beside it for
/// exactly as long; each started by `command` (inside a governed cgroup, or not).
fn storm_beside_healthy(url: &str, command: impl Fn(PathBuf) -> Command) -> (Value, Value) {
    let mut healthy = command(bin("pg-agent"));
    let mut healthy = healthy
        .args(["latency", url, "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Its own login done before the storm's begin, so what it measures is a session in use.
    std::thread::sleep(Duration::from_secs(1));
    let storm = output_json(command(bin("pg-agent")).args([
        "storm",
        url,
        &LOGINS.to_string(),
        &CONCURRENCY.to_string(),
    ]));
    // Closing its stdin ends the healthy session's measurement with the storm.
    drop(healthy.stdin.take());
    let out = healthy.wait_with_output().unwrap();
    assert!(out.status.success(), "healthy session failed");
    (storm, serde_json::from_slice(&out.stdout).unwrap())
}

/// CPU time (user + system, seconds) the live threads of process `pid` have used so far, by
/// thread name without its number (`cpu-0` counts as `cpu`).
fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    // SAFETY: sysconf reads a constant of the system; it touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut by_name = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        // A thread that ended since the listing is simply not counted.
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue;
        };
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        // The fields after the name start at the 3rd; utime and stime are the 14th and 15th.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        *by_name.entry(name.to_owned()).or_insert(0.0) += ticks / hz;
    }
    by_name
}
