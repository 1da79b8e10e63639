//! The relay's two halves over `tokio::io::duplex`, wired as session.rs wires them: the test
//! is the agent on one pipe and the PostgreSQL server on the other, and answers with what a
//! real server sent (codec/testdata/README.txt and codec/testdata/relay/README.txt say how
//! they were captured). Each test asserts the exact bytes the upstream and the agent receive,
//! and the audit events stored.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::{BufMut as _, BytesMut};
use postgres_protocol::{IsNull, message::frontend};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::{
    Ctx, RelayError, SKIPPED, STAND_IN_NAME, STAND_IN_SQL, agent_side, expectations, upstream_side,
};
use crate::{
    approval::Broker,
    audit::{AuditStore, Detail, Event, SqlStep},
    policy::Policy,
    protocol::{
        TargetKind,
        postgres::codec::{FrameError, frame::MAX_AGENT_STATEMENT_MESSAGE},
    },
    rules::Action,
    session::{Admitted, Session},
    sql::{SqlKind, StatementKind},
    target::Protocol,
};

const SIMPLE_FRONTEND: &[u8] = include_bytes!("../codec/testdata/simple_query_frontend.bin");
const SIMPLE_BACKEND: &[u8] = include_bytes!("../codec/testdata/simple_query_backend.bin");
const STAND_IN_FRONTEND: &[u8] =
    include_bytes!("../codec/testdata/relay/stand_in_query_frontend.bin");
const STAND_IN_BACKEND: &[u8] =
    include_bytes!("../codec/testdata/relay/stand_in_query_backend.bin");
const MASK_FRONTEND: &[u8] = include_bytes!("../codec/testdata/relay/mask_query_frontend.bin");
const MASK_BACKEND: &[u8] = include_bytes!("../codec/testdata/relay/mask_query_backend.bin");
const EXTENDED_FRONTEND: &[u8] = include_bytes!("../codec/testdata/relay/extended_frontend.bin");
const EXTENDED_BACKEND: &[u8] = include_bytes!("../codec/testdata/relay/extended_backend.bin");
const PIPELINED_FRONTEND: &[u8] = include_bytes!("../codec/testdata/relay/pipelined_frontend.bin");
const PIPELINED_BACKEND: &[u8] = include_bytes!("../codec/testdata/relay/pipelined_backend.bin");

const POLICY: &str = r#"
name = "relay-test"
cgroup = "/agents/relay-test"

[[targets]]
name = "db"
address = "127.0.0.1:5432"
protocol = "postgres"

[targets.postgres]
user = "app"
database = "app"
tls = "disable"

[[targets.postgres.rules]]
name = "no-deletes"
action = "deny"
kinds = ["delete"]

[[targets.postgres.rules]]
name = "customer-email"
action = "mask"
tables = ["public.customers"]
columns = ["email"]

[[targets.postgres.rules]]
name = "reads"
action = "allow"
kinds = ["select"]
"#;

const SESSION_ID: u64 = 7;
/// session.rs's words for what was in flight when the session ended on an agent's error.
const ABANDONED: &str = "no answer: the session ended on an agent error";
const SELECT_T: &str = "SELECT id, name, note FROM t ORDER BY id";
/// A bound on every test: a relay that stops answering fails the test instead of hanging it.
const BOUND: Duration = Duration::from_secs(10);

// ---- Wire bytes --------------------------------------------------------------------------

/// The wire bytes of each typed message in `wire`, which must end on a message boundary.
fn split(wire: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let len = i32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let (frame, tail) = rest.split_at(1 + len);
        out.push(frame);
        rest = tail;
    }
    out
}

/// A captured server stream cut into its answers after the login, each up to and including
/// its ReadyForQuery.
fn answers(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = vec![Vec::new()];
    for f in split(wire) {
        out.last_mut().unwrap().extend_from_slice(f);
        if f[0] == b'Z' {
            out.push(Vec::new());
        }
    }
    assert!(
        out.pop().unwrap().is_empty(),
        "the capture ends on a ReadyForQuery"
    );
    out.remove(0); // the login
    out
}

/// A captured client stream after its startup packet (the relay starts after the login), cut
/// after each Sync and each Query (a batch each), its closing Terminate dropped.
fn batches(wire: &[u8]) -> Vec<Vec<u8>> {
    let startup = i32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
    let mut out: Vec<Vec<u8>> = vec![Vec::new()];
    for f in split(&wire[startup..]) {
        match f[0] {
            b'X' => break,
            b'S' | b'Q' => {
                out.last_mut().unwrap().extend_from_slice(f);
                out.push(Vec::new());
            }
            _ => out.last_mut().unwrap().extend_from_slice(f),
        }
    }
    out.pop();
    out
}

/// Frames as text, for an assertion failure a person can read.
fn show(wire: &[u8]) -> Vec<String> {
    split(wire)
        .iter()
        .map(|f| format!("{} {}", f[0] as char, f[5..].escape_ascii()))
        .collect()
}

/// The message types of each part, the parts apart by a space.
fn tags(parts: &[Vec<u8>]) -> String {
    let tags = |p: &Vec<u8>| split(p).iter().map(|f| f[0] as char).collect::<String>();
    parts.iter().map(tags).collect::<Vec<_>>().join(" ")
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// What the agent reads for a statement rule no-deletes denies, in place of the server's error
/// to the stand-in: the policy's ErrorResponse (severity twice, code, message), then the
/// server's ReadyForQuery.
fn refusal() -> Vec<u8> {
    let text = "gatewayd: policy relay-test denies this statement (rule no-deletes)";
    let mut body = Vec::new();
    for (t, v) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', "42501"),
        (b'M', text),
    ] {
        body.push(t);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    [message(b'E', &body), message(b'Z', b"I")].concat()
}

fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let mut body = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v.as_bytes());
            }
        }
    }
    message(b'D', &body)
}

fn encoded(build: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut out = BytesMut::new();
    build(&mut out);
    out.to_vec()
}

fn query(sql: &str) -> Vec<u8> {
    encoded(|out| frontend::query(sql, out).unwrap())
}

/// Parse (one int4 parameter), Bind of it into the unnamed portal with text '2', Execute,
/// Sync: the agent's batch, built with postgres-protocol's encoders.
fn extended_batch(statement: &str, sql: &str) -> Vec<u8> {
    encoded(|out| {
        frontend::parse(statement, sql, [23], out).unwrap();
        let text = |v: &str, buf: &mut BytesMut| {
            buf.put_slice(v.as_bytes());
            Ok(IsNull::No)
        };
        let bound = frontend::bind("", statement, [0], ["2"], text, [0], out);
        assert!(bound.is_ok(), "Bind encodes");
        frontend::execute("", 0, out).unwrap();
        frontend::sync(out);
    })
}

// ---- The relay under test ----------------------------------------------------------------

/// The test's ends of the two pipes.
struct Wire {
    agent: DuplexStream,
    server: DuplexStream,
}

async fn receives(from: &mut DuplexStream, want: &[u8], who: &str) {
    let mut got = vec![0; want.len()];
    tokio::time::timeout(Duration::from_secs(5), from.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("the {who} waited for {:?}", show(want)))
        .unwrap_or_else(|e| panic!("the {who} read: {e}"));
    assert_eq!(show(&got), show(want), "what the {who} received");
    assert_eq!(got, want);
}

impl Wire {
    async fn agent_sends(&mut self, bytes: &[u8]) {
        self.agent.write_all(bytes).await.unwrap();
    }

    async fn server_sends(&mut self, bytes: &[u8]) {
        self.server.write_all(bytes).await.unwrap();
    }

    /// The upstream receives exactly `want` next.
    async fn upstream_gets(&mut self, want: &[u8]) {
        receives(&mut self.server, want, "upstream").await;
    }

    async fn agent_gets(&mut self, want: &[u8]) {
        receives(&mut self.agent, want, "agent").await;
    }

    /// The agent sends `sent`; the upstream receives exactly `forwarded` and answers `answer`;
    /// the agent receives exactly `received`.
    async fn exchange(&mut self, sent: &[u8], forwarded: &[u8], answer: &[u8], received: &[u8]) {
        self.agent_sends(sent).await;
        self.upstream_gets(forwarded).await;
        self.server_sends(answer).await;
        self.agent_gets(received).await;
    }

    /// Both pipes closed by the test; nothing more reached either end.
    async fn closed(mut self) {
        self.agent.shutdown().await.unwrap();
        self.server.shutdown().await.unwrap();
        let (mut up, mut down) = (Vec::new(), Vec::new());
        self.server.read_to_end(&mut up).await.unwrap();
        self.agent.read_to_end(&mut down).await.unwrap();
        assert_eq!((show(&up), show(&down)), (vec![], vec![]));
    }

    /// The agent says goodbye: the upstream gets its Terminate, and the server closes.
    async fn terminate(mut self) {
        let bye = encoded(frontend::terminate);
        self.agent_sends(&bye).await;
        self.upstream_gets(&bye).await;
        self.closed().await;
    }
}

/// A session of one [`Wire::exchange`], ended by the agent's Terminate.
async fn exchange(sent: Vec<u8>, forwarded: Vec<u8>, answer: Vec<u8>, received: Vec<u8>) -> Ran {
    relay(|mut w| async move {
        w.exchange(&sent, &forwarded, &answer, &received).await;
        w.terminate().await;
    })
    .await
}

/// How a relay run ended, and what it stored.
struct Ran {
    to_upstream: Result<(), RelayError>,
    to_agent: Result<(), RelayError>,
    events: Vec<Event>,
    bytes_up: u64,
    bytes_down: u64,
}

fn target() -> Arc<super::PostgresTarget> {
    let policy = Policy::parse(std::path::Path::new("relay-test.toml"), POLICY).unwrap();
    let TargetKind::Postgres(target) = policy.targets[0].kind.clone() else {
        panic!("the policy's target is PostgreSQL")
    };
    target
}

/// Runs both halves of the relay, as session.rs does after the login, against `script`.
/// Unlike session.rs, each half runs to its own end (the test closes the pipes), so that what
/// either half would still write is seen; what is unanswered then is abandoned as session.rs
/// abandons it after an agent's error.
async fn relay<F: Future<Output = ()>>(script: impl FnOnce(Wire) -> F) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let admitted = Admitted {
        id: SESSION_ID,
        policy: "relay-test".into(),
        target: "db".into(),
        protocol: Protocol::Postgres,
        governed_cgroup_id: 1,
        agent: None,
        reach: Arc::new(crate::session::Nowhere),
    };
    let session = Session::new(admitted, store.clone(), Arc::new(Broker::default()));
    let target = target();
    let ctx = Ctx {
        session: &session,
        texts: super::text_masker(&target),
        names: Default::default(),
        outstanding: Default::default(),
        cancelled: Default::default(),
        target,
    };
    let (agent, agent_end) = tokio::io::duplex(1 << 16);
    let (server, upstream_end) = tokio::io::duplex(1 << 16);
    let (agent_rd, agent_wr) = tokio::io::split(agent_end);
    let (up_rd, up_wr) = tokio::io::split(upstream_end);
    let (tx, mut rx) = expectations();
    let (up, down) = (&session.bytes_up, &session.bytes_down);
    let to_upstream = agent_side(&ctx, agent_rd, BytesMut::new(), up_wr, tx, up);
    let to_agent = upstream_side(&ctx, up_rd, BytesMut::new(), agent_wr, &mut rx, down);
    let all = async { tokio::join!(to_upstream, to_agent, script(Wire { agent, server })) };
    let (to_upstream, to_agent, ()) = tokio::time::timeout(BOUND, all)
        .await
        .expect("the relay or the test hung");
    rx.abandon(&ctx, ABANDONED);
    store.settle(false).await.unwrap();
    Ran {
        to_upstream,
        to_agent,
        events: store.events(SESSION_ID).unwrap(),
        bytes_up: up.load(Ordering::Relaxed),
        bytes_down: down.load(Ordering::Relaxed),
    }
}

impl Ran {
    /// Both halves ended cleanly and the events are `want`, numbered from 1.
    fn ok(&self, want: &[Ev]) {
        assert!(self.to_upstream.is_ok(), "{:?}", self.to_upstream);
        assert!(self.to_agent.is_ok(), "{:?}", self.to_agent);
        self.events(want);
    }

    fn events(&self, want: &[Ev]) {
        let got: Vec<Ev> = self.events.iter().map(Ev::of).collect();
        assert_eq!(got, want);
        let seqs: Vec<u64> = self.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=want.len() as u64).collect::<Vec<_>>());
    }
}

/// What an event says, less its time and sequence.
#[derive(Debug, PartialEq)]
struct Ev {
    step: SqlStep,
    verdict: Action,
    rule: String,
    kind: SqlKind,
    sql: String,
    rows: Option<u64>,
    masked: u64,
    error: Option<String>,
}

impl Ev {
    fn of(e: &Event) -> Ev {
        let Detail::Sql(d) = &e.detail else {
            panic!("not an SQL event: {e:?}")
        };
        Ev {
            step: d.step,
            verdict: e.verdict,
            rule: e.rule.clone(),
            kind: d.kind,
            sql: d.sql.clone(),
            rows: d.rows,
            masked: e.masked,
            error: e.error.clone(),
        }
    }

    fn rows(self, rows: u64) -> Ev {
        let rows = Some(rows);
        Ev { rows, ..self }
    }
}

/// An event with nothing counted and no error.
fn ev(step: SqlStep, verdict: Action, rule: &str, kind: SqlKind, sql: &str) -> Ev {
    Ev {
        step,
        verdict,
        rule: rule.into(),
        kind,
        sql: sql.into(),
        rows: None,
        masked: 0,
        error: None,
    }
}

const SELECT: SqlKind = SqlKind::Statement(StatementKind::Select);
const DELETE: SqlKind = SqlKind::Statement(StatementKind::Delete);
const EXECUTE: SqlKind = SqlKind::Statement(StatementKind::Execute);

fn refused(step: SqlStep, sql: &str) -> Ev {
    Ev {
        error: Some("refused by rule no-deletes".into()),
        ..ev(step, Action::Deny, "no-deletes", DELETE, sql)
    }
}

// ---- The tests ---------------------------------------------------------------------------

#[tokio::test]
async fn allowed_query_goes_through_byte_for_byte() {
    // psql's own Query, and the server's own answer to it.
    let psql = batches(SIMPLE_FRONTEND);
    let answers = &answers(SIMPLE_BACKEND);
    let answer = &answers[0];
    assert_eq!((tags(&psql), tags(answers)), ("Q".into(), "TDDDCZ".into()));
    let ran = exchange(
        psql[0].clone(),
        psql[0].clone(),
        answer.clone(),
        answer.clone(),
    )
    .await;
    ran.ok(&[ev(SqlStep::Query, Action::Allow, "reads", SELECT, SELECT_T).rows(3)]);
    assert_eq!(ran.bytes_up, psql[0].len() as u64 + 5);
    assert_eq!(ran.bytes_down, answer.len() as u64);
}

#[tokio::test]
async fn denied_query_goes_upstream_as_the_stand_in_and_the_agent_reads_the_policy() {
    // What the relay forwards is what psql sends for the stand-in's text, and the server's
    // real answer to it (42601, syntax error) is what the relay rewrites.
    let stand_in = &batches(STAND_IN_FRONTEND)[0];
    assert_eq!(stand_in, &query(STAND_IN_SQL));
    let answers = answers(STAND_IN_BACKEND);
    assert_eq!(tags(&answers), "EZ");
    let answer = &answers[0];
    assert!(show(answer)[0].contains("C42601"), "{:?}", show(answer));
    let delete = query("DELETE FROM t WHERE id = 2");
    let ran = exchange(delete, stand_in.clone(), answer.clone(), refusal()).await;
    ran.ok(&[refused(SqlStep::Query, "DELETE FROM t WHERE id = ?")]);
}

#[tokio::test]
async fn masked_column_values_are_replaced_in_the_rows_the_agent_reads() {
    let sql = "SELECT id, name, email FROM customers ORDER BY id";
    let (psql, answers) = (batches(MASK_FRONTEND), answers(MASK_BACKEND));
    assert_eq!((psql, tags(&answers)), (vec![query(sql)], "TDDDCZ".into()));
    let row = |id, name, email| data_row(&[Some(id), Some(name), email]);
    let frames = split(&answers[0]);
    let rows = [
        ("1", "Ada", Some("ada@example.com")),
        ("2", "Bob", Some("bob@example.org")),
    ];
    let rows = rows.map(|(i, n, e)| row(i, n, e)).concat();
    assert_eq!(frames[1..4].concat(), [rows, row("3", "Cy", None)].concat());
    // RowDescription, the last row, CommandComplete and ReadyForQuery as the server sent
    // them; the two emails redacted.
    let mut want = frames[0].to_vec();
    want.extend(row("1", "Ada", Some("[redacted]")));
    want.extend(row("2", "Bob", Some("[redacted]")));
    want.extend(frames[3..].concat());
    let (q, a) = (query(sql), answers[0].clone());
    let ran = exchange(q.clone(), q, a, want).await;
    let masked = ev(SqlStep::Query, Action::Mask, "customer-email", SELECT, sql);
    ran.ok(&[Ev {
        masked: 2,
        ..masked.rows(3)
    }]);
}

#[tokio::test]
async fn extended_protocol_allowed_then_denied() {
    // The captured client sent what the relay should forward: the agent's allowed batch as it
    // is, then the stand-ins for the refused one.
    let upstream = batches(EXTENDED_FRONTEND);
    let answer = answers(EXTENDED_BACKEND);
    assert_eq!(
        (tags(&upstream), tags(&answer)),
        ("PBES PBES".into(), "12DCZ EZ".into())
    );
    let stand_ins = show(&upstream[1]);
    assert!(stand_ins[0].contains(STAND_IN_SQL) && stand_ins[2].contains(STAND_IN_NAME));
    let sql = "SELECT id, name FROM t WHERE id = $1";
    let delete = "DELETE FROM t WHERE id = $1";
    let allowed = extended_batch("s1", sql);
    assert_eq!(
        allowed, upstream[0],
        "postgres-protocol and client.py agree"
    );
    let ran = relay(|mut w| async move {
        w.exchange(&allowed, &allowed, &answer[0], &answer[0]).await;
        // No ParseComplete, BindComplete or row: the policy's error in place of the server's
        // syntax error, then the server's ReadyForQuery.
        let denied = extended_batch("s2", delete);
        w.exchange(&denied, &upstream[1], &answer[1], &refusal())
            .await;
        w.terminate().await;
    })
    .await;
    // The refused Parse is audited at Parse; the Bind and Execute that name it have no
    // judgement through the gateway (the Parse never defined "s2"), so each is refused as an
    // unknown name and audited with an empty text; the server skipped both after the Parse's
    // error, and their events say so.
    let unknown = |step| Ev {
        error: Some(SKIPPED.into()),
        ..ev(step, Action::Deny, "unknown-name", EXECUTE, "")
    };
    ran.ok(&[
        ev(SqlStep::Execute, Action::Allow, "reads", SELECT, sql).rows(1),
        refused(SqlStep::Parse, delete),
        unknown(SqlStep::Bind),
        unknown(SqlStep::Execute),
    ]);
}

/// Each hostile frame ends the agent side with RelayError::Agent before anything of it goes
/// upstream; a well-formed Query in the same write as the bad frame does not go either, since
/// the relay forwards what it read only after framing all of it.
#[tokio::test]
async fn hostile_frames_end_the_agent_side_and_reach_nothing() {
    const UNKNOWN: FrameError = FrameError::Malformed {
        what: "frontend",
        why: "unknown message type",
    };
    let cases: [(&str, Vec<u8>, FrameError); 5] = [
        (
            "negative length",
            vec![b'Q', 0xff, 0xff, 0xff, 0xff],
            FrameError::BadLength(-1),
        ),
        (
            "huge length",
            vec![b'Q', 0x7f, 0xff, 0xff, 0xff],
            FrameError::TooLong {
                len: i32::MAX as usize,
                limit: MAX_AGENT_STATEMENT_MESSAGE,
            },
        ),
        ("unknown tag", message(b'?', b"x\0"), UNKNOWN),
        (
            "Query not NUL-terminated",
            message(b'Q', b"SELECT 1"),
            FrameError::Malformed {
                what: "Query",
                why: "unterminated string",
            },
        ),
        (
            "a good Query, then an unknown tag",
            [query(SELECT_T), message(b'?', b"")].concat(),
            UNKNOWN,
        ),
    ];
    for (name, bytes, want) in cases {
        let ran = relay(|mut w| async move {
            w.agent_sends(&bytes).await;
            w.closed().await;
        })
        .await;
        match &ran.to_upstream {
            Err(RelayError::Agent(e)) => assert_eq!(e, &want, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(ran.to_agent.is_ok(), "{name}: {:?}", ran.to_agent);
        assert_eq!((ran.bytes_up, ran.bytes_down), (0, 0), "{name}");
        // Nothing was judged, so nothing is audited as if it would run: the batch is framed
        // whole before any of it is judged.
        ran.events(&[]);
    }
}

#[tokio::test]
async fn pipelined_queries_are_judged_and_answered_in_order() {
    let upstream = batches(PIPELINED_FRONTEND);
    assert_eq!(
        upstream.concat(),
        [query(SELECT_T), query(STAND_IN_SQL)].concat()
    );
    let answer = answers(PIPELINED_BACKEND);
    assert_eq!(tags(&answer), "TDDDCZ EZ");
    // One write with both; the server's answers to both in one write too.
    let both = [query(SELECT_T), query("DELETE FROM t WHERE id = 2")].concat();
    let received = [answer[0].clone(), refusal()].concat();
    let ran = exchange(both, upstream.concat(), answer.concat(), received).await;
    ran.ok(&[
        ev(SqlStep::Query, Action::Allow, "reads", SELECT, SELECT_T).rows(3),
        refused(SqlStep::Query, "DELETE FROM t WHERE id = ?"),
    ]);
}

/// After an error the server skips to the next Sync and answers nothing: an agent that never
/// sends one cannot make the gateway queue judgements without end.
#[tokio::test]
async fn an_agent_that_never_syncs_is_stopped_at_the_outstanding_bound() {
    // Execute of the unnamed portal, which no Bind made: each refused, none answered.
    let executes = message(b'E', &[0, 0, 0, 0, 0]).repeat(super::MAX_OUTSTANDING + 1);
    let ran = relay(|w| async move {
        let Wire {
            mut agent,
            mut server,
        } = w;
        let send = async {
            let _ = agent.write_all(&executes).await;
        };
        let drain = async {
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
        };
        // The relay stops reading the agent once it refuses the session, and the script's
        // ends stay open until it returns: give it a moment, then close them.
        let _ =
            tokio::time::timeout(Duration::from_secs(3), async { tokio::join!(send, drain) }).await;
    })
    .await;
    match &ran.to_upstream {
        Err(RelayError::Limit(why)) => assert!(why.contains("await the server's answer"), "{why}"),
        other => panic!("{other:?}"),
    }
}
