//! Detectors of sensitive fragments (e-mail addresses, card numbers, national ids, phone
//! numbers, IBANs, API keys, JWTs) in any text an agent can receive: SQL values, JSON values,
//! HTTP bodies, terminal output. Each finding is replaced by `[redacted:<detector>]`.
//!
//! Scanners work on bytes and only ever cut at ASCII bytes, so every match boundary is a valid
//! `str` boundary. Nothing is allocated until something matches, because this runs once per
//! value on the hot path.

mod scan;

use std::cmp::Reverse;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use scan::Found;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    Email,
    Card,
    NationalId,
    Phone,
    Iban,
    ApiKey,
    Jwt,
}

impl Detector {
    pub const ALL: [Detector; 7] = [
        Detector::Email,
        Detector::Card,
        Detector::NationalId,
        Detector::Phone,
        Detector::Iban,
        Detector::ApiKey,
        Detector::Jwt,
    ];

    pub fn as_str(self) -> &'static str {
        TABLE[self as usize].0
    }

    fn replacement(self) -> &'static str {
        TABLE[self as usize].1
    }

    /// When two findings cover exactly the same bytes, the more specific
    /// detector names it in the audit.
    fn specificity(self) -> u8 {
        TABLE[self as usize].2
    }

    fn scan(self, b: &[u8], out: &mut Vec<Found>) {
        match self {
            Detector::Email => scan::email(b, out),
            Detector::Card => scan::card(b, out),
            Detector::NationalId => scan::national_id(b, out),
            Detector::Phone => scan::phone(b, out),
            Detector::Iban => scan::iban(b, out),
            Detector::ApiKey => scan::api_key(b, out),
            Detector::Jwt => scan::jwt(b, out),
        }
    }
}

/// Name, replacement text and tie-break rank, indexed by `Detector as usize`.
const TABLE: [(&str, &str, u8); 7] = [
    ("email", "[redacted:email]", 5),
    ("card", "[redacted:card]", 2),
    ("national_id", "[redacted:national_id]", 3),
    ("phone", "[redacted:phone]", 6),
    ("iban", "[redacted:iban]", 1),
    ("api_key", "[redacted:api_key]", 4),
    ("jwt", "[redacted:jwt]", 0),
];

/// How many fragments each detector replaced in one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DetectorCounts([u32; 7]);

impl DetectorCounts {
    pub fn get(&self, d: Detector) -> u32 {
        self.0[d as usize]
    }

    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }

    pub fn add(&mut self, other: &DetectorCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Detector, u32)> + '_ {
        Detector::ALL
            .into_iter()
            .map(|d| (d, self.get(d)))
            .filter(|(_, n)| *n > 0)
    }
}

impl Serialize for DetectorCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (d, n) in self.iter() {
            map.serialize_entry(d.as_str(), &n)?;
        }
        map.end()
    }
}

/// A set of detectors, each at most once, run together over a text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detectors(Vec<Detector>);

impl Detectors {
    pub fn new(detectors: impl IntoIterator<Item = Detector>) -> Detectors {
        let mut unique = Vec::new();
        for d in detectors {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        Detectors(unique)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes that may not be UTF-8 (error fields, output chunks): read lossily, so that an
    /// invalid byte cannot hide a finding from the scanners.
    pub fn mask_bytes(&self, value: &[u8]) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        self.mask(&String::from_utf8_lossy(value)).map(|(s, _)| s)
    }

    /// The text with every finding replaced, and how many each detector replaced; None when
    /// nothing was found.
    pub fn mask(&self, value: &str) -> Option<(String, DetectorCounts)> {
        let bytes = value.as_bytes();
        // Most values hold neither digits nor `@`; one pass lets those skip
        // the scanners that could not match anyway.
        let has_digit = bytes.iter().any(u8::is_ascii_digit);
        let mut found = Vec::new();
        for &d in &self.0 {
            let possible = match d {
                Detector::Email => bytes.contains(&b'@'),
                Detector::Card | Detector::NationalId | Detector::Phone | Detector::Iban => {
                    has_digit
                }
                Detector::ApiKey | Detector::Jwt => true,
            };
            if possible {
                d.scan(bytes, &mut found);
            }
        }
        if found.is_empty() {
            return None;
        }
        found.sort_by_key(|f| (f.start, Reverse(f.end), f.detector.specificity()));
        let mut out = String::with_capacity(value.len() + 16);
        let mut counts = DetectorCounts::default();
        let mut pos = 0;
        for f in found {
            // Findings overlap (a JWT segment is also a long token); the
            // earliest, longest one wins so each byte is redacted once.
            if f.start < pos {
                continue;
            }
            out.push_str(&value[pos..f.start]);
            out.push_str(f.detector.replacement());
            counts.0[f.detector as usize] += 1;
            pos = f.end;
        }
        out.push_str(&value[pos..]);
        Some((out, counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_text_not_only_sql_values() {
        let all = Detectors::new(Detector::ALL);
        // A JSON body and a line of terminal output, as HTTP and SSH recordings carry them.
        let json = r#"{"user":"ana@example.com","card":"4111 1111 1111 1111"}"#;
        let (out, counts) = all.mask(json).unwrap();
        assert_eq!(
            out,
            r#"{"user":"[redacted:email]","card":"[redacted:card]"}"#
        );
        assert_eq!((counts.get(Detector::Email), counts.total()), (1, 2));
        // Terminal output is bytes: an invalid byte next to a finding does not hide it.
        let term = b"$ whoami\r\n\xffana@example.com\r\n";
        assert_eq!(
            all.mask_bytes(term).as_deref(),
            Some("$ whoami\r\n\u{fffd}[redacted:email]\r\n")
        );
        assert_eq!(all.mask("nothing here"), None);
        assert_eq!(Detectors::default().mask_bytes(b"ana@example.com"), None);
    }
}
