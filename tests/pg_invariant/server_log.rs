//! The server's record: its JSON statement log (`log_statement = 'all'`, `debug_print_parse`)
//! read back, cut at marks the test has it log, and its own conversion of the texts sent in
//! other encodings.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use gateway_tests::PgServer;
use serde_json::Value;

use crate::{hex, truncate};

/// One line of the server's JSON log.
#[derive(Debug, Clone)]
pub(crate) struct LogEntry {
    pub(crate) session_id: String,
    pub(crate) user: String,
    pub(crate) message: String,
    pub(crate) statement: Option<String>,
    pub(crate) detail: Option<String>,
    pub(crate) context: Option<String>,
}

impl LogEntry {
    /// The text of a statement the server received, when the entry is the record of one.
    pub(crate) fn received(&self) -> Option<&str> {
        let m = &self.message;
        if let Some(text) = m.strip_prefix("statement: ") {
            return Some(text);
        }
        // Extended protocol and fast-path calls: never sent here, so never matched.
        (m.starts_with("execute ") || m.starts_with("fastpath function call")).then_some(m)
    }

    /// A statement the server analyzed on its way to running it, from its `debug_print_parse`
    /// record: (stmt_location, stmt_len, commandType) of the top-level Query. None for other
    /// entries and for queries run from inside a function (SPI: those carry a context).
    pub(crate) fn analyzed(&self) -> Option<(usize, usize, u32)> {
        if self.message != "parse tree:" || self.context.is_some() {
            return None;
        }
        let tree = self.detail.as_deref()?;
        let number = |s: &str| -> Option<usize> {
            s.split(|c: char| !c.is_ascii_digit() && c != '-')
                .find(|w| !w.is_empty())?
                .parse::<i64>()
                .ok()
                .map(|n| n.max(0) as usize)
        };
        // The outermost Query's fields: its commandType comes first, its location and length
        // last (nested queries print theirs in between).
        let kind = number(&tree[tree.find(":commandType ")? + 13..])? as u32;
        let at = tree.rfind(":stmt_location ")?;
        let loc = number(&tree[at + 15..])?;
        let len_at = tree[at..].find(":stmt_len ")? + at;
        let len = number(&tree[len_at + 10..])?;
        Some((loc, len, kind))
    }
}

/// What a Query's commandType is (PostgreSQL 15's CmdType).
pub(crate) fn command_type(n: u32) -> &'static str {
    match n {
        1 => "SELECT",
        2 => "UPDATE",
        3 => "INSERT",
        4 => "DELETE",
        5 => "MERGE",
        6 => "utility",
        7 => "NOTHING",
        _ => "unknown",
    }
}

/// The statement at `loc`, `len` bytes (0: to the end) of `text`, as the server cut it.
pub(crate) fn cut(text: &str, loc: usize, len: usize) -> String {
    let b = text.as_bytes();
    let end = if len == 0 {
        b.len()
    } else {
        (loc + len).min(b.len())
    };
    String::from_utf8_lossy(b.get(loc.min(end)..end).unwrap_or(&[])).into_owned()
}

fn read_log(path: &Path) -> (Vec<LogEntry>, Vec<String>) {
    let raw = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let (mut entries, mut bad) = (Vec::new(), Vec::new());
    for line in text.split_inclusive('\n') {
        let Some(line) = line.strip_suffix('\n') else {
            break; // still being written
        };
        match serde_json::from_str::<Value>(line) {
            Ok(v) => entries.push(LogEntry {
                session_id: v["session_id"].as_str().unwrap_or("").to_owned(),
                user: v["user"].as_str().unwrap_or("").to_owned(),
                message: v["message"].as_str().unwrap_or("").to_owned(),
                statement: v["statement"].as_str().map(str::to_owned),
                detail: v["detail"].as_str().map(str::to_owned),
                context: v["context"].as_str().map(str::to_owned),
            }),
            Err(e) => bad.push(format!("{e}: {}", truncate(line, 200))),
        }
    }
    (entries, bad)
}

/// Runs `sql` directly as the superuser and waits until the server's log shows it; the log's
/// entries up to there.
pub(crate) fn log_mark(pg: &PgServer, sql: &str) -> (Vec<LogEntry>, Vec<String>) {
    pg.superuser_sql(sql);
    let want = format!("statement: {sql}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (entries, bad) = read_log(&pg.statement_log());
        if let Some(i) = entries.iter().position(|e| e.message == want) {
            return (entries[..=i].to_vec(), bad);
        }
        assert!(
            Instant::now() < deadline,
            "the server never logged {sql:?} in {}",
            pg.statement_log().display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The text the server logs for `bytes` sent while `encoding` was in force: the server's own
/// conversion (None if it cannot convert them, so it never ran them). Asked in one query.
pub(crate) fn server_texts(pg: &PgServer, wanted: &[(String, Vec<u8>)]) -> Vec<Option<String>> {
    if wanted.is_empty() {
        return vec![];
    }
    // pg_temp lives as long as one session: define and use it in the same psql call.
    let rows: Vec<String> = wanted
        .iter()
        .enumerate()
        .map(|(i, (enc, b))| format!("({i}, '\\x{}'::bytea, '{}')", hex(b), enc.replace('\'', "")))
        .collect();
    let out = pg.superuser_sql(&format!(
        "CREATE FUNCTION pg_temp.pginv_conv(b bytea, enc name) RETURNS text \
         LANGUAGE plpgsql AS $f$ BEGIN \
         RETURN encode(convert_to(convert_from(b, enc), 'UTF8'), 'hex'); \
         EXCEPTION WHEN others THEN RETURN '-'; END $f$; \
         SELECT pg_temp.pginv_conv(b, e) FROM (VALUES {}) v(i, b, e) ORDER BY i",
        rows.join(", ")
    ));
    out.lines()
        .map(|l| {
            let l = l.trim();
            (l != "-").then(|| {
                let bytes: Vec<u8> = (0..l.len() / 2)
                    .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).unwrap())
                    .collect();
                String::from_utf8(bytes).unwrap()
            })
        })
        .collect()
}
