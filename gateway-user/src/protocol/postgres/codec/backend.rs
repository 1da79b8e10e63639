//! Messages of the server side: the ones the gateway writes to the agent itself (errors,
//! authentication, key data) and the ones from the upstream it must look into.

use bytes::{BufMut as _, Bytes, BytesMut};

use super::frame::{Frame, FrameError, Reader};

/// An ErrorResponse or NoticeResponse, with the fields the gateway sets or reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorFields {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "FATAL".into(),
            ..Self::error(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        let mut field = |t: u8, v: &str| {
            body.put_u8(t);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        };
        field(b'S', &self.severity);
        field(b'V', &self.severity);
        field(b'C', &self.code);
        field(b'M', &self.message);
        if let Some(d) = &self.detail {
            field(b'D', d);
        }
        if let Some(h) = &self.hint {
            field(b'H', h);
        }
        body.put_u8(0);
        frame(b'E', body.freeze(), out);
    }

    /// Reads the fields of an upstream ErrorResponse or NoticeResponse.
    pub fn decode(body: &[u8]) -> Result<ErrorFields, FrameError> {
        let mut r = Reader::new("ErrorResponse", body);
        let mut e = ErrorFields::default();
        loop {
            let t = r.u8()?;
            if t == 0 {
                return Ok(e);
            }
            let v = r.cstr()?.to_owned();
            match t {
                b'S' => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                _ => {}
            }
        }
    }
}

fn frame(tag: u8, body: Bytes, out: &mut BytesMut) {
    Frame { tag, body }.encode(out)
}

pub fn authentication_ok(out: &mut BytesMut) {
    frame(b'R', Bytes::from_static(&[0, 0, 0, 0]), out);
}

pub fn authentication_cleartext(out: &mut BytesMut) {
    frame(b'R', Bytes::from_static(&[0, 0, 0, 3]), out);
}

pub fn parameter_status(name: &str, value: &str, out: &mut BytesMut) {
    let mut body = BytesMut::with_capacity(name.len() + value.len() + 2);
    body.put_slice(name.as_bytes());
    body.put_u8(0);
    body.put_slice(value.as_bytes());
    body.put_u8(0);
    frame(b'S', body.freeze(), out);
}

pub fn backend_key_data(process_id: i32, secret_key: i32, out: &mut BytesMut) {
    let mut body = BytesMut::with_capacity(8);
    body.put_i32(process_id);
    body.put_i32(secret_key);
    frame(b'K', body.freeze(), out);
}

pub fn ready_for_query(status: u8, out: &mut BytesMut) {
    frame(b'Z', Bytes::copy_from_slice(&[status]), out);
}

/// A column of a RowDescription: what masking needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

pub fn row_description(body: &[u8]) -> Result<Vec<Column>, FrameError> {
    let mut r = Reader::new("RowDescription", body);
    let n = r.i16()?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let name = r.cstr()?.to_owned();
        let _table_oid = r.i32()?;
        let _attnum = r.i16()?;
        let type_oid = r.i32()? as u32;
        let _size = r.i16()?;
        let _modifier = r.i32()?;
        let format = r.i16()?;
        cols.push(Column {
            name,
            type_oid,
            format,
        });
    }
    r.finish()?;
    Ok(cols)
}

/// The values of a DataRow; `None` is SQL NULL.
pub fn data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, FrameError> {
    let mut r = Reader::new("DataRow", body);
    let n = r.i16()?;
    let mut values = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = r.i32()?;
        values.push(if len < 0 {
            None
        } else {
            Some(r.bytes(len as usize)?)
        });
    }
    r.finish()?;
    Ok(values)
}

pub fn encode_data_row<'a>(
    values: impl ExactSizeIterator<Item = Option<&'a [u8]>>,
    out: &mut BytesMut,
) {
    let mut body = BytesMut::new();
    body.put_i16(values.len() as i16);
    for v in values {
        match v {
            None => body.put_i32(-1),
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v);
            }
        }
    }
    frame(b'D', body.freeze(), out);
}

/// Rows a CommandComplete tag reports (`SELECT 5`, `INSERT 0 3`, `UPDATE 2`), if any.
pub fn command_rows(body: &[u8]) -> Option<u64> {
    let tag = std::str::from_utf8(body.strip_suffix(&[0])?).ok()?;
    tag.rsplit(' ').next()?.parse().ok()
}

/// Authentication requests of the upstream, by their code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<String> },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    Other(i32),
}

impl Auth {
    pub fn decode(body: &Bytes) -> Result<Auth, FrameError> {
        let mut r = Reader::new("Authentication", body);
        Ok(match r.i32()? {
            0 => Auth::Ok,
            3 => Auth::Cleartext,
            5 => {
                let s = r.bytes(4)?;
                Auth::Md5 {
                    salt: [s[0], s[1], s[2], s[3]],
                }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m.to_owned());
                }
                Auth::Sasl { mechanisms }
            }
            11 => Auth::SaslContinue(body.slice(4..)),
            12 => Auth::SaslFinal(body.slice(4..)),
            n => Auth::Other(n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::codec::frame::next_frame;

    #[test]
    fn error_response_round_trips() {
        let e = ErrorFields::error("42501", "refused")
            .with_detail("rule x")
            .with_hint("ask");
        let mut buf = BytesMut::new();
        e.encode(&mut buf);
        let f = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        assert_eq!(ErrorFields::decode(&f.body).unwrap(), e);
    }

    #[test]
    fn data_rows_round_trip_with_nulls() {
        let values: Vec<Option<&[u8]>> = vec![Some(b"a"), None, Some(b"")];
        let mut buf = BytesMut::new();
        encode_data_row(values.clone().into_iter(), &mut buf);
        let f = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(data_row(&f.body).unwrap(), values);
        assert!(data_row(&f.body[..f.body.len() - 1]).is_err());
    }

    #[test]
    fn command_tags() {
        for (tag, rows) in [
            (&b"SELECT 5\0"[..], Some(5)),
            (b"INSERT 0 3\0", Some(3)),
            (b"UPDATE 0\0", Some(0)),
            (b"BEGIN\0", None),
            (b"CREATE TABLE\0", None),
        ] {
            assert_eq!(command_rows(tag), rows, "{tag:?}");
        }
    }
}
