//! Messages the agent sends, decoded from frames. Only what the gateway must judge or rewrite
//! is decoded into fields; everything is forwarded from its original bytes.

use bytes::Bytes;

use super::frame::{FrameError, Reader};

/// Protocol 3.0, and the magic codes that share the startup packet's version slot.
const PROTOCOL_3: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    Ssl,
    GssEnc,
    Cancel {
        process_id: i32,
        secret_key: i32,
    },
    /// Protocol 3.0 with its parameters (`user`, `database`, `application_name`, ...).
    Start {
        params: Vec<(String, String)>,
    },
}

impl Startup {
    pub fn decode(body: &[u8]) -> Result<Startup, FrameError> {
        let mut r = Reader::new("startup", body);
        match r.i32()? {
            SSL_REQUEST => Ok(Startup::Ssl),
            GSSENC_REQUEST => Ok(Startup::GssEnc),
            CANCEL_REQUEST => Ok(Startup::Cancel {
                process_id: r.i32()?,
                secret_key: r.i32()?,
            }),
            PROTOCOL_3 => {
                let mut params = Vec::new();
                loop {
                    let key = r.cstr()?;
                    if key.is_empty() {
                        break;
                    }
                    params.push((key.to_owned(), r.cstr()?.to_owned()));
                }
                Ok(Startup::Start { params })
            }
            _ => Err(FrameError::Malformed {
                what: "startup",
                why: "unsupported protocol version (only 3.0 is spoken)",
            }),
        }
    }
}

/// Messages of the query phase that the gateway looks into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Simple query: one or more statements.
    Query {
        sql: String,
    },
    /// A Query (`parse: None`) or a Parse of that statement name whose text is not UTF-8:
    /// well framed, so the session goes on, but no statement the server would run (it answers
    /// 22021 in UTF8), so nothing to judge.
    NotUtf8 {
        parse: Option<String>,
    },
    Parse {
        name: String,
        sql: String,
    },
    /// Only the names are decoded; the parameters travel untouched.
    Bind {
        portal: String,
        statement: String,
    },
    Describe {
        kind: Kind,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        kind: Kind,
        name: String,
    },
    Sync,
    Flush,
    Terminate,
    /// COPY FROM STDIN payload and its end.
    CopyData,
    CopyDone,
    CopyFail,
    /// A password, SASL or GSS response; only expected during authentication.
    Password(Bytes),
    /// FunctionCall ('F'): the fast-path interface can call any function by oid, past any
    /// statement rule, so the gateway refuses it.
    FunctionCall,
}

/// Whether Describe and Close name a prepared statement or a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Statement,
    Portal,
}

impl Kind {
    fn decode(b: u8, what: &'static str) -> Result<Kind, FrameError> {
        match b {
            b'S' => Ok(Kind::Statement),
            b'P' => Ok(Kind::Portal),
            _ => Err(FrameError::Malformed {
                what,
                why: "kind must be 'S' or 'P'",
            }),
        }
    }
}

impl Message {
    pub fn decode(tag: u8, body: &Bytes) -> Result<Message, FrameError> {
        let empty = |what: &'static str, m: Message| {
            if body.is_empty() {
                Ok(m)
            } else {
                Err(FrameError::Malformed {
                    what,
                    why: "unexpected body",
                })
            }
        };
        match tag {
            b'Q' => {
                let mut r = Reader::new("Query", body);
                let sql = r.cstr_bytes()?;
                r.finish()?;
                Ok(match std::str::from_utf8(sql) {
                    Ok(sql) => Message::Query {
                        sql: sql.to_owned(),
                    },
                    Err(_) => Message::NotUtf8 { parse: None },
                })
            }
            b'P' => {
                let mut r = Reader::new("Parse", body);
                let name = r.cstr()?.to_owned();
                let sql = std::str::from_utf8(r.cstr_bytes()?).map(str::to_owned);
                let n = r.i16()?;
                if n < 0 {
                    return Err(FrameError::Malformed {
                        what: "Parse",
                        why: "negative parameter count",
                    });
                }
                r.bytes(n as usize * 4)?;
                r.finish()?;
                Ok(match sql {
                    Ok(sql) => Message::Parse { name, sql },
                    Err(_) => Message::NotUtf8 { parse: Some(name) },
                })
            }
            b'B' => {
                let mut r = Reader::new("Bind", body);
                Ok(Message::Bind {
                    portal: r.cstr()?.to_owned(),
                    statement: r.cstr()?.to_owned(),
                })
            }
            b'D' => {
                let mut r = Reader::new("Describe", body);
                let kind = Kind::decode(r.u8()?, "Describe")?;
                let name = r.cstr()?.to_owned();
                r.finish()?;
                Ok(Message::Describe { kind, name })
            }
            b'E' => {
                let mut r = Reader::new("Execute", body);
                let portal = r.cstr()?.to_owned();
                let max_rows = r.i32()?;
                r.finish()?;
                Ok(Message::Execute { portal, max_rows })
            }
            b'C' => {
                let mut r = Reader::new("Close", body);
                let kind = Kind::decode(r.u8()?, "Close")?;
                let name = r.cstr()?.to_owned();
                r.finish()?;
                Ok(Message::Close { kind, name })
            }
            b'S' => empty("Sync", Message::Sync),
            b'H' => empty("Flush", Message::Flush),
            b'X' => empty("Terminate", Message::Terminate),
            b'd' => Ok(Message::CopyData),
            b'c' => empty("CopyDone", Message::CopyDone),
            b'f' => Ok(Message::CopyFail),
            b'p' => Ok(Message::Password(body.clone())),
            b'F' => Ok(Message::FunctionCall),
            _ => Err(FrameError::Malformed {
                what: "frontend",
                why: "unknown message type",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;

    use super::*;
    use crate::protocol::postgres::codec::frame::{next_frame, next_startup};

    fn one(build: impl FnOnce(&mut BytesMut)) -> Message {
        let mut buf = BytesMut::new();
        build(&mut buf);
        let f = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        Message::decode(f.tag, &f.body).unwrap()
    }

    type Encoder = Box<dyn FnOnce(&mut BytesMut)>;

    #[test]
    fn decodes_what_real_drivers_encode() {
        let cases: Vec<(Message, Encoder)> = vec![
            (
                Message::Query {
                    sql: "select 1; select 2".into(),
                },
                Box::new(|b| frontend::query("select 1; select 2", b).unwrap()),
            ),
            (
                Message::Parse {
                    name: "s1".into(),
                    sql: "select $1::int".into(),
                },
                Box::new(|b| frontend::parse("s1", "select $1::int", [23], b).unwrap()),
            ),
            (
                Message::Describe {
                    kind: Kind::Statement,
                    name: "s1".into(),
                },
                Box::new(|b| frontend::describe(b'S', "s1", b).unwrap()),
            ),
            (
                Message::Execute {
                    portal: "".into(),
                    max_rows: 0,
                },
                Box::new(|b| frontend::execute("", 0, b).unwrap()),
            ),
            (
                Message::Close {
                    kind: Kind::Portal,
                    name: "p".into(),
                },
                Box::new(|b| frontend::close(b'P', "p", b).unwrap()),
            ),
            (Message::Sync, Box::new(frontend::sync)),
            (Message::Flush, Box::new(frontend::flush)),
            (Message::Terminate, Box::new(frontend::terminate)),
        ];
        for (want, build) in cases {
            assert_eq!(one(build), want);
        }
    }

    #[test]
    fn startup_packets() {
        let mut buf = BytesMut::new();
        frontend::startup_message([("user", "agent"), ("database", "app")], &mut buf).unwrap();
        let body = next_startup(&mut buf).unwrap().unwrap();
        assert_eq!(
            Startup::decode(&body).unwrap(),
            Startup::Start {
                params: vec![
                    ("user".into(), "agent".into()),
                    ("database".into(), "app".into())
                ]
            }
        );
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        assert_eq!(
            Startup::decode(&next_startup(&mut buf).unwrap().unwrap()),
            Ok(Startup::Ssl)
        );
        let mut buf = BytesMut::new();
        frontend::cancel_request(7, 9, &mut buf);
        assert_eq!(
            Startup::decode(&next_startup(&mut buf).unwrap().unwrap()),
            Ok(Startup::Cancel {
                process_id: 7,
                secret_key: 9
            })
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        let cases: [(u8, &[u8]); 6] = [
            (b'Q', b"no terminator"),
            (b'Q', b"a\0trailing"),
            (b'P', b"s\0select\0\xff\xff"),
            (b'D', b"X\0"),
            (b'E', b"portal\0\0\0"),
            (b'?', b""),
        ];
        for (tag, body) in cases {
            let r = Message::decode(tag, &Bytes::copy_from_slice(body));
            assert!(r.is_err(), "{} {body:?} decoded as {r:?}", tag as char);
        }
    }
}
