//! The tamper-evident chain: what is hashed and how, and the state that carries it across
//! sessions and restarts.
//!
//! - A session's **opening hash** is SHA-256 of the canonical JSON (keys sorted, no spaces) of
//!   the fields a session has from its first write on ([`OPENING`]) plus its link: `prev_id`,
//!   the session opened before it, and `prev`, that session's opening hash. So sessions form
//!   one chain in the order they were opened, and deleting one breaks the link after it.
//! - Each **event line** is the event's JSON with `"prev"` appended: the hash of the line
//!   before it, or the session's opening hash for the first. A line's hash is SHA-256 of its
//!   stored bytes, so no re-encoding can disagree about what was hashed.
//! - The **seal**, written with the record when the session ends, holds the count of events,
//!   the hash of the last one and `hash`: SHA-256 of the canonical JSON of the whole stored
//!   record without `hash` itself, so nothing of the final record can change unnoticed.
//!
//! The stored record is the [`SessionRecord`](super::SessionRecord)'s JSON with a `chain`
//! member ([`ChainFields`]); readers that do not know it ignore it. The tree `meta` holds the
//! head (the last session opened, which the next one chains from, across restarts) and the
//! anchors left by pruning (the hashes that the oldest remaining sessions chain from).
//! Anyone who can write the store can recompute every hash: the chain shows edits, it does not
//! prevent them. Anchoring the head hash elsewhere (`audit verify` prints it) closes that.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64},
    },
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub type Hash = [u8; 32];
pub const ZERO: Hash = [0; 32];

/// The record fields fixed when a session opens; the opening hash covers exactly these.
pub const OPENING: [&str; 10] = [
    "id",
    "started_at_ms",
    "agent",
    "peer",
    "policy",
    "destination",
    "target",
    "protocol",
    "verdict",
    "rule",
];

pub const HEAD_KEY: &[u8] = b"head";
pub const ANCHORS_KEY: &[u8] = b"anchors";

/// The `chain` member of a stored session record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainFields {
    /// The session opened just before this one; `None` for the first of the store.
    pub prev_id: Option<u64>,
    #[serde(with = "hex_serde")]
    pub prev: Hash,
    /// This session's opening hash: its first event chains from it, and so does the next
    /// session.
    #[serde(with = "hex_serde")]
    pub open: Hash,
    /// Set when the session ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Seal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub events: u64,
    /// The last event's hash; the opening hash when there were none.
    #[serde(with = "hex_serde")]
    pub last: Hash,
    #[serde(with = "hex_serde")]
    pub hash: Hash,
}

/// Where the chain of sessions ends: the next session to open links to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub id: u64,
    #[serde(with = "hex_serde")]
    pub open: Hash,
}

/// How far a session's events have been chained by the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    pub last: Hash,
    pub events: u64,
}

/// Chain state shared by the clones of one store and its writer thread.
#[derive(Default)]
pub struct Chains {
    /// `None` until the first opening write loads it from `meta` (a store opened only to read
    /// never needs it). Held while a session is chained, so that links follow write order.
    pub head: Mutex<Option<Option<Head>>>,
    /// Sessions opened by this process and not sealed yet.
    pub tails: Mutex<HashMap<u64, Tail>>,
    /// Events handed to the writer, and events it has chained: when equal, every tail is
    /// current and a seal needs no wait for the writer.
    pub appended: AtomicU64,
    pub written: AtomicU64,
    /// Sessions some of whose events the writer could not store: they must not forward
    /// another statement (what they run would go unrecorded). Cleared at the seal.
    pub lost: Mutex<std::collections::HashSet<u64>>,
    /// Set once anything was added to `lost`, so that a healthy store's sessions do not take
    /// its lock for every message.
    pub any_lost: AtomicBool,
    /// Ends that could not be written while the store was broken, written once it reopens.
    pub pending_ends: Mutex<Vec<super::SessionRecord>>,
}

impl Chains {
    pub fn mark_lost(&self, sessions: impl IntoIterator<Item = u64>) {
        super::writer::lock(&self.lost).extend(sessions);
        self.any_lost
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

pub fn sha256(bytes: &[u8]) -> Hash {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut h = ZERO;
    h.copy_from_slice(d.as_ref());
    h
}

pub fn write_hex(h: &Hash, out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in h {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

pub fn hex(h: &Hash) -> String {
    let mut out = Vec::with_capacity(64);
    write_hex(h, &mut out);
    String::from_utf8(out).expect("hex digits")
}

pub fn parse_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut h = ZERO;
    for (i, byte) in h.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

mod hex_serde {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(h: &super::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(h))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<super::Hash, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hex(&s).ok_or_else(|| D::Error::custom("not a SHA-256 hex digest"))
    }
}

/// JSON with object keys sorted at every level and no whitespace: one byte form per value,
/// whatever order a map kept its keys in.
pub fn canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("a string encodes");
                out.push(b':');
                canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("a scalar encodes"),
    }
}

fn hash_canonical(v: &Value) -> Hash {
    let mut bytes = Vec::with_capacity(512);
    canonical(v, &mut bytes);
    sha256(&bytes)
}

/// The opening hash of a stored (or about to be stored) record: its [`OPENING`] fields and
/// its link, read from `chain`.
pub fn opening_hash(record: &Value, prev_id: Option<u64>, prev: &Hash) -> Hash {
    let mut form = serde_json::Map::new();
    for k in OPENING {
        if let Some(v) = record.get(k) {
            form.insert(k.to_owned(), v.clone());
        }
    }
    form.insert(
        "chain".into(),
        serde_json::json!({ "prev_id": prev_id, "prev": hex(prev) }),
    );
    hash_canonical(&Value::Object(form))
}

/// The seal hash of a record whose `chain.seal` holds `events` and `last` (its own `hash`
/// member, if any, is left out).
pub fn seal_hash(record: &Value) -> Hash {
    let mut v = record.clone();
    if let Some(seal) = v
        .get_mut("chain")
        .and_then(|c| c.get_mut("seal"))
        .and_then(Value::as_object_mut)
    {
        seal.remove("hash");
    }
    hash_canonical(&v)
}

/// The record as stored: its JSON with `chain`, sealed when `seal` gives (events, last).
pub fn stored_form(
    record: &super::SessionRecord,
    prev_id: Option<u64>,
    prev: Hash,
    seal: Option<(u64, Hash)>,
) -> Result<(Vec<u8>, ChainFields), serde_json::Error> {
    let mut v = serde_json::to_value(record)?;
    let open = opening_hash(&v, prev_id, &prev);
    let mut chain = ChainFields {
        prev_id,
        prev,
        open,
        seal: None,
    };
    if let Some((events, last)) = seal {
        v["chain"] = serde_json::json!({
            "prev_id": prev_id,
            "prev": hex(&prev),
            "open": hex(&open),
            "seal": { "events": events, "last": hex(&last) },
        });
        chain.seal = Some(Seal {
            events,
            last,
            hash: seal_hash(&v),
        });
    }
    v["chain"] = serde_json::to_value(&chain)?;
    Ok((serde_json::to_vec(&v)?, chain))
}

/// The `chain` member of a stored record, if it has one.
pub fn chain_of(stored: &[u8]) -> Option<ChainFields> {
    #[derive(Deserialize)]
    struct Only {
        chain: Option<ChainFields>,
    }
    serde_json::from_slice::<Only>(stored).ok()?.chain
}

/// Appends `prev` to an event's JSON (`{...}` becomes `{...,"prev":"<hex>"}`) and returns the
/// hash of the line so made. `line` must be exactly one JSON object.
pub fn chain_line(line: &mut Vec<u8>, start: usize, prev: &Hash) -> Hash {
    debug_assert_eq!(line.last(), Some(&b'}'));
    line.pop();
    line.extend_from_slice(b",\"prev\":\"");
    write_hex(prev, line);
    line.extend_from_slice(b"\"}");
    sha256(&line[start..])
}

/// The anchors pruning left: session id -> the opening hash it had.
pub fn decode_anchors(bytes: Option<&[u8]>) -> BTreeMap<u64, Hash> {
    #[derive(Deserialize)]
    struct A(#[serde(with = "hex_serde")] Hash);
    bytes
        .and_then(|b| serde_json::from_slice::<BTreeMap<u64, A>>(b).ok())
        .map(|m| m.into_iter().map(|(k, A(h))| (k, h)).collect())
        .unwrap_or_default()
}

pub fn encode_anchors(anchors: &BTreeMap<u64, Hash>) -> Vec<u8> {
    let m: BTreeMap<String, String> = anchors
        .iter()
        .map(|(k, h)| (k.to_string(), hex(h)))
        .collect();
    serde_json::to_vec(&m).expect("strings encode")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_canonical_form_ignores_key_order() {
        let h = sha256(b"abc");
        assert_eq!(
            hex(&h),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hex(&hex(&h)), Some(h));
        assert_eq!(parse_hex("zz"), None);
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"y":[1,"x"],"x":null}}"#).unwrap();
        let mut out = Vec::new();
        canonical(&a, &mut out);
        assert_eq!(out, br#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#);
    }

    #[test]
    fn a_chained_line_is_the_event_with_prev_and_hashes_its_own_bytes() {
        let mut buf = b"xx{\"seq\":1}".to_vec();
        let h = chain_line(&mut buf, 2, &ZERO);
        let line = &buf[2..];
        assert!(line.starts_with(b"{\"seq\":1,\"prev\":\"0000"));
        assert_eq!(h, sha256(line));
        let v: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(v["prev"], hex(&ZERO));
    }
}
