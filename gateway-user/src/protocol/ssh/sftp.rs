//! SFTP (version 3, what OpenSSH's sftp, and scp since OpenSSH 9, speak) read both ways on an
//! allowed `sftp` subsystem channel. Each request that names a path is judged as a read or a
//! write of that path (lexically normalised: a `..` that climbs out of the root is refused);
//! a refused one never reaches the host, the agent gets SSH_FX_PERMISSION_DENIED for it, and
//! the session goes on. Handles are followed from the host's answers, so each file's bytes
//! read and written are audited when it is closed. A request type or extension the gateway
//! does not know is refused. No I/O here: the channel feeds bytes in and sends what comes out.

use std::collections::HashMap;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

/// OpenSSH's own limit on a packet is 256 KiB of payload; a little room for the header.
pub const MAX_PACKET: usize = 256 * 1024 + 1024;

const SSH_FX_PERMISSION_DENIED: u32 = 3;
const SSH_FXF_READ: u32 = 0x01;
const SSH_FXF_WRITE: u32 = 0x02;
const SSH_FXF_APPEND: u32 = 0x04;
const SSH_FXF_CREAT: u32 = 0x08;
const SSH_FXF_TRUNC: u32 = 0x10;

/// How a request touches a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One request as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub id: u32,
    /// `open`, `remove`, `rename`... as the audit names it.
    pub name: &'static str,
    /// Each path and how it is touched (a rename writes both).
    pub paths: Vec<(String, Access)>,
}

/// What the filter makes of a request packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Judge these paths; forward if every one is allowed.
    Judge(Op),
    /// Touches no path (or only a handle opened under a verdict already): forward.
    Pass,
    /// Malformed, or a type or extension the gateway does not read: refuse it.
    Refuse { id: u32, why: String },
}

/// A file the host opened, followed by its handle until it is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub path: String,
    pub read: u64,
    pub written: u64,
}

#[derive(Default)]
pub struct Filter {
    from_agent: BytesMut,
    from_host: BytesMut,
    /// Requests forwarded whose answer may be a handle: id -> path.
    opening: HashMap<u32, String>,
    /// READ requests in flight: id -> handle, to count the bytes of their DATA answers.
    reading: HashMap<u32, Bytes>,
    handles: HashMap<Bytes, Opened>,
    /// Ids of forwarded requests the host has not answered yet.
    in_flight: std::collections::HashSet<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("SFTP: {0}")]
pub struct SftpError(pub String);

impl Filter {
    /// The complete request packets buffered from the agent, each read.
    pub fn agent_bytes(&mut self, data: &[u8]) -> Result<Vec<(Bytes, Request)>, SftpError> {
        self.from_agent.extend_from_slice(data);
        let mut out = Vec::new();
        // Ids of this chunk's requests: they are in flight only once forwarded, after all of
        // them are read, so a second use within one chunk is caught here.
        let mut ids = std::collections::HashSet::new();
        while let Some(packet) = next_packet(&mut self.from_agent)? {
            let request = self.read_request(&packet, &mut ids);
            out.push((packet, request));
        }
        Ok(out)
    }

    /// The complete answer packets from the host, in order.
    pub fn host_bytes(&mut self, data: &[u8]) -> Result<Vec<Bytes>, SftpError> {
        self.from_host.extend_from_slice(data);
        let mut packets = Vec::new();
        while let Some(packet) = next_packet(&mut self.from_host)? {
            self.read_answer(&packet);
            packets.push(packet);
        }
        Ok(packets)
    }

    /// A request the agent sent, as forwarded; a CLOSE gives back its file's totals.
    pub fn forwarded(&mut self, packet: &[u8]) -> Option<Opened> {
        let mut r = Reader(&packet[4..]);
        let (Ok(kind), Ok(id)) = (r.u8(), r.u32()) else {
            return None;
        };
        if kind != 1 {
            // Bounded by the host: it answers every request, and the agent waits for them.
            self.in_flight.insert(id);
        }
        match kind {
            3 | 11 => {
                if let Ok(path) = r.string() {
                    self.opening.insert(
                        id,
                        normalise(&String::from_utf8_lossy(path)).unwrap_or_default(),
                    );
                }
            }
            5 => {
                if let Ok(handle) = r.string() {
                    self.reading.insert(id, Bytes::copy_from_slice(handle));
                }
            }
            6 => {
                if let (Ok(handle), Ok(_offset), Ok(data)) = (r.string(), r.u64(), r.string())
                    && let Some(f) = self.handles.get_mut(handle)
                {
                    f.written += data.len() as u64;
                }
            }
            // The host's STATUS for a close carries no handle: the file's totals are final
            // once the agent closes it.
            4 => return r.string().ok().and_then(|h| self.handles.remove(h)),
            _ => {}
        }
        None
    }

    fn read_request(&mut self, packet: &[u8], ids: &mut std::collections::HashSet<u32>) -> Request {
        let mut r = Reader(&packet[4..]);
        let Ok(kind) = r.u8() else {
            return Request::Refuse {
                id: 0,
                why: "an empty packet".into(),
            };
        };
        if kind == 1 {
            return Request::Pass; // INIT: the version, no id
        }
        let Ok(id) = r.u32() else {
            return Request::Refuse {
                id: 0,
                why: "a packet without an id".into(),
            };
        };
        // Answers are matched to requests by id (a returned handle to the path opened): an id
        // already waiting for its answer would let one open's handle pass for another's.
        if self.in_flight.contains(&id) || !ids.insert(id) {
            return Request::Refuse {
                id,
                why: format!("request id {id} is already waiting for an answer"),
            };
        }
        let path = |r: &mut Reader| -> Result<String, String> {
            let raw = r.string().map_err(|_| "a truncated packet".to_owned())?;
            let text =
                std::str::from_utf8(raw).map_err(|_| "a path that is not UTF-8".to_owned())?;
            // A server reading the path as a C string would stop at a NUL the gateway reads past.
            if text.contains('\0') {
                return Err("a path with a NUL byte".to_owned());
            }
            normalise(text).ok_or_else(|| format!("a path that climbs out of the root: {text:?}"))
        };
        let op = |name, paths| Request::Judge(Op { id, name, paths });
        let one = |r: &mut Reader, name, access| match path(r) {
            Ok(p) => op(name, vec![(p, access)]),
            Err(why) => Request::Refuse { id, why },
        };
        let two = |r: &mut Reader, name, a: Access, b: Access| match (path(r), path(r)) {
            (Ok(x), Ok(y)) => op(name, vec![(x, a), (y, b)]),
            (Err(why), _) | (_, Err(why)) => Request::Refuse { id, why },
        };
        use Access::{Read, Write};
        match kind {
            3 => {
                let p = match path(&mut r) {
                    Ok(p) => p,
                    Err(why) => return Request::Refuse { id, why },
                };
                let flags = r.u32().unwrap_or(u32::MAX);
                let writes =
                    flags & (SSH_FXF_WRITE | SSH_FXF_APPEND | SSH_FXF_CREAT | SSH_FXF_TRUNC) != 0;
                // Opened for both, the handle reads too: both must be allowed.
                let reads = flags & SSH_FXF_READ != 0 || !writes;
                let mut paths = Vec::new();
                if reads {
                    paths.push((p.clone(), Read));
                }
                if writes {
                    paths.push((p, Write));
                }
                op("open", paths)
            }
            // Handle operations: the open that made the handle was judged (and the host holds
            // a read-only handle to reading).
            4 | 5 | 6 | 8 | 12 => Request::Pass,
            // Except attributes: a handle opened for reading must not chmod its file.
            10 => match r.string().ok().and_then(|h| self.handles.get(h)) {
                Some(f) => op("fsetstat", vec![(f.path.clone(), Write)]),
                None => Request::Refuse {
                    id,
                    why: "fsetstat of a handle the gateway did not see opened".into(),
                },
            },
            7 => one(&mut r, "lstat", Read),
            9 => one(&mut r, "setstat", Write),
            11 => one(&mut r, "opendir", Read),
            13 => one(&mut r, "remove", Write),
            14 => one(&mut r, "mkdir", Write),
            15 => one(&mut r, "rmdir", Write),
            // REALPATH only resolves a name (the client's first question is the home, `.`):
            // answered without judging, as it reads and writes no file.
            16 => Request::Pass,
            17 => one(&mut r, "stat", Read),
            18 => two(&mut r, "rename", Write, Write),
            19 => one(&mut r, "readlink", Read),
            // SYMLINK's arguments are (linkpath, targetpath) in OpenSSH's order.
            // Links are refused: a link made where writes are allowed, to a place where they
            // are not, would let a later write through it escape the path rules (and a hard
            // link shares the file itself).
            20 => Request::Refuse {
                id,
                why: "symlinks are not made through the gateway".into(),
            },
            200 => {
                let Ok(name) = r.string() else {
                    return Request::Refuse {
                        id,
                        why: "a truncated extension".into(),
                    };
                };
                match name {
                    b"posix-rename@openssh.com" => two(&mut r, "rename", Write, Write),
                    b"hardlink@openssh.com" => Request::Refuse {
                        id,
                        why: "hard links are not made through the gateway".into(),
                    },
                    b"lsetstat@openssh.com" => one(&mut r, "setstat", Write),
                    b"statvfs@openssh.com" => one(&mut r, "statvfs", Read),
                    b"fstatvfs@openssh.com"
                    | b"expand-path@openssh.com"
                    | b"fsync@openssh.com"
                    | b"limits@openssh.com"
                    | b"copy-data"
                    | b"home-directory"
                    | b"users-groups-by-id@openssh.com" => Request::Pass,
                    other => Request::Refuse {
                        id,
                        why: format!(
                            "extension {:?} is not one the gateway reads",
                            String::from_utf8_lossy(other)
                        ),
                    },
                }
            }
            other => Request::Refuse {
                id,
                why: format!("request type {other} is not one the gateway reads"),
            },
        }
    }

    fn read_answer(&mut self, packet: &[u8]) {
        let mut r = Reader(&packet[4..]);
        let (Ok(kind), Ok(id)) = (r.u8(), r.u32()) else {
            return;
        };
        if kind != 2 {
            self.in_flight.remove(&id);
        }
        match kind {
            102 => {
                if let (Some(path), Ok(handle)) = (self.opening.remove(&id), r.string()) {
                    self.handles.insert(
                        Bytes::copy_from_slice(handle),
                        Opened {
                            path,
                            read: 0,
                            written: 0,
                        },
                    );
                }
            }
            103 => {
                if let (Some(handle), Ok(data)) = (self.reading.remove(&id), r.string())
                    && let Some(f) = self.handles.get_mut(&handle)
                {
                    f.read += data.len() as u64;
                }
            }
            _ => {
                self.opening.remove(&id);
                self.reading.remove(&id);
            }
        }
    }
}

/// The packet the agent reads for a refused request.
pub fn permission_denied(id: u32, message: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(101); // SSH_FXP_STATUS
    body.put_u32(id);
    body.put_u32(SSH_FX_PERMISSION_DENIED);
    body.put_u32(message.len() as u32);
    body.put_slice(message.as_bytes());
    body.put_u32(0); // language tag
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.freeze()
}

/// A path with `.`, empty and `..` components resolved lexically; None if `..` would climb
/// above the start (`/..`, or `..` first in a relative path, which the host resolves from the
/// user's home and the gateway cannot follow).
pub fn normalise(path: &str) -> Option<String> {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    Some(if absolute {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    })
}

fn next_packet(buf: &mut BytesMut) -> Result<Option<Bytes>, SftpError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(SftpError(format!("a packet of {len} bytes")));
    }
    if buf.len() < 4 + len {
        buf.reserve((4 + len - buf.len()).min(64 * 1024));
        return Ok(None);
    }
    Ok(Some(buf.split_to(4 + len).freeze()))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, ()> {
        let (&b, rest) = self.0.split_first().ok_or(())?;
        self.0 = rest;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, ()> {
        if self.0.len() < 4 {
            return Err(());
        }
        Ok(self.0.get_u32())
    }

    fn u64(&mut self) -> Result<u64, ()> {
        if self.0.len() < 8 {
            return Err(());
        }
        Ok(self.0.get_u64())
    }

    /// A string field, in place: most are only looked up or measured (a WRITE's or a DATA
    /// answer's bytes), so nothing is copied unless kept.
    fn string(&mut self) -> Result<&'a [u8], ()> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err(());
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, id: u32, fields: &[&[u8]], tail: &[u8]) -> Vec<u8> {
        let mut body = vec![kind];
        body.extend_from_slice(&id.to_be_bytes());
        for f in fields {
            body.extend_from_slice(&(f.len() as u32).to_be_bytes());
            body.extend_from_slice(f);
        }
        body.extend_from_slice(tail);
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    fn judged(f: &mut Filter, bytes: &[u8]) -> Vec<Request> {
        f.agent_bytes(bytes)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    #[test]
    fn requests_read_as_reads_and_writes_of_paths() {
        let mut f = Filter::default();
        let open = |id, path: &str, flags: u32| {
            let mut tail = flags.to_be_bytes().to_vec();
            tail.extend_from_slice(&0u32.to_be_bytes()); // attrs: no flags
            packet(3, id, &[path.as_bytes()], &tail)
        };
        use Access::{Read, Write};
        let op = |id, name, paths: &[(&str, Access)]| {
            Request::Judge(Op {
                id,
                name,
                paths: paths.iter().map(|(p, a)| ((*p).to_owned(), *a)).collect(),
            })
        };
        #[rustfmt::skip]
        let cases: Vec<(Vec<u8>, Request)> = vec![
            (open(1, "/srv/data/a.csv", 0x01), op(1, "open", &[("/srv/data/a.csv", Read)])),
            (open(2, "/srv/data/./b//c", 0x1a), op(2, "open", &[("/srv/data/b/c", Write)])),
            (open(3, "/srv/data/../../etc/shadow", 0x01), op(3, "open", &[("/etc/shadow", Read)])),
            (open(30, "/srv/drop/x", 0x03), op(30, "open", &[("/srv/drop/x", Read), ("/srv/drop/x", Write)])),
            (open(31, "/etc/shadow\0/../../srv/data/x", 0x01), Request::Refuse { id: 31, why: "a path with a NUL byte".into() }),
            (packet(13, 4, &[b"/tmp/x"], &[]), op(4, "remove", &[("/tmp/x", Write)])),
            (packet(18, 5, &[b"/a", b"/b"], &[]), op(5, "rename", &[("/a", Write), ("/b", Write)])),
            (packet(200, 6, &[b"posix-rename@openssh.com", b"/a", b"/b"], &[]), op(6, "rename", &[("/a", Write), ("/b", Write)])),
            (packet(20, 13, &[b"/srv/drop/x", b"/srv/data/evil"], &[]), Request::Refuse { id: 13, why: "symlinks are not made through the gateway".into() }),
            (packet(200, 14, &[b"hardlink@openssh.com", b"/srv/data/a", b"/srv/drop/h"], &[]), Request::Refuse { id: 14, why: "hard links are not made through the gateway".into() }),
            (packet(17, 7, &[b"/"], &[]), op(7, "stat", &[("/", Read)])),
            (packet(5, 8, &[b"h1"], &[0; 12]), Request::Pass),
            (packet(200, 9, &[b"evil@example.com"], &[]), Request::Refuse { id: 9, why: "extension \"evil@example.com\" is not one the gateway reads".into() }),
            (packet(99, 10, &[], &[]), Request::Refuse { id: 10, why: "request type 99 is not one the gateway reads".into() }),
            (packet(13, 11, &[b"/../etc/passwd"], &[]), Request::Refuse { id: 11, why: "a path that climbs out of the root: \"/../etc/passwd\"".into() }),
            (packet(13, 12, &[b"/a\xff"], &[]), Request::Refuse { id: 12, why: "a path that is not UTF-8".into() }),
        ];
        for (bytes, want) in cases {
            assert_eq!(judged(&mut f, &bytes), vec![want]);
        }
        // Split anywhere, several in one chunk: the same requests.
        let mut all = packet(17, 20, &[b"/x"], &[]);
        all.extend(packet(13, 21, &[b"/y"], &[]));
        let (a, b) = all.split_at(7);
        assert!(judged(&mut f, a).is_empty());
        assert_eq!(judged(&mut f, b).len(), 2);
        // One id twice in one chunk: the second is refused, before either is in flight.
        let mut twice = packet(3, 40, &[b"/srv/a"], &[0, 0, 0, 1, 0, 0, 0, 0]);
        twice.extend(packet(3, 40, &[b"/srv/b"], &[0, 0, 0, 1, 0, 0, 0, 0]));
        assert!(matches!(
            &judged(&mut f, &twice)[..],
            [Request::Judge(_), Request::Refuse { id: 40, .. }]
        ));
        // A hostile length ends the channel rather than buffer it.
        assert!(f.agent_bytes(&u32::MAX.to_be_bytes()).is_err());
    }

    #[test]
    fn handles_followed_for_byte_counts() {
        let mut f = Filter::default();
        let open = packet(3, 1, &[b"/srv/a"], &[0, 0, 0, 1, 0, 0, 0, 0]);
        f.forwarded(&open);
        let handle = packet(102, 1, &[b"H"], &[]);
        assert_eq!(f.host_bytes(&handle).unwrap().len(), 1);
        f.forwarded(&packet(5, 2, &[b"H"], &[0; 12]));
        let data = packet(103, 2, &[&[7u8; 100]], &[]);
        // An answer split across chunks comes out whole.
        assert!(f.host_bytes(&data[..50]).unwrap().is_empty());
        assert_eq!(
            f.host_bytes(&data[50..]).unwrap(),
            vec![Bytes::from(data.clone())]
        );
        let mut write_tail = 0u64.to_be_bytes().to_vec();
        write_tail.extend_from_slice(&3u32.to_be_bytes());
        write_tail.extend_from_slice(b"abc");
        f.forwarded(&packet(6, 3, &[b"H"], &write_tail));
        // Changing attributes through a handle is a write of its file, whatever it was opened
        // for; an unknown handle is refused.
        assert_eq!(
            judged(&mut f, &packet(10, 5, &[b"H"], &[0, 0, 0, 0])),
            vec![Request::Judge(Op {
                id: 5,
                name: "fsetstat",
                paths: vec![("/srv/a".into(), Access::Write)]
            })]
        );
        assert!(matches!(
            judged(&mut f, &packet(10, 6, &[b"nope"], &[0, 0, 0, 0]))[..],
            [Request::Refuse { id: 6, .. }]
        ));
        // An id reused while its first request waits is refused, until the answer comes.
        let again = packet(3, 1, &[b"/srv/b"], &[0, 0, 0, 1, 0, 0, 0, 0]);
        f.forwarded(&again);
        assert!(matches!(
            judged(&mut f, &again)[..],
            [Request::Refuse { id: 1, .. }]
        ));
        f.host_bytes(&packet(101, 1, &[], &[0; 4])).unwrap();
        assert!(matches!(judged(&mut f, &again)[..], [Request::Judge(_)]));
        let closed = f.forwarded(&packet(4, 4, &[b"H"], &[])).unwrap();
        assert_eq!(
            closed,
            Opened {
                path: "/srv/a".into(),
                read: 100,
                written: 3
            }
        );
        let denied = permission_denied(9, "no");
        assert_eq!(&denied[4..9], &[101, 0, 0, 0, 9]);
        assert_eq!(normalise("a/../.."), None);
        assert_eq!(normalise("./x/").as_deref(), Some("x"));
    }
}
