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
//! pg-agent script FILE           raw messages from a JSON script, one simple Query each, and
//!                                what came back for each (see `script`)
//! pg-agent latency URL SECS       `SELECT 1` round trips for SECS seconds (SECS `stdin`: until
//!                                stdin ends): count, p50, p99, max
//! pg-agent storm URL N CONC       N logins (connect, `SELECT 1`, close), at most CONC at once:
//!                                total seconds, ok, failures, p50/p99/max login time
//! pg-agent hostile URL N          N statements built to cost the judge most (25,000-term
//!                                chains, a statement over the size bound): what came back
//! pg-agent partial ADDR N SIZE SECS
//!                                N sessions that each start a Bind of SIZE bytes, send half
//!                                of it and wait SECS: what each heard (memory budget)
//! ```

use std::{
    io::{BufRead as _, Read as _, Write as _},
    net::TcpStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
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
        "script" => script(&args[1]),
        "partial" => partial(
            &args[1],
            args[2].parse().unwrap(),
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
        ),
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
                    "latency" => latency(&args[1], &args[2]).await,
                    "storm" => {
                        storm(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap()).await
                    }
                    "hostile" => hostile(&args[1], args[2].parse().unwrap()).await,
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

/// `n` sessions at once, each sending the first half of a Bind that declares `size` bytes, then
/// waiting `secs` for what the gateway says: per session, the SQLSTATEs and how it ended.
fn partial(addr: &str, n: usize, size: usize, secs: u64) -> Value {
    let sessions: Vec<_> = (0..n)
        .map(|_| {
            let addr = addr.to_owned();
            std::thread::spawn(move || {
                let (mut s, _) = login(&addr);
                let mut head = vec![b'B'];
                head.extend_from_slice(&(size as i32 - 1).to_be_bytes());
                s.write_all(&head).unwrap();
                // The gateway decides on the header: a refusal comes before the body is sent
                // (sending into a closed socket would reset the connection over its answer).
                let first = drain(&mut s, Duration::from_millis(500));
                if first["end"] != "timeout" {
                    return json!({ "body": false, "codes": first["codes"], "end": first["end"] });
                }
                let sent = s.write_all(&vec![0u8; size / 2]).is_ok();
                let heard = drain(&mut s, Duration::from_secs(secs));
                json!({ "body": sent, "codes": heard["codes"], "end": heard["end"] })
            })
        })
        .collect();
    let all: Vec<Value> = sessions.into_iter().map(|t| t.join().unwrap()).collect();
    json!({ "sessions": all })
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

/// `pg-agent script FILE`: sessions of raw messages, each sent as one simple Query (any bytes,
/// so also text that is not UTF-8), and for each message what came back. FILE is JSON:
///
/// ```text
/// {"addr": "IP:PORT", "watch": "TEXT", "timeout_ms": N, "first_conn": 1,
///  "sessions": [{"name": "...", "params": [["client_encoding", "SJIS"], ...],
///                "cases": [{"id": 7, "hex": "53454c4543542031"}, ...]}, ...]}
/// ```
///
/// Each connection logs in as `agent` (application_name `pginv` and the session's startup
/// parameters), then sends `SELECT 'pginv-conn-C'` (C counts connections from 1). After each
/// case it sends `ROLLBACK` if the transaction is left failed, then `SELECT 'pginv-mark-C-K'`
/// (K counts the connection's cases), so that whoever reads the record can cut the server's
/// log and the gateway's audit into messages. A CopyInResponse is answered with CopyDone (what
/// follows the COPY in the same message runs). A connection that ends is replaced by a new one
/// for the session's next case. Prints `{"records": [...]}`, one record per message sent.
fn script(path: &str) -> Value {
    let plan: Value =
        serde_json::from_slice(&std::fs::read(path).expect("script file")).expect("script JSON");
    let addr = plan["addr"].as_str().expect("addr").to_owned();
    let watch = plan["watch"].as_str().unwrap_or("").as_bytes().to_vec();
    let timeout = Duration::from_millis(plan["timeout_ms"].as_u64().unwrap_or(120_000));
    let mut records = Vec::new();
    // Connections are numbered on from `first_conn` (default 1), so runs can follow each other.
    let mut conns = plan["first_conn"].as_u64().unwrap_or(1).saturating_sub(1);
    for session in plan["sessions"].as_array().expect("sessions") {
        let name = session["name"].as_str().unwrap_or("").to_owned();
        let params: Vec<(String, String)> = session["params"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        (
                            p[0].as_str().unwrap().to_owned(),
                            p[1].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut conn: Option<ScriptConn> = None;
        for case in session["cases"].as_array().expect("cases") {
            let id = case["id"].as_u64().expect("case id");
            let bytes = from_hex(case["hex"].as_str().expect("case hex"));
            if conn.is_none() {
                conns += 1;
                conn =
                    ScriptConn::open(&addr, conns, &name, &params, timeout, &watch, &mut records);
            }
            let Some(c) = conn.as_mut() else {
                records.push(json!({
                    "conn": null, "session": name, "role": "case", "case": id,
                    "outcome": "not_sent",
                }));
                continue;
            };
            c.cases += 1;
            let answer = c.send(&bytes);
            let mut alive = answer.alive();
            let failed = answer.status == Some('E');
            records.push(c.record("case", Some(id), None, &answer));
            if alive && failed {
                let a = c.send(b"ROLLBACK");
                alive = a.alive();
                records.push(c.record("rollback", None, Some("ROLLBACK"), &a));
            }
            if alive {
                let mark = format!("SELECT 'pginv-mark-{}-{}'", c.id, c.cases);
                let a = c.send(mark.as_bytes());
                alive = a.alive();
                records.push(c.record("mark", None, Some(&mark), &a));
            }
            if !alive {
                conn = None;
            }
        }
        if let Some(mut c) = conn {
            // Terminate: the gateway's session ends cleanly.
            let _ = c.stream.write_all(b"X\0\0\0\x04");
        }
    }
    json!({ "records": records })
}

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// One connection of a script.
struct ScriptConn {
    stream: TcpStream,
    id: u64,
    session: String,
    /// Cases sent on this connection so far.
    cases: u64,
    /// The client_encoding the server last reported: what the next message's bytes mean to it.
    encoding: String,
    watch: Vec<u8>,
}

/// What came back for one message.
#[derive(Default)]
struct ScriptAnswer {
    /// `answered` (ReadyForQuery), `refused` (answered, with the gateway's policy refusal),
    /// `closed` or `timeout` (no ReadyForQuery).
    outcome: &'static str,
    errors: Vec<Value>,
    /// CommandComplete tags: one per statement the server completed.
    tags: Vec<String>,
    empty: bool,
    rows: u64,
    first: Option<String>,
    /// Whether any row or COPY data carried the watched text.
    watched: bool,
    status: Option<char>,
    /// The client_encoding in force when the message was sent.
    encoding: String,
}

impl ScriptAnswer {
    fn alive(&self) -> bool {
        self.status.is_some()
    }
}

impl ScriptConn {
    fn open(
        addr: &str,
        id: u64,
        session: &str,
        params: &[(String, String)],
        timeout: Duration,
        watch: &[u8],
        records: &mut Vec<Value>,
    ) -> Option<ScriptConn> {
        let failed = |records: &mut Vec<Value>, why: String| {
            records.push(json!({
                "conn": id, "session": session, "role": "login", "outcome": "login_failed",
                "errors": [{ "code": null, "message": why }],
            }));
        };
        let stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                failed(records, format!("connect: {e}"));
                return None;
            }
        };
        stream.set_read_timeout(Some(timeout)).unwrap();
        let mut c = ScriptConn {
            stream,
            id,
            session: session.to_owned(),
            cases: 0,
            encoding: "UTF8".into(),
            watch: watch.to_vec(),
        };
        let mut startup: Vec<(&str, &str)> = vec![
            ("user", "agent"),
            ("database", "anything"),
            ("application_name", "pginv"),
        ];
        startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if let Some((_, enc)) = params.iter().find(|(k, _)| k == "client_encoding") {
            c.encoding = enc.to_uppercase();
        }
        let mut out = BytesMut::new();
        frontend::startup_message(startup, &mut out).unwrap();
        if let Err(e) = c.stream.write_all(&out) {
            failed(records, format!("startup: {e}"));
            return None;
        }
        let login = c.read_answer();
        if !login.alive() || !login.errors.is_empty() {
            failed(records, format!("login: {:?}", login.errors));
            return None;
        }
        let hello = format!("SELECT 'pginv-conn-{id}'");
        let a = c.send(hello.as_bytes());
        records.push(c.record("hello", None, Some(&hello), &a));
        a.alive().then_some(c)
    }

    fn record(&self, role: &str, case: Option<u64>, text: Option<&str>, a: &ScriptAnswer) -> Value {
        json!({
            "conn": self.id,
            "session": self.session,
            "role": role,
            "case": case,
            "text": text,
            "encoding": a.encoding,
            "outcome": a.outcome,
            "errors": a.errors,
            "tags": a.tags,
            "empty": a.empty,
            "rows": a.rows,
            "first": a.first,
            "watched": a.watched,
            "status": a.status.map(String::from),
        })
    }

    /// Sends `sql` as one Query message and reads what comes back, to ReadyForQuery.
    fn send(&mut self, sql: &[u8]) -> ScriptAnswer {
        let encoding = self.encoding.clone();
        let mut msg = Vec::with_capacity(sql.len() + 6);
        msg.push(b'Q');
        msg.extend_from_slice(&(sql.len() as i32 + 5).to_be_bytes());
        msg.extend_from_slice(sql);
        msg.push(0);
        let mut a = if self.stream.write_all(&msg).is_err() {
            // The peer may have answered and closed while the message was being written.
            let mut a = self.read_answer();
            if a.outcome == "timeout" {
                a.outcome = "closed";
            }
            a
        } else {
            self.read_answer()
        };
        a.encoding = encoding;
        a
    }

    fn read_answer(&mut self) -> ScriptAnswer {
        let mut a = ScriptAnswer {
            outcome: "closed",
            ..Default::default()
        };
        loop {
            let mut head = [0u8; 5];
            if let Err(e) = self.stream.read_exact(&mut head) {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    a.outcome = "timeout";
                }
                return a;
            }
            let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
            let mut body = vec![0u8; (len.max(4) - 4) as usize];
            if self.stream.read_exact(&mut body).is_err() {
                return a;
            }
            match head[0] {
                b'E' => {
                    let field = |t: u8| {
                        body.split(|&b| b == 0)
                            .find_map(|f| f.strip_prefix(&[t]))
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    };
                    a.errors.push(json!({
                        "severity": field(b'V').or_else(|| field(b'S')),
                        "code": field(b'C'),
                        "message": field(b'M'),
                    }));
                }
                b'C' => a
                    .tags
                    .push(String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into()),
                b'I' => a.empty = true,
                b'D' => {
                    a.rows += 1;
                    a.watched |= contains(&body, &self.watch);
                    if a.first.is_none() && body.len() >= 6 {
                        let n = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
                        if n >= 0 {
                            let v = body.get(6..6 + n as usize).unwrap_or(&[]);
                            a.first = Some(String::from_utf8_lossy(v).into_owned());
                        }
                    }
                }
                b'd' => a.watched |= contains(&body, &self.watch),
                b'S' => {
                    let mut parts = body.split(|&b| b == 0);
                    if parts.next() == Some(b"client_encoding")
                        && let Some(v) = parts.next()
                    {
                        self.encoding = String::from_utf8_lossy(v).to_uppercase();
                    }
                }
                // CopyIn (or CopyBoth): end the data at once (CopyDone).
                b'G' | b'W' if self.stream.write_all(b"c\0\0\0\x04").is_err() => return a,
                b'Z' => {
                    a.status = body.first().map(|&b| b as char);
                    // A gateway refusal names its policy (42501, or 22021 for bytes that are
                    // not UTF-8, as PostgreSQL would answer them).
                    let refused = a.errors.iter().any(|e| {
                        e["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("gatewayd: policy"))
                    });
                    a.outcome = if refused { "refused" } else { "answered" };
                    return a;
                }
                _ => {}
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Round trips of a trivial statement, as a healthy agent beside a hostile one sees them: for
/// `until` seconds, or with `until` = `stdin` until stdin ends, so that a test can measure over
/// exactly the time some other load ran.
async fn latency(url: &str, until: &str) -> Value {
    let client = connect(url).await;
    let end = (until != "stdin")
        .then(|| Instant::now() + Duration::from_secs(until.parse().expect("SECS or stdin")));
    let stdin_ended = Arc::new(AtomicBool::new(false));
    if end.is_none() {
        let ended = stdin_ended.clone();
        // A thread of its own: the runtime is current-thread and must keep timing queries.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            ended.store(true, Ordering::Relaxed);
        });
    }
    let mut times = Vec::new();
    while end.map_or(!stdin_ended.load(Ordering::Relaxed), |e| Instant::now() < e) {
        let start = Instant::now();
        client.simple_query("SELECT 1").await.expect("SELECT 1");
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let count = times.len();
    let mut out = percentiles(times);
    out["count"] = count.into();
    out
}

/// p50, p99 and max of `times` (ms); nulls when there are none.
fn percentiles(mut times: Vec<f64>) -> Value {
    times.sort_by(f64::total_cmp);
    json!({
        "p50_ms": times.get(times.len() / 2),
        "p99_ms": times.get(times.len() * 99 / 100),
        "max_ms": times.last(),
    })
}

/// `n` logins, at most `concurrency` at once, each a new connection that runs `SELECT 1` and
/// closes (waiting for the close, so that no more than `concurrency` server backends are
/// held). The login time is from the TCP connect to ReadyForQuery, which through the gateway
/// includes its own login upstream.
async fn storm(url: &str, n: usize, concurrency: usize) -> Value {
    let room = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut logins = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..n {
        let permit = room.clone().acquire_owned().await.expect("semaphore");
        let url = url.to_owned();
        logins.spawn(async move {
            let _permit = permit;
            let start = Instant::now();
            let (client, conn) = tokio_postgres::connect(&url, NoTls)
                .await
                .map_err(|e| error_json(&e))?;
            let login_ms = start.elapsed().as_secs_f64() * 1000.0;
            let conn = tokio::spawn(conn);
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| error_json(&e))?;
            drop(client);
            conn.await
                .expect("connection task")
                .map_err(|e| error_json(&e))?;
            Ok::<_, Value>(login_ms)
        });
    }
    let (mut times, mut failures, mut first_error) = (Vec::new(), 0, Value::Null);
    while let Some(done) = logins.join_next().await {
        match done.expect("login task") {
            Ok(ms) => times.push(ms),
            Err(e) => {
                failures += 1;
                if first_error.is_null() {
                    first_error = e;
                }
            }
        }
    }
    let total_s = started.elapsed().as_secs_f64();
    let ok = times.len();
    let login = percentiles(times);
    json!({
        "total_s": total_s,
        "logins_per_s": ok as f64 / total_s,
        "ok": ok,
        "failures": failures,
        "first_error": first_error,
        "login_p50_ms": login["p50_ms"],
        "login_p99_ms": login["p99_ms"],
        "login_max_ms": login["max_ms"],
    })
}

/// Statements built to cost the judge most: deep operator chains (each term a tree level) and
/// one over the size bound. Reports the SQLSTATE each got.
async fn hostile(url: &str, rounds: usize) -> Value {
    let client = connect(url).await;
    let mut codes = Vec::new();
    for i in 0..rounds {
        let sql = match i % 4 {
            0 => format!("SELECT 1{}", " || 1".repeat(25_000)),
            1 => format!("SELECT 1 WHERE {}", "1 = 1 OR ".repeat(25_000) + "true"),
            2 => format!("SELECT 1{}", "::text".repeat(25_000)),
            _ => format!("SELECT '{}'", "x".repeat(1_100_000)),
        };
        let code = match client.simple_query(&sql).await {
            Ok(_) => "ok".to_owned(),
            Err(e) => error_json(&e)["code"].as_str().unwrap_or("none").to_owned(),
        };
        codes.push(code);
    }
    json!({ "codes": codes })
}
