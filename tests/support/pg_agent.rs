//! pg-agent: a PostgreSQL client agent for the integration tests, run inside a governed
//! cgroup. It drives tokio-postgres (extended protocol, binary results, pipelining, cancel)
//! or raw wire bytes, and prints what it saw as one JSON object.
//!
//! ```text
//! pg-agent extended URL          prepared statements, pipelining, refusals, masking
//! pg-agent cancel URL            a long query cancelled through the gateway
//! pg-agent wire ADDR SQL...      raw protocol: every byte received, for leak checks
//! pg-agent malformed ADDR        a broken message after startup
//! pg-agent restart ADDR          one session across an upstream restart: prints `ready`,
//!                                waits for a line on stdin (the restart), then reports
//! ```

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use serde_json::{Value, json};
use tokio_postgres::{NoTls, error::SqlState};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args[0].as_str() {
        "wire" => wire(&args[1], &args[2..]),
        "malformed" => malformed(&args[1]),
        "restart" => restart(&args[1]),
        cmd => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                match cmd {
                    "extended" => extended(&args[1]).await,
                    "cancel" => cancel(&args[1]).await,
                    "execute" => execute(&args[1], &args[2], &args[3..]).await,
                    _ => panic!("unknown scenario {cmd}"),
                }
            })
        }
    };
    println!("{out}");
}

fn error_json(e: &tokio_postgres::Error) -> Value {
    match e.as_db_error() {
        Some(db) => json!({ "code": db.code().code(), "message": db.message() }),
        None => json!({ "code": null, "message": e.to_string() }),
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

async fn extended(url: &str) -> Value {
    let client = connect(url).await;
    // Binary results and a parameter, through a named prepared statement.
    let stmt = client
        .prepare("SELECT id, name, email, note FROM customers WHERE id <= $1 ORDER BY id")
        .await
        .expect("prepare");
    let rows: Vec<Value> = client
        .query(&stmt, &[&2i32])
        .await
        .expect("query")
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, i32>(0),
                "name": r.get::<_, Option<String>>(1),
                "email": r.get::<_, Option<String>>(2),
                "note": r.get::<_, Option<String>>(3),
            })
        })
        .collect();
    // Executed again: the judgement made at Parse holds for each Execute.
    let again = client.query(&stmt, &[&1i32]).await.expect("again").len();
    // Several statements in flight before any answer: tokio-postgres pipelines them.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1::int4", &[]),
        client.query_one("SELECT count(*)::int4 FROM invoices", &[]),
        client.query_one("SELECT 3::int4", &[]),
    );
    let pipelined: Vec<i32> = [a, b, c]
        .into_iter()
        .map(|r| r.expect("pipelined").get(0))
        .collect();
    let denied = client
        .prepare("DELETE FROM invoices")
        .await
        .err()
        .map(|e| error_json(&e));
    // A refusal inside a pipeline fails only its own statement.
    let (ok1, bad, ok2) = tokio::join!(
        client.query_one("SELECT 10::int4", &[]),
        client.execute("UPDATE invoices SET amount = 0", &[]),
        client.query_one("SELECT 20::int4", &[]),
    );
    let write = client
        .execute(
            "INSERT INTO invoices (customer_id, amount) VALUES ($1, $2)",
            &[&1i32, &5i32],
        )
        .await
        .map_err(|e| error_json(&e));
    json!({
        "rows": rows,
        "again": again,
        "pipelined": pipelined,
        "denied": denied,
        "pipeline_refusal": {
            "before": ok1.map(|r| r.get::<_, i32>(0)).map_err(|e| error_json(&e)).ok(),
            "refused": bad.err().map(|e| error_json(&e)),
            "after": ok2.map(|r| r.get::<_, i32>(0)).map_err(|e| error_json(&e)).ok(),
        },
        "insert": write.ok(),
        "usable_after": client.query_one("SELECT 42::int4", &[]).await.map(|r| r.get::<_, i32>(0)).ok(),
    })
}

async fn cancel(url: &str) -> Value {
    let client = connect(url).await;
    let token = client.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await.map_err(|e| e.to_string())
    });
    let result = client.simple_query("SELECT pg_sleep(20)").await;
    let cancelled = canceller.await.unwrap();
    json!({
        "cancel_sent": cancelled.is_ok(),
        "code": result.err().and_then(|e| e.code().map(|c: &SqlState| c.code().to_owned())),
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "usable_after": client.simple_query("SELECT 1").await.is_ok(),
    })
}

/// Startup as `agent`, then each SQL as a simple query; returns every byte received.
fn wire(addr: &str, sqls: &[String]) -> Value {
    let (mut s, mut received) = login(addr);
    for sql in sqls {
        received.extend(simple_query(&mut s, sql).unwrap());
    }
    json!({ "received": String::from_utf8_lossy(&received) })
}

/// Reads messages until ReadyForQuery (or the connection ends).
fn read_until_ready(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if s.read_exact(&mut head).is_err() {
            return all;
        }
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        if s.read_exact(&mut body).is_err() {
            return all;
        }
        all.extend_from_slice(&head);
        all.extend_from_slice(&body);
        if head[0] == b'Z' {
            return all;
        }
    }
}

/// After a good startup, a Query whose length runs past its body; then whether the gateway
/// answered with an error and closed.
fn malformed(addr: &str) -> Value {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "agent"), ("database", "x")], &mut out).unwrap();
    s.write_all(&out).unwrap();
    read_until_ready(&mut s);
    // 'Q' with a string that never ends inside the declared length.
    s.write_all(b"Q\0\0\0\x09abcde").unwrap();
    let mut rest = Vec::new();
    let closed = s.read_to_end(&mut rest).is_ok();
    json!({
        "reply": String::from_utf8_lossy(&rest),
        "error_tag": rest.first().map(|&b| (b as char).to_string()),
        "closed": closed,
    })
}

/// Startup as `agent`; the bytes of the login answer.
fn login(addr: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = BytesMut::new();
    frontend::startup_message([("user", "agent"), ("database", "anything")], &mut out).unwrap();
    s.write_all(&out).unwrap();
    let received = read_until_ready(&mut s);
    (s, received)
}

fn simple_query(s: &mut TcpStream, sql: &str) -> std::io::Result<Vec<u8>> {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).unwrap();
    s.write_all(&out)?;
    Ok(read_until_ready(s))
}

/// What arrived until the peer closed (or `timeout` passed): message tags, the SQLSTATE of
/// each ErrorResponse, and how the stream ended (`eof`, `timeout`, or the I/O error).
fn drain(s: &mut TcpStream, timeout: Duration) -> Value {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut bytes = Vec::new();
    let end = match s.read_to_end(&mut bytes) {
        Ok(_) => "eof".to_owned(),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "timeout".to_owned()
        }
        Err(e) => e.to_string(),
    };
    let (mut tags, mut codes, mut rest) = (String::new(), Vec::new(), &bytes[..]);
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(body) = rest.get(5..1 + len) else {
            break;
        };
        tags.push(rest[0] as char);
        if rest[0] == b'E' {
            // Fields are `type, cstring`; SQLSTATE is type 'C'.
            codes.extend(body.split(|&b| b == 0).filter_map(|f| {
                f.strip_prefix(b"C")
                    .map(|c| String::from_utf8_lossy(c).into_owned())
            }));
        }
        rest = &rest[1 + len..];
    }
    json!({ "tags": tags, "codes": codes, "end": end, "text": String::from_utf8_lossy(&bytes) })
}

/// A session that works, then (after the test restarts the server) what the same session
/// sees, unprompted and when it sends another query, then whether a new session works.
fn restart(addr: &str) -> Value {
    let (mut s, _) = login(addr);
    let before = simple_query(&mut s, "SELECT 'before-restart'").unwrap();
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let started = Instant::now();
    let unprompted = drain(&mut s, Duration::from_secs(5));
    // Whatever came unprompted, a query on the old session must fail fast, not hang.
    let mut out = BytesMut::new();
    frontend::query("SELECT 'on-the-old-session'", &mut out).unwrap();
    let written = s.write_all(&out).map_err(|e| e.to_string());
    let queried = drain(&mut s, Duration::from_secs(10));
    let old_ms = started.elapsed().as_millis() as u64;
    let (mut fresh, login_reply) = login(addr);
    let after = simple_query(&mut fresh, "SELECT 'after-restart'").unwrap_or_default();
    json!({
        "before": String::from_utf8_lossy(&before),
        "unprompted": unprompted,
        "old_write": written.err(),
        "old_query": queried,
        "old_ms": old_ms,
        "new_login": String::from_utf8_lossy(&login_reply),
        "after": String::from_utf8_lossy(&after),
    })
}

/// Prepares `sql` once and executes it once per value (a text parameter each time, sent in the
/// extended protocol as tokio-postgres does); the rows affected, or the error, per execution.
async fn execute(url: &str, sql: &str, values: &[String]) -> Value {
    let client = connect(url).await;
    let stmt = match client.prepare(sql).await {
        Ok(s) => s,
        Err(e) => return json!({ "prepare": error_json(&e) }),
    };
    let mut runs = Vec::new();
    for v in values {
        runs.push(match client.execute(&stmt, &[v]).await {
            Ok(n) => json!({ "rows": n }),
            Err(e) => json!({ "error": error_json(&e) }),
        });
    }
    json!({ "runs": runs })
}
