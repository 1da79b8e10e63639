//! The admin socket against hostile HTTP: raw bytes on the unix socket, as any local user can
//! send them, while a statement waits for approval. Ambiguous and oversized requests are
//! refused without deciding anything, a caller who may not decide is refused without the daemon
//! waiting for the body it announced, and idle or slow connections are closed.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    os::unix::{net::UnixStream, process::CommandExt as _},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{Gateway, PgServer, billing_target};
use gateway_user::admin::{Request, client};
use serde_json::Value;

/// The agent's uid, nobody: neither approver nor auditor here.
const NOBODY: u32 = 65534;
/// The daemon's REQUEST_TIMEOUT.
const TIMEOUT: Duration = Duration::from_secs(5);

const RULES: &str = r#"
[[targets.postgres.rules]]
name = "payouts-need-approval"
action = "hold"
writes = ["public.payouts"]
timeout_secs = 120

[[targets.postgres.rules]]
name = "app"
action = "allow"
kinds = ["select", "set", "show"]
"#;

/// Connects to `socket` with `uid` as this connection's credentials. The kernel records them
/// at connect (SO_PEERCRED), so a thread of its own takes that effective uid for the connect;
/// the raw syscall changes that thread alone (glibc's setresuid would change every thread).
fn connect_as(socket: &Path, uid: u32) -> UnixStream {
    std::thread::scope(|s| {
        s.spawn(|| {
            let keep = libc::uid_t::MAX;
            // SAFETY: setresuid takes three integers and touches no memory of ours.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, keep, uid, keep) };
            assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
            UnixStream::connect(socket).expect("connect to the admin socket")
        })
        .join()
        .unwrap()
    })
}

/// Sends `raw`, then reads until the daemon closes: the status (0 for none), the whole
/// response, and how long the daemon took to answer and close.
fn exchange(mut conn: UnixStream, raw: &[u8]) -> (u16, String, Duration) {
    conn.set_read_timeout(Some(TIMEOUT * 4)).unwrap();
    let started = Instant::now();
    match conn.write_all(raw) {
        // The daemon may answer and close before it has taken a refused body.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            // Closing with bytes of ours unread resets the connection, after the answer.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer: {e} after {:?}", started.elapsed()),
        }
    }
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, resp, started.elapsed())
}

fn pending(gw: &Gateway) -> Vec<Value> {
    let v = client::call(&gw.socket(), &Request::ApprovalsList).expect("approvals list");
    v.as_array().unwrap().clone()
}

/// psql as nobody inside the governed cgroup: held by the payouts rule until decided.
fn held_agent(pg: &PgServer, gw: &Gateway) -> Child {
    let mut cmd = Command::new("psql");
    cmd.args([&pg.agent_url(), "-X", "-q", "-A", "-t", "-c"])
        .arg("INSERT INTO payouts (amount) VALUES (42)")
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    gw.cgroup.command(cmd).spawn().expect("psql")
}

/// The id of the one pending request, once there is one.
fn held_id(gw: &Gateway) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let [request] = pending(gw).as_slice() {
            return request["id"].clone();
        }
        assert!(Instant::now() < deadline, "the insert was not held");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hostile_requests_are_refused_and_decide_nothing() {
    let pg = PgServer::start("127.10.0.6");
    pg.app_sql("CREATE TABLE payouts (id serial PRIMARY KEY, amount int)");
    let config = "auditors = { users = [\"daemon\"] }\n";
    let gw = Gateway::start_with_config("admin-hostile", &(billing_target(&pg) + RULES), config);
    let agent = held_agent(&pg, &gw);
    let id = held_id(&gw);
    let socket = gw.socket();
    let deny = format!("POST /v1/approvals/{id}/deny HTTP/1.1\r\nHost: gw\r\n");
    let reason = r#"{"reason": "smuggled"}"#;

    // Two lengths for one body: 400 from root, before any route is taken.
    let raw = format!(
        "{deny}Content-Length: 2\r\nContent-Length: {}\r\n\r\n{reason}",
        reason.len()
    );
    let (status, resp, _) = exchange(connect_as(&socket, 0), raw.as_bytes());
    assert_eq!(status, 400, "{resp}");

    // A body over 64 KiB, announced or chunked: 413 from root.
    let big = "x".repeat(70_000);
    let raw = format!("{deny}Content-Length: {}\r\n\r\n{big}", big.len());
    let (status, resp, _) = exchange(connect_as(&socket, 0), raw.as_bytes());
    assert_eq!(status, 413, "{resp}");
    let raw = format!(
        "{deny}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let (status, resp, _) = exchange(connect_as(&socket, 0), raw.as_bytes());
    assert_eq!(status, 413, "{resp}");

    // nobody announces a body and sends none: refused at once, the body never awaited.
    let raw = format!(
        "POST /v1/approvals/{id}/approve HTTP/1.1\r\nHost: gw\r\nContent-Length: 60000\r\n\r\n"
    );
    let (status, resp, took) = exchange(connect_as(&socket, NOBODY), raw.as_bytes());
    assert_eq!(status, 403, "{resp}");
    assert!(took < Duration::from_secs(1), "403 after {took:?}");

    // Bare LF line endings are answered, not left to the timeout.
    let (status, resp, took) = exchange(
        connect_as(&socket, NOBODY),
        b"GET /v1/health HTTP/1.1\nHost: gw\n\n",
    );
    assert_eq!(status, 200, "{resp}");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");

    assert_eq!(pending(&gw).len(), 1, "a hostile request decided");

    // An auditor's watch streams NDJSON, the pending request first, literals hidden.
    let mut watch = connect_as(&socket, 1);
    watch
        .write_all(b"GET /v1/approvals/watch HTTP/1.1\r\nHost: gw\r\n\r\n")
        .unwrap();
    watch.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut streamed = Vec::new();
    // One whole line, in whatever chunks it comes.
    while !streamed.windows(2).any(|w| w == b"}\n") {
        let mut buf = [0u8; 4096];
        let n = watch.read(&mut buf).expect("the pending request streamed");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&streamed));
        streamed.extend_from_slice(&buf[..n]);
    }
    let streamed = String::from_utf8_lossy(&streamed);
    assert!(
        streamed.contains("content-type: application/x-ndjson")
            && streamed.contains(r#""event":"pending""#)
            && streamed.contains("VALUES (?)"),
        "{streamed}"
    );
    drop(watch);

    // Idle, a slow head, a slow body: each closed after the timeout, the body one with 408.
    let slow = [
        ("idle", ""),
        ("head", "GET /v1/health HTTP/1.1\r\nHost"),
        ("body", &format!("{deny}Content-Length: 30\r\n\r\n{{\"rea")),
    ]
    .map(|(what, raw)| {
        let conn = connect_as(&socket, 0);
        let raw = raw.to_owned();
        (
            what,
            std::thread::spawn(move || exchange(conn, raw.as_bytes())),
        )
    });
    for (what, slow) in slow {
        let (status, resp, took) = slow.join().unwrap();
        assert!(
            took >= TIMEOUT - Duration::from_millis(100) && took < TIMEOUT * 2,
            "{what}: closed after {took:?}"
        );
        let want = if what == "body" { 408 } else { 0 };
        assert_eq!(status, want, "{what}: {resp}");
    }

    // Nothing was decided; the well-formed deny still is.
    assert_eq!(pending(&gw).len(), 1);
    let denied = client::call(
        &socket,
        &Request::Deny {
            id: id.as_u64().unwrap(),
            reason: "not today".into(),
        },
    )
    .expect("deny");
    assert_eq!(denied["id"], id, "{denied}");
    let out = agent.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not today"), "{err}");
    assert_eq!(pg.app_sql("SELECT count(*) FROM payouts"), "0\n");
}
