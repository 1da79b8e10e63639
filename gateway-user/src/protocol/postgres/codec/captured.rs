//! The codec over bytes captured between real clients (psql 15, tokio-postgres) and a real
//! PostgreSQL 15 server; `testdata/README.txt` says how. The unit tests next to each codec
//! module feed it what the codec's author expected (or what postgres-protocol encodes);
//! these feed it what the client and server actually put on the wire, split and ordered as
//! they really are.

use bytes::{Bytes, BytesMut};

use super::{
    backend::{self, Auth, ErrorFields},
    frame::{Frame, MAX_UPSTREAM_MESSAGE, Reader, next_frame, next_startup},
    frontend::{Kind, Message, Startup},
};

const SIMPLE_FRONTEND: &[u8] = include_bytes!("testdata/simple_query_frontend.bin");
const SIMPLE_BACKEND: &[u8] = include_bytes!("testdata/simple_query_backend.bin");
const COPY_OUT_BACKEND: &[u8] = include_bytes!("testdata/copy_out_backend.bin");
const ERROR_BACKEND: &[u8] = include_bytes!("testdata/error_response_backend.bin");
const EXTENDED_FRONTEND: &[u8] = include_bytes!("testdata/extended_frontend.bin");
const EXTENDED_BACKEND: &[u8] = include_bytes!("testdata/extended_backend.bin");
const SSL_FRONTEND: &[u8] = include_bytes!("testdata/ssl_request_frontend.bin");
const SSL_BACKEND: &[u8] = include_bytes!("testdata/ssl_request_backend.bin");
const CANCEL_SESSION_BACKEND: &[u8] = include_bytes!("testdata/cancel_session_backend.bin");
const CANCEL_REQUEST: &[u8] = include_bytes!("testdata/cancel_request.bin");

/// Every typed frame of `wire`, which must be consumed exactly: a captured stream ends on a
/// message boundary, so bytes left over would mean the framing lost its place.
fn frames(wire: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(wire);
    let mut out = Vec::new();
    while let Some(f) = next_frame(&mut buf, MAX_UPSTREAM_MESSAGE).expect("a valid frame") {
        out.push(f);
    }
    assert!(buf.is_empty(), "{} bytes left unframed", buf.len());
    out
}

/// A client stream: its startup packet, decoded, and the frames after it.
fn client_stream(wire: &[u8]) -> (Startup, Vec<Frame>) {
    let mut buf = BytesMut::from(wire);
    let startup = next_startup(&mut buf)
        .unwrap()
        .expect("a whole startup packet");
    (Startup::decode(&startup).unwrap(), frames(&buf))
}

fn tags(frames: &[Frame]) -> String {
    frames.iter().map(|f| f.tag as char).collect()
}

/// What the relay does with a message it does not rewrite: frame it and write it out again.
/// That must give back the captured bytes exactly.
fn assert_reframes(frames: &[Frame], wire: &[u8]) {
    let mut out = BytesMut::new();
    for f in frames {
        f.encode(&mut out);
    }
    assert_eq!(&out[..], wire);
}

fn messages(frames: &[Frame]) -> Vec<Message> {
    frames
        .iter()
        .map(|f| Message::decode(f.tag, &f.body).unwrap())
        .collect()
}

fn with_tag(frames: &[Frame], tag: u8) -> impl Iterator<Item = &Frame> {
    frames.iter().filter(move |f| f.tag == tag)
}

fn encoded(build: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::new();
    build(&mut out);
    out
}

fn wire_of(f: &Frame) -> BytesMut {
    encoded(|out| f.encode(out))
}

/// The first ReadyForQuery ends the server's login answer; the session proper follows.
fn after_login(frames: &[Frame]) -> &[Frame] {
    let z = frames
        .iter()
        .position(|f| f.tag == b'Z')
        .expect("login ends");
    &frames[z + 1..]
}

#[test]
fn psql_startup_and_simple_query() {
    let (startup, rest) = client_stream(SIMPLE_FRONTEND);
    let params = [("user", "postgres"), ("database", "postgres")];
    let mut want: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    want.push(("application_name".into(), "psql".into()));
    assert_eq!(startup, Startup::Start { params: want });
    assert_eq!(
        messages(&rest),
        [
            Message::Query {
                sql: "SELECT id, name, note FROM t ORDER BY id".into()
            },
            Message::Terminate
        ]
    );
    assert_reframes(
        &rest,
        &SIMPLE_FRONTEND[SIMPLE_FRONTEND.len() - wire(&rest)..],
    );
}

/// The login answer the gateway writes to the agent itself is built by the backend encoders;
/// they must produce what a real server sends, byte for byte.
#[test]
fn server_login_answer_reencodes_exactly() {
    let all = frames(SIMPLE_BACKEND);
    assert_reframes(&all, SIMPLE_BACKEND);
    let login = &all[..all.len() - after_login(&all).len()];
    assert_eq!(tags(login), format!("R{}KZ", "S".repeat(13)));

    assert_eq!(Auth::decode(&login[0].body), Ok(Auth::Ok));
    assert_eq!(encoded(backend::authentication_ok), wire_of(&login[0]));
    let mut names = Vec::new();
    for f in with_tag(login, b'S') {
        let mut r = Reader::new("ParameterStatus", &f.body);
        let (name, value) = (r.cstr().unwrap(), r.cstr().unwrap());
        r.finish().unwrap();
        assert_eq!(
            encoded(|out| backend::parameter_status(name, value, out)),
            wire_of(f)
        );
        if name == "server_version" {
            assert!(value.starts_with("15."), "{value}");
        }
        names.push(name);
    }
    // What the gateway rewrites before the agent sees it must be among them.
    assert!(names.contains(&"session_authorization"), "{names:?}");
    let key = &login[login.len() - 2];
    let mut r = Reader::new("BackendKeyData", &key.body);
    let (pid, secret) = (r.i32().unwrap(), r.i32().unwrap());
    r.finish().unwrap();
    assert_eq!(
        encoded(|out| backend::backend_key_data(pid, secret, out)),
        wire_of(key)
    );
    assert_eq!(
        encoded(|out| backend::ready_for_query(b'I', out)),
        wire_of(&login[login.len() - 1])
    );
}

#[test]
fn simple_query_rows_decode_and_reencode() {
    let all = frames(SIMPLE_BACKEND);
    let answer = after_login(&all);
    assert_eq!(tags(answer), "TDDDCZ");
    let cols = backend::row_description(&answer[0].body).unwrap();
    let described: Vec<(&str, u32, i16)> = cols
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.format))
        .collect();
    // int4 and text, as text: psql asks for nothing else.
    assert_eq!(described, [("id", 23, 0), ("name", 25, 0), ("note", 25, 0)]);
    let rows: Vec<Vec<Option<&[u8]>>> = with_tag(answer, b'D')
        .map(|f| backend::data_row(&f.body).unwrap())
        .collect();
    let want: [[Option<&[u8]>; 3]; 3] = [
        [Some(b"1"), Some(b"Ada"), Some(b"first")],
        [Some(b"2"), Some(b"Bob"), None],
        [Some(b"3"), Some(b"Cy"), Some(b"third")],
    ];
    assert_eq!(rows, want);
    // Masking rewrites rows through encode_data_row: unchanged values must stay the same bytes.
    for (f, row) in with_tag(answer, b'D').zip(&rows) {
        let out = encoded(|out| backend::encode_data_row(row.iter().copied(), out));
        assert_eq!(out, wire_of(f));
    }
    assert_eq!(backend::command_rows(&answer[4].body), Some(3));
    assert_eq!(&answer[5].body[..], b"I");
}

#[test]
fn copy_out_frames_carry_the_rows() {
    let all = frames(COPY_OUT_BACKEND);
    assert_reframes(&all, COPY_OUT_BACKEND);
    let answer = after_login(&all);
    assert_eq!(tags(answer), "HdddcCZ");
    // CopyOutResponse: text format, three columns each in text.
    let mut r = Reader::new("CopyOutResponse", &answer[0].body);
    assert_eq!((r.u8().unwrap(), r.i16().unwrap()), (0, 3));
    for _ in 0..3 {
        assert_eq!(r.i16().unwrap(), 0);
    }
    r.finish().unwrap();
    let data: Vec<&[u8]> = with_tag(answer, b'd').map(|f| &f.body[..]).collect();
    assert_eq!(
        data,
        [&b"1\tAda\tfirst\n"[..], b"2\tBob\t\\N\n", b"3\tCy\tthird\n"]
    );
    assert!(answer[4].body.is_empty(), "CopyDone has no body");
    assert_eq!(backend::command_rows(&answer[5].body), Some(3));
}

#[test]
fn server_error_response_decodes() {
    let all = frames(ERROR_BACKEND);
    assert_reframes(&all, ERROR_BACKEND);
    let answer = after_login(&all);
    assert_eq!(tags(answer), "EZ");
    let e = ErrorFields::decode(&answer[0].body).unwrap();
    assert_eq!(
        e,
        ErrorFields::error("42P01", "relation \"no_such_table\" does not exist")
    );
    // The server adds position, file, line and routine, which the gateway does not keep:
    // re-encoding is shorter, but reads back the same.
    let again = encoded(|out| e.encode(out));
    assert!(again.len() < answer[0].wire_len());
    let f = frames(&again);
    assert_eq!(ErrorFields::decode(&f[0].body), Ok(e));
}

#[test]
fn tokio_postgres_extended_protocol_frontend() {
    let (startup, rest) = client_stream(EXTENDED_FRONTEND);
    let Startup::Start { params } = startup else {
        panic!("{startup:?}")
    };
    let keys: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["client_encoding", "user", "database"]);
    let msgs = messages(&rest);
    assert_reframes(
        &rest,
        &EXTENDED_FRONTEND[EXTENDED_FRONTEND.len() - wire(&rest)..],
    );

    let parsed: Vec<(&str, &str)> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Parse { name, sql } => Some((name.as_str(), sql.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(parsed.len(), 10);
    assert_eq!(
        parsed[0],
        (
            "s0",
            "SELECT id, name, email, note FROM customers WHERE id <= $1 ORDER BY id"
        )
    );
    assert!(parsed.contains(&("s4", "DELETE FROM invoices")));
    assert!(parsed.contains(&(
        "s8",
        "INSERT INTO invoices (customer_id, amount) VALUES ($1, $2)"
    )));

    // The gateway carries a judgement from Parse to each Execute by statement name: every
    // Bind must name a statement parsed before it and not yet closed, into the unnamed portal.
    let mut live = std::collections::HashSet::new();
    let (mut binds, mut syncs) = (0, 0);
    for m in &msgs {
        match m {
            Message::Parse { name, .. } => assert!(live.insert(name.clone())),
            Message::Close {
                kind: Kind::Statement,
                name,
            } => assert!(live.remove(name), "closed {name} unparsed"),
            Message::Bind { portal, statement } => {
                assert!(portal.is_empty() && live.contains(statement), "{m:?}");
                binds += 1;
            }
            Message::Describe { kind, .. } => assert_eq!(*kind, Kind::Statement),
            Message::Execute { portal, max_rows } => {
                assert_eq!((portal.as_str(), *max_rows), ("", 0));
            }
            Message::Sync => syncs += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((binds, syncs), (10, 28));
}

fn wire(frames: &[Frame]) -> usize {
    frames.iter().map(Frame::wire_len).sum()
}

#[test]
fn tokio_postgres_extended_protocol_backend() {
    let all = frames(EXTENDED_BACKEND);
    assert_reframes(&all, EXTENDED_BACKEND);
    let answer = after_login(&all);
    // One ReadyForQuery for each of the client's 28 Syncs; one ParseComplete per Parse and
    // one BindComplete per Bind.
    let count = |t| with_tag(answer, t).count();
    assert_eq!((count(b'Z'), count(b'1'), count(b'2')), (28, 10, 10));

    // Describe of s0: one int4 parameter, four columns not yet in any format.
    let mut r = Reader::new("ParameterDescription", &answer[1].body);
    assert_eq!((r.i16().unwrap(), r.i32().unwrap()), (1, 23));
    let cols = backend::row_description(&answer[2].body).unwrap();
    let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "name", "email", "note"]);

    // tokio-postgres binds for binary results: the id is a big-endian int4, NULL stays -1.
    let rows: Vec<_> = with_tag(answer, b'D')
        .map(|f| backend::data_row(&f.body).unwrap())
        .collect();
    assert_eq!(rows[0][0], Some(&1i32.to_be_bytes()[..]));
    assert_eq!(rows[0][2], Some(&b"ada@example.com"[..]));
    assert_eq!(rows[1][3], None);
    for f in with_tag(answer, b'D') {
        let row = backend::data_row(&f.body).unwrap();
        let out = encoded(|out| backend::encode_data_row(row.into_iter(), out));
        assert_eq!(out, wire_of(f));
    }
    let completed: Vec<Option<u64>> = with_tag(answer, b'C')
        .map(|f| backend::command_rows(&f.body))
        .collect();
    let want = [2, 1, 1, 1, 1, 3, 1, 1, 1, 1].map(Some);
    assert_eq!(completed, want);
    assert_eq!(
        with_tag(answer, b'C')
            .map(|f| std::str::from_utf8(&f.body).unwrap())
            .filter(|t| !t.starts_with("SELECT"))
            .collect::<Vec<_>>(),
        ["UPDATE 3\0", "INSERT 0 1\0"]
    );
}

#[test]
fn ssl_request_refused_then_plain_startup() {
    let mut buf = BytesMut::from(SSL_FRONTEND);
    let first = next_startup(&mut buf).unwrap().unwrap();
    assert_eq!(Startup::decode(&first), Ok(Startup::Ssl));
    let second = next_startup(&mut buf).unwrap().unwrap();
    assert!(matches!(
        Startup::decode(&second),
        Ok(Startup::Start { .. })
    ));
    assert_eq!(
        messages(&frames(&buf)),
        [
            Message::Query {
                sql: "SELECT 1".into()
            },
            Message::Terminate
        ]
    );
    // The server's one-byte refusal is not a frame; the login follows it.
    assert_eq!(SSL_BACKEND[0], b'N');
    let after = frames(&SSL_BACKEND[1..]);
    assert_eq!(tags(after_login(&after)), "TDCZ");
}

#[test]
fn cancel_request_carries_the_sessions_key() {
    let mut buf = BytesMut::from(CANCEL_REQUEST);
    let body = next_startup(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty());
    let Ok(Startup::Cancel {
        process_id,
        secret_key,
    }) = Startup::decode(&body)
    else {
        panic!("not a CancelRequest: {body:?}")
    };
    let all = frames(CANCEL_SESSION_BACKEND);
    let key = with_tag(&all, b'K').next().unwrap();
    let mut r = Reader::new("BackendKeyData", &key.body);
    assert_eq!(
        (r.i32().unwrap(), r.i32().unwrap()),
        (process_id, secret_key)
    );
    let answer = after_login(&all);
    assert_eq!(tags(answer), "TEZ");
    assert_eq!(ErrorFields::decode(&answer[1].body).unwrap().code, "57014");
}

/// Sockets hand over bytes in any split: fed in pieces of every size up to a few messages,
/// the framing yields the same frames as from one buffer, and never errors on a partial one.
#[test]
fn any_split_of_a_capture_frames_the_same() {
    for wire in [EXTENDED_BACKEND, SIMPLE_BACKEND, COPY_OUT_BACKEND] {
        let whole = frames(wire);
        for step in [1, 2, 3, 5, 7, 64, 333] {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Some(f) = next_frame(&mut buf, MAX_UPSTREAM_MESSAGE).unwrap() {
                    got.push(f);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(got, whole, "in pieces of {step}");
        }
    }
    // A startup packet split anywhere waits for the rest.
    let len = i32::from_be_bytes(SIMPLE_FRONTEND[..4].try_into().unwrap()) as usize;
    for cut in 0..len {
        let mut part = BytesMut::from(&SIMPLE_FRONTEND[..cut]);
        assert_eq!(next_startup(&mut part), Ok(None::<Bytes>), "cut at {cut}");
    }
}
