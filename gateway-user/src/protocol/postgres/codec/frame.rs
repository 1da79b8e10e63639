//! Message framing of the PostgreSQL wire protocol, without I/O: a buffer in, whole frames
//! out. Startup-phase messages have no type byte; every later one is `tag, i32 len, body`.

use bytes::{Buf as _, Bytes, BytesMut};

/// The largest message an agent may send: a Bind's parameters or a CopyData chunk.
/// PostgreSQL's own limit is 1 GiB; a gateway that buffers whole messages refuses long before.
pub const MAX_AGENT_MESSAGE: usize = 16 * 1024 * 1024;
/// The largest Query or Parse: the judge refuses statements over 1 MiB anyway
/// (`judge::MAX_STATEMENT`), so more is refused before it is buffered.
pub const MAX_AGENT_STATEMENT_MESSAGE: usize = (1 << 20) + 64 * 1024;

/// What an agent's message of type `tag` may weigh.
pub fn agent_limit(tag: u8) -> usize {
    match tag {
        b'Q' | b'P' => MAX_AGENT_STATEMENT_MESSAGE,
        _ => MAX_AGENT_MESSAGE,
    }
}
/// Upstream messages are relayed as they are, but still framed whole (DataRow masking); past
/// [`crate::memory::FREE_MESSAGE`] each takes its size from the daemon's memory budget.
pub const MAX_UPSTREAM_MESSAGE: usize = 1024 * 1024 * 1024;
/// What the upstream sends while the gateway logs in (authentication, parameters, notices).
pub const MAX_UPSTREAM_LOGIN_MESSAGE: usize = 1024 * 1024;
/// Startup packets are small; PostgreSQL caps them at 10000 bytes.
pub const MAX_STARTUP: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message length {0} is invalid")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("malformed {what} message: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
}

/// One typed message: its tag and body (the length word stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    /// The frame as it travels on the wire.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.extend_from_slice(&[self.tag]);
        out.extend_from_slice(&((self.body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(&self.body);
    }

    pub fn wire_len(&self) -> usize {
        5 + self.body.len()
    }
}

/// Takes one typed message off the front of `buf`, if it is all there.
pub fn next_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, FrameError> {
    next_frame_by(buf, |_| limit)
}

/// [`next_frame`] with a limit by message type, checked on the header, before the body is
/// buffered.
pub fn next_frame_by(
    buf: &mut BytesMut,
    limit: impl Fn(u8) -> usize,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len.into()));
    }
    let len = len as usize;
    let limit = limit(buf[0]);
    if len > limit {
        return Err(FrameError::TooLong { len, limit });
    }
    if buf.len() < len + 1 {
        // Room for what is likely to arrive next, not for what the header claims: memory
        // follows the bytes actually received, so a large declared length costs nothing
        // until it is sent.
        buf.reserve((len + 1 - buf.len()).min(64 * 1024));
        return Ok(None);
    }
    let tag = buf[0];
    buf.advance(5);
    let body = buf.split_to(len - 4).freeze();
    Ok(Some(Frame { tag, body }))
}

/// The wire length of the typed message at the front of `buf`, once its header is there:
/// what receiving it whole will hold.
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    let len = i32::from_be_bytes(buf.get(1..5)?.try_into().ok()?);
    usize::try_from(len).ok().map(|n| n + 1)
}

/// Takes one untyped startup-phase packet (its body after the length word) off `buf`.
pub fn next_startup(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(FrameError::BadLength(len.into()));
    }
    let len = len as usize;
    if len > MAX_STARTUP {
        return Err(FrameError::TooLong {
            len,
            limit: MAX_STARTUP,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len - 4).freeze()))
}

/// A cursor over a message body with the protocol's primitive types.
pub struct Reader<'a> {
    what: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(what: &'static str, buf: &'a [u8]) -> Self {
        Reader { what, buf }
    }

    fn malformed(&self, why: &'static str) -> FrameError {
        FrameError::Malformed {
            what: self.what,
            why,
        }
    }

    pub fn cstr(&mut self) -> Result<&'a str, FrameError> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.malformed("not UTF-8"))
    }

    /// A NUL-terminated string as bytes, whatever their encoding.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.malformed("unterminated string"))?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| self.malformed("truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, FrameError> {
        Ok(i16::from_be_bytes(self.take::<2>()?))
    }

    pub fn i32(&mut self) -> Result<i32, FrameError> {
        Ok(i32::from_be_bytes(self.take::<4>()?))
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        if self.buf.len() < N {
            return Err(self.malformed("truncated"));
        }
        let (head, rest) = self.buf.split_at(N);
        self.buf = rest;
        Ok(head.try_into().expect("length checked"))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.malformed("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_whole_or_not_at_all() {
        let mut wire = BytesMut::new();
        Frame {
            tag: b'Q',
            body: Bytes::from_static(b"select 1\0"),
        }
        .encode(&mut wire);
        let full = wire.clone();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(next_frame(&mut part, 1024), Ok(None), "cut at {cut}");
        }
        let frame = next_frame(&mut wire, 1024).unwrap().unwrap();
        assert_eq!((frame.tag, &frame.body[..]), (b'Q', &b"select 1\0"[..]));
        assert!(wire.is_empty());
    }

    #[test]
    fn bad_lengths_are_errors() {
        let cases: [(&[u8], FrameError); 3] = [
            (b"Q\0\0\0\x03", FrameError::BadLength(3)),
            (b"Q\xff\xff\xff\xff", FrameError::BadLength(-1)),
            (
                b"Q\x00\x10\x00\x00",
                FrameError::TooLong {
                    len: 0x100000,
                    limit: 1024,
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(next_frame(&mut BytesMut::from(bytes), 1024), Err(want));
        }
        assert_eq!(
            next_startup(&mut BytesMut::from(&b"\0\0\0\x04"[..])),
            Err(FrameError::BadLength(4))
        );
    }

    #[test]
    fn reader_reports_truncation() {
        let mut r = Reader::new("Bind", b"portal\0st");
        assert_eq!(r.cstr(), Ok("portal"));
        assert!(matches!(
            r.cstr(),
            Err(FrameError::Malformed { what: "Bind", .. })
        ));
    }

    fn header(tag: u8, len: usize) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[tag]);
        b.extend_from_slice(&(len as i32).to_be_bytes());
        b
    }

    #[test]
    fn statements_past_the_judges_bound_are_refused_on_their_header() {
        let mut b = header(b'Q', 4 << 20);
        assert_eq!(
            next_frame_by(&mut b, agent_limit),
            Err(FrameError::TooLong {
                len: 4 << 20,
                limit: MAX_AGENT_STATEMENT_MESSAGE
            })
        );
        // A Bind may be larger, up to the message limit.
        let mut b = header(b'B', 4 << 20);
        assert_eq!(next_frame_by(&mut b, agent_limit), Ok(None));
    }

    #[test]
    fn memory_follows_the_bytes_received_not_the_length_declared() {
        let mut b = header(b'B', MAX_AGENT_MESSAGE);
        b.extend_from_slice(&[0; 100]);
        assert_eq!(next_frame_by(&mut b, agent_limit), Ok(None));
        assert!(b.capacity() < 256 * 1024, "{}", b.capacity());
    }
}
