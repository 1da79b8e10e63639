//! The scanners, one per detector: hand-written over bytes, linear in the text.

use super::Detector;

pub(super) struct Found {
    pub start: usize,
    pub end: usize,
    pub detector: Detector,
}

fn push(out: &mut Vec<Found>, start: usize, end: usize, detector: Detector) {
    out.push(Found {
        start,
        end,
        detector,
    });
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn is_token(c: u8) -> bool {
    is_word(c) || c == b'-'
}

fn digit_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(u8::is_ascii_digit)
}

/// A number may start here only if it is not the tail of a longer word or
/// number (`x4111…`, `12-4111…`, `3.4111…`), which would make it something else.
fn number_starts(b: &[u8], i: usize) -> bool {
    if i == 0 {
        return true;
    }
    let p = b[i - 1];
    !(is_word(p) || p == b'+' || (matches!(p, b'-' | b'.' | b',') && i >= 2 && digit_at(b, i - 2)))
}

fn number_ends(b: &[u8], j: usize) -> bool {
    match b.get(j) {
        None => true,
        Some(&n) => !(is_word(n) || (matches!(n, b'-' | b'.' | b',') && digit_at(b, j + 1))),
    }
}

pub(super) fn email(b: &[u8], out: &mut Vec<Found>) {
    let is_local = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let is_domain = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    for at in 0..b.len() {
        if b[at] != b'@' {
            continue;
        }
        let mut s = at;
        while s > 0 && is_local(b[s - 1]) {
            s -= 1;
        }
        while s < at && b[s] == b'.' {
            s += 1;
        }
        let mut e = at + 1;
        while e < b.len() && is_domain(b[e]) {
            e += 1;
        }
        while e > at + 1 && matches!(b[e - 1], b'.' | b'-') {
            e -= 1;
        }
        if s < at && valid_domain(&b[at + 1..e]) {
            push(out, s, e, Detector::Email);
        }
    }
}

fn valid_domain(d: &[u8]) -> bool {
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in d.split(|&c| c == b'.') {
        if label.is_empty() || label.len() > 63 || label[0] == b'-' {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

/// Digit groups separated by single spaces or dashes, e.g. `4111 1111 1111 1111`.
pub(super) fn card(b: &[u8], out: &mut Vec<Found>) {
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || !number_starts(b, i) {
            i += 1;
            continue;
        }
        // Collect the run's groups; a fixed array keeps this allocation-free.
        let mut groups = [(0usize, 0usize); 24];
        let mut n = 0;
        let mut j = i;
        loop {
            let start = j;
            while digit_at(b, j) {
                j += 1;
            }
            if n < groups.len() {
                groups[n] = (start, j);
                n += 1;
            }
            if matches!(b.get(j), Some(b' ' | b'-')) && digit_at(b, j + 1) {
                j += 1;
            } else {
                break;
            }
        }
        if number_ends(b, j) {
            card_in_groups(b, &groups[..n], out);
        }
        i = j + 1;
    }
}

/// Tries the longest run of whole groups first so `qty 3 4111…` still finds
/// the card after the stray `3`.
fn card_in_groups(b: &[u8], groups: &[(usize, usize)], out: &mut Vec<Found>) {
    let mut a = 0;
    while a < groups.len() {
        let mut best = None;
        let mut digits = 0;
        for (z, &(gs, ge)) in groups.iter().enumerate().skip(a) {
            // Cards are printed in groups of four or more; only the last may be short.
            if z > a && groups[z - 1].1 - groups[z - 1].0 < 4 {
                break;
            }
            digits += ge - gs;
            if digits > 19 {
                break;
            }
            if digits >= 13 && luhn(&b[groups[a].0..ge]) {
                best = Some(z);
            }
        }
        match best {
            Some(z) => {
                push(out, groups[a].0, groups[z].1, Detector::Card);
                a = z + 1;
            }
            None => a += 1,
        }
    }
}

fn luhn(s: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for &c in s.iter().rev().filter(|c| c.is_ascii_digit()) {
        let mut d = u32::from(c - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum.is_multiple_of(10)
}

pub(super) fn national_id(b: &[u8], out: &mut Vec<Found>) {
    let mut i = 0;
    while i < b.len() {
        let found = match b[i] {
            b'0'..=b'9' => ssn_at(b, i),
            b'A'..=b'Z' | b'a'..=b'z' => nino_at(b, i),
            _ => None,
        };
        match found {
            Some(end) => {
                push(out, i, end, Detector::NationalId);
                i = end;
            }
            None => i += 1,
        }
    }
}

/// US SSN `ddd-dd-dddd`; area 000, 666 and 9xx, group 00 and serial 0000
/// are never issued, so excluding them avoids masking look-alikes.
fn ssn_at(b: &[u8], i: usize) -> Option<usize> {
    let s = b.get(i..i + 11)?;
    if !s[0].is_ascii_digit() || s[3] != b'-' {
        return None;
    }
    let shape = s.iter().enumerate().all(|(k, &c)| match k {
        3 | 6 => c == b'-',
        _ => c.is_ascii_digit(),
    });
    if !shape || !number_starts(b, i) || !number_ends(b, i + 11) {
        return None;
    }
    let valid = &s[..3] != b"000" && &s[..3] != b"666" && s[0] != b'9';
    (valid && &s[4..6] != b"00" && &s[7..11] != b"0000").then_some(i + 11)
}

/// UK National Insurance number `AB 12 34 56 C`, spaces optional.
fn nino_at(b: &[u8], i: usize) -> Option<usize> {
    if !b[i].is_ascii_alphabetic() || (i > 0 && is_word(b[i - 1])) {
        return None;
    }
    let up = |k: usize| b.get(k).map(u8::to_ascii_uppercase);
    let (p1, p2) = (up(i)?, up(i + 1)?);
    if !p1.is_ascii_alphabetic()
        || !p2.is_ascii_alphabetic()
        || b"DFIQUV".contains(&p1)
        || b"DFIOQUV".contains(&p2)
        || [*b"BG", *b"GB", *b"NK", *b"KN", *b"TN", *b"NT", *b"ZZ"].contains(&[p1, p2])
    {
        return None;
    }
    let mut j = i + 2;
    for _ in 0..3 {
        if b.get(j) == Some(&b' ') {
            j += 1;
        }
        if !(digit_at(b, j) && digit_at(b, j + 1)) {
            return None;
        }
        j += 2;
    }
    if b.get(j) == Some(&b' ') {
        j += 1;
    }
    let suffix = up(j)?;
    let end = j + 1;
    (matches!(suffix, b'A'..=b'D') && !b.get(end).copied().is_some_and(is_word)).then_some(end)
}

pub(super) fn phone(b: &[u8], out: &mut Vec<Found>) {
    let mut i = 0;
    while i < b.len() {
        let end = match b[i] {
            b'+' => e164_at(b, i),
            b'(' | b'0'..=b'9' => nanp_at(b, i),
            _ => None,
        };
        match end {
            Some(e) => {
                push(out, i, e, Detector::Phone);
                i = e;
            }
            None => i += 1,
        }
    }
}

/// `+` then 8–15 digits, allowing the usual visual separators.
fn e164_at(b: &[u8], i: usize) -> Option<usize> {
    if (i > 0 && (is_word(b[i - 1]) || b[i - 1] == b'+'))
        || !matches!(b.get(i + 1), Some(b'1'..=b'9'))
    {
        return None;
    }
    let (mut j, mut digits, mut end, mut seps) = (i + 1, 0, i + 1, 0);
    while let Some(&c) = b.get(j) {
        if c.is_ascii_digit() {
            digits += 1;
            seps = 0;
            end = j + 1;
        } else if matches!(c, b' ' | b'-' | b'.' | b'(' | b')') && seps < 2 {
            seps += 1;
        } else {
            break;
        }
        j += 1;
    }
    ((8..=15).contains(&digits) && number_ends(b, end)).then_some(end)
}

/// North American layouts: `(555) 123-4567`, `555-123-4567`, `555.123.4567`.
fn nanp_at(b: &[u8], i: usize) -> Option<usize> {
    let digits = |k: usize, n: usize| (k..k + n).all(|x| digit_at(b, x));
    let (mut j, sep) = if b[i] == b'(' {
        if (i > 0 && is_word(b[i - 1])) || !digits(i + 1, 3) || b.get(i + 4) != Some(&b')') {
            return None;
        }
        let j = i + 5;
        (if b.get(j) == Some(&b' ') { j + 1 } else { j }, None)
    } else {
        let sep = *b.get(i + 3)?;
        if !number_starts(b, i) || !digits(i, 3) || !matches!(sep, b'-' | b'.') {
            return None;
        }
        (i + 4, Some(sep))
    };
    if !digits(j, 3) {
        return None;
    }
    j += 3;
    let second = *b.get(j)?;
    let ok = match sep {
        Some(s) => second == s,
        None => matches!(second, b'-' | b'.' | b' '),
    };
    (ok && digits(j + 1, 4) && number_ends(b, j + 5)).then_some(j + 5)
}

/// Country code, check digits and BBAN, optionally in space-separated
/// groups; accepted only when the ISO 13616 mod-97 check holds.
pub(super) fn iban(b: &[u8], out: &mut Vec<Found>) {
    let mut i = 0;
    while i + 4 <= b.len() {
        let shape = b[i].is_ascii_alphabetic()
            && b[i + 1].is_ascii_alphabetic()
            && b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit();
        if !shape || (i > 0 && is_word(b[i - 1])) {
            i += 1;
            continue;
        }
        let (mut j, mut len) = (i + 4, 4);
        let mut best = None;
        loop {
            while b.get(j).is_some_and(u8::is_ascii_alphanumeric) {
                j += 1;
                len += 1;
            }
            // No IBAN is longer than 34 characters; stopping here keeps long
            // space-separated text from being rechecked over and over.
            if len > 34 {
                break;
            }
            if !b.get(j).copied().is_some_and(is_word) && iban_valid(&b[i..j]) {
                best = Some(j);
            }
            if b.get(j) == Some(&b' ') && b.get(j + 1).is_some_and(u8::is_ascii_alphanumeric) {
                j += 1;
            } else {
                break;
            }
        }
        match best {
            Some(e) => {
                push(out, i, e, Detector::Iban);
                i = e;
            }
            None => i += 1,
        }
    }
}

fn iban_valid(s: &[u8]) -> bool {
    let chars = || s.iter().copied().filter(|&c| c != b' ');
    let len = chars().count();
    // Every national BBAN carries an account number, so demand some digits
    // to keep product codes like `AB12CDEFGHIJKLMN` out.
    if !(15..=34).contains(&len) || chars().skip(4).filter(u8::is_ascii_digit).count() < 6 {
        return false;
    }
    let mut r = 0u32;
    for c in chars().skip(4).chain(chars().take(4)) {
        r = match c.to_ascii_uppercase() {
            d @ b'0'..=b'9' => (r * 10 + u32::from(d - b'0')) % 97,
            l @ b'A'..=b'Z' => (r * 100 + u32::from(l - b'A') + 10) % 97,
            _ => return false,
        };
    }
    r == 1
}

pub(super) fn api_key(b: &[u8], out: &mut Vec<Found>) {
    let mut i = 0;
    while i < b.len() {
        if !is_token(b[i]) || (i > 0 && is_token(b[i - 1])) {
            i += 1;
            continue;
        }
        let mut e = i;
        while e < b.len() && is_token(b[e]) {
            e += 1;
        }
        if looks_like_key(&b[i..e]) {
            push(out, i, e, Detector::ApiKey);
        }
        i = e;
    }
}

fn looks_like_key(t: &[u8]) -> bool {
    // Shorter than the shortest accepted key (`xoxb-` and ten more).
    if t.len() < 15 {
        return false;
    }
    const PREFIXED: [(&[u8], usize); 12] = [
        (b"sk_live_", 16),
        (b"sk_test_", 16),
        (b"github_pat_", 20),
        (b"ghp_", 20),
        (b"gho_", 20),
        (b"xoxb-", 10),
        (b"xoxa-", 10),
        (b"xoxp-", 10),
        (b"xoxr-", 10),
        (b"xoxs-", 10),
        (b"AIza", 30),
        (b"AKIA", 16),
    ];
    for (prefix, min_rest) in PREFIXED {
        if let Some(rest) = t.strip_prefix(prefix)
            && rest.len() >= min_rest
        {
            // AWS access key ids have an exact shape; the others only a floor.
            return prefix != b"AKIA"
                || (rest.len() == 16
                    && rest
                        .iter()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        }
    }
    t.len() >= 32 && high_entropy(t) && !is_uuid(t)
}

/// Random tokens interleave letters and digits; identifiers such as
/// `report_2024_final_version_12345678` keep them in a few blocks.
fn high_entropy(t: &[u8]) -> bool {
    let mut switches = 0;
    for w in t.windows(2) {
        let (a, c) = (w[0], w[1]);
        if a.is_ascii_alphanumeric()
            && c.is_ascii_alphanumeric()
            && a.is_ascii_digit() != c.is_ascii_digit()
        {
            switches += 1;
        }
    }
    if switches < 3 {
        return false;
    }
    let mut hist = [0u32; 128];
    for &c in t {
        hist[usize::from(c & 0x7f)] += 1;
    }
    let n = t.len() as f64;
    let bits: f64 = hist
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| {
            let p = f64::from(k) / n;
            -p * p.log2()
        })
        .sum();
    bits >= 3.0
}

fn is_uuid(t: &[u8]) -> bool {
    t.len() == 36
        && t.iter().enumerate().all(|(k, &c)| match k {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `header.payload.signature` where header and payload are base64url JSON
/// objects, which always encode to a leading `eyJ` (`{"`).
pub(super) fn jwt(b: &[u8], out: &mut Vec<Found>) {
    let segment = |from: usize| {
        let mut e = from;
        while e < b.len() && is_token(b[e]) {
            e += 1;
        }
        e
    };
    let mut i = 0;
    while i + 3 <= b.len() {
        if &b[i..i + 3] != b"eyJ" || (i > 0 && (is_token(b[i - 1]) || b[i - 1] == b'.')) {
            i += 1;
            continue;
        }
        let e1 = segment(i);
        let s2 = e1 + 1;
        let found = (e1 - i >= 8 && b.get(e1) == Some(&b'.') && b[s2..].starts_with(b"eyJ"))
            .then(|| segment(s2))
            .filter(|&e2| e2 - s2 >= 8 && b.get(e2) == Some(&b'.'))
            .map(|e2| segment(e2 + 1));
        match found {
            Some(end) => {
                push(out, i, end, Detector::Jwt);
                i = end;
            }
            None => i = e1.max(i + 1),
        }
    }
}
