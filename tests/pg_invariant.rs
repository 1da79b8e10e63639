//! Judge what the server will run: hostile SQL through the real gateway, held against the
//! server's own record.
//!
//! A PostgreSQL server logs every statement it receives (`log_statement = 'all'`, JSON lines),
//! a gateway with a policy in the spirit of `policies/billing-bot.toml` sits in front of it and
//! an agent in the governed cgroup sends every message of `tests/corpus/pg_hostile.sql`, a few
//! hundred generated ones and a few deeply nested ones, each as one simple Query. The test does
//! not say which of them the gateway must refuse (the judge may change); it shows that
//!
//! - every statement the server logged was sent by a message the gateway allowed (the log's
//!   text is the message's, in the order sent), and no refused message reached the server: in
//!   its place the server saw (and failed to parse) the stand-in `GATEWAYD POLICY REFUSAL`,
//!   once per refusal;
//! - the audit agrees: a deny event for each refused message, an allow (or mask) event for each
//!   allowed one;
//! - the server ran nothing in an allowed message that the gateway did not judge: it analyzed
//!   no more statements there (its `debug_print_parse` record, one parse tree per top-level
//!   statement) than the audit has events, and no INSERT, UPDATE, DELETE or MERGE (parse
//!   tree) nor DDL, COPY, DO or CALL (CommandComplete tag) of a kind the audit does not name;
//! - the daemon survives all of it and serves a healthy session at the end.
//!
//! How messages are found again: the agent (`pg-agent script`) opens each connection with
//! `SELECT 'pginv-conn-C'` and follows each message with `SELECT 'pginv-mark-C-K'`. The hello
//! names the server backend (the log's `session_id`) and the gateway session; the marks cut
//! the audit into one slice per message. In the log, the `statement:` entries of a backend
//! must be the texts of its allowed messages in the order sent (a message the server could
//! not parse or decode is not logged, and skipped); the parse trees that follow an entry are
//! the statements of that message.
//!
//! `PG_INVARIANT_SEED` seeds the generator (default fixed), `PG_INVARIANT_CASES` sets how many
//! messages it makes (default 300), `PG_INVARIANT_DEPTH` the terms of the deep ones (default
//! 25,000); see bench/PG_INVARIANT.md for a long run.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{APP_ROLE, Gateway, PgServer, billing_target, bin, output_json};
use serde_json::{Value, json};

/// Fixtures of the billing database. `secrets` (both) hold the canary the agent watches for.
const SCHEMA: &str = "
CREATE TABLE invoices (id serial PRIMARY KEY, customer_id int, amount int);
INSERT INTO invoices (customer_id, amount) VALUES (1, 100), (2, 250), (1, 75);
CREATE TABLE payouts (id serial PRIMARY KEY, amount int);
INSERT INTO payouts (amount) VALUES (10), (20), (30);
CREATE TABLE secrets (id int, secret text);
INSERT INTO secrets VALUES (1, 'pginv-canary-public');
CREATE SCHEMA secret_schema;
CREATE TABLE secret_schema.secrets (id int, secret text);
INSERT INTO secret_schema.secrets VALUES (1, 'pginv-canary-schema');
CREATE TABLE t (x int);
CREATE TABLE x (y int);
";

const CANARY: &str = "pginv-canary";

/// Reads and writes as an agent needs them; writes to payouts, secrets, server files, sleeps,
/// dblink, COPY PROGRAM, DDL and unbounded writes denied.
const RULES: &str = r#"
[[targets.postgres.rules]]
name = "no-unbounded-writes"
action = "deny"
kinds = ["update", "delete"]
without_where = true

[[targets.postgres.rules]]
name = "no-payout-writes"
action = "deny"
writes = ["public.payouts"]

[[targets.postgres.rules]]
name = "no-secrets"
action = "deny"
tables = ["secrets"]

[[targets.postgres.rules]]
name = "no-server-files-or-sleeps"
action = "deny"
functions = ["pg_read_file", "pg_read_binary_file", "pg_ls_dir", "lo_import", "lo_export", "pg_sleep*", "dblink*"]

[[targets.postgres.rules]]
name = "no-copy-program"
action = "deny"
copy_program = true

[[targets.postgres.rules]]
name = "no-ddl"
action = "deny"
kinds = ["create", "alter", "drop", "truncate", "grant", "revoke"]

[[targets.postgres.rules]]
name = "agent-work"
action = "allow"
kinds = ["select", "insert", "update", "delete", "transaction", "set", "show", "copy", "prepare", "execute", "deallocate", "explain"]
"#;

/// What the gateway forwards in place of a refused message.
const STAND_IN: &str = "GATEWAYD POLICY REFUSAL";

/// Terms of the deeply nested messages (`PG_INVARIANT_DEPTH` changes it).
const DEEP: usize = 25_000;

// ------------------------------------------------------------------------------- the corpus

/// One message to send.
#[derive(Debug, Clone)]
struct Case {
    id: usize,
    /// `class/label` (corpus), `gen/N` or `deep/...`.
    label: String,
    bytes: Vec<u8>,
}

/// Cases that share a connection, and its extra startup parameters.
#[derive(Debug, Clone)]
struct Session {
    name: String,
    params: Vec<(String, String)>,
    cases: Vec<Case>,
}

/// `\r`, `\n`, `\t`, `\xHH` and `\\`; anything else stays as written.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                    continue;
                }
                b'x' => {
                    if let Some(v) = s
                        .get(i + 2..i + 4)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Reads the corpus format documented at the top of `tests/corpus/pg_hostile.sql`.
fn parse_corpus(text: &str, next_id: &mut usize) -> Vec<Session> {
    let mut sessions = vec![Session {
        name: "main".into(),
        params: vec![],
        cases: vec![],
    }];
    // The case being read: label, flags, body lines.
    let mut open: Option<(String, Vec<String>, Vec<&str>)> = None;
    let mut close = |open: &mut Option<(String, Vec<String>, Vec<&str>)>,
                     sessions: &mut Vec<Session>| {
        let Some((label, flags, mut body)) = open.take() else {
            return;
        };
        while body.last().is_some_and(|l| l.trim().is_empty()) {
            body.pop();
        }
        let mut text = body.join("\n");
        if flags.iter().any(|f| f == "nl") {
            text.push('\n');
        }
        let bytes = if flags.iter().any(|f| f == "esc") {
            unescape(&text)
        } else {
            text.into_bytes()
        };
        *next_id += 1;
        sessions.last_mut().unwrap().cases.push(Case {
            id: *next_id,
            label,
            bytes,
        });
    };
    for line in text.split('\n') {
        let Some(directive) = line.strip_prefix("%%") else {
            if let Some((_, _, body)) = open.as_mut() {
                body.push(line);
            }
            continue;
        };
        close(&mut open, &mut sessions);
        let mut words = directive.split_whitespace();
        match words.next() {
            Some("session") => {
                let name = words.next().expect("session name").to_owned();
                let params = words
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("KEY=VALUE");
                        (k.to_owned(), String::from_utf8(unescape(v)).unwrap())
                    })
                    .collect();
                sessions.push(Session {
                    name,
                    params,
                    cases: vec![],
                });
            }
            Some("case") => {
                let label = words.next().expect("case label").to_owned();
                open = Some((label, words.map(str::to_owned).collect(), vec![]));
            }
            Some(w) if w.starts_with('#') => {}
            other => panic!("corpus: unknown directive {other:?} in {line:?}"),
        }
    }
    close(&mut open, &mut sessions);
    sessions.retain(|s| !s.cases.is_empty());
    sessions
}

// ---------------------------------------------------------------------------- the generator

/// splitmix64: small, deterministic, good enough to pick fragments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    fn pick_str(&mut self, xs: &[&'static str]) -> &'static str {
        xs[self.below(xs.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Values that strings carry: quote characters, backslashes, comment and dollar-quote
/// openers, statement separators and whole statements.
const VALUES: &[&str] = &[
    "x",
    "it's",
    "a;b",
    "\\",
    "\\'",
    "--",
    "/*",
    "*/",
    "$$",
    "$a$",
    "é€",
    "; DROP TABLE x; --",
    "'; DELETE FROM payouts WHERE true; --",
    "*/ DROP TABLE x; /*",
    "\n;\n",
    "secrets",
];

/// Relations and their one integer column.
const RELATIONS: &[(&str, &str, &str)] = &[
    ("public", "invoices", "amount"),
    ("public", "payouts", "amount"),
    ("public", "secrets", "id"),
    ("secret_schema", "secrets", "id"),
    ("public", "t", "x"),
    ("public", "x", "y"),
];

/// Builds messages from SQL fragments: quoting (`'`, `E'`, `$tag$`, `U&`, continuation
/// across lines), comments (nested too) and odd whitespace between tokens, casing, schema
/// qualification (also three-part and U& names), nesting (subqueries, CTEs, DO, EXPLAIN,
/// PREPARE) and statement separators.
struct Gen {
    rng: Rng,
    prepared: usize,
}

impl Gen {
    /// Whitespace between two tokens: mostly a space, sometimes a comment or a newline.
    fn sp(&mut self) -> &'static str {
        const ODD: &[&str] = &[
            "\n",
            "\t",
            "  ",
            " /**/ ",
            "/* c */",
            " /* /* n */ */ ",
            " --c\n",
            "\r\n",
            "\n-- x\n",
            " /*\n*/ ",
        ];
        if self.rng.chance(70) {
            return " ";
        }
        self.rng.pick_str(ODD)
    }

    fn kw(&mut self, k: &str) -> String {
        match self.rng.below(4) {
            0 => k.to_lowercase(),
            1 => k
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_lowercase()
                    } else {
                        c.to_ascii_uppercase()
                    }
                })
                .collect(),
            _ => k.to_uppercase(),
        }
    }

    /// Tokens joined by generated whitespace; keywords (all-caps ASCII words) get a casing.
    fn toks(&mut self, parts: &[&str]) -> String {
        let mut out = String::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push_str(self.sp());
            }
            let keyword = !p.is_empty()
                && p.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && p.len() > 1;
            if keyword {
                let k = self.kw(p);
                out.push_str(&k);
            } else {
                out.push_str(p);
            }
        }
        out
    }

    fn u_escape(s: &str, esc: char) -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == ' ' {
                    c.to_string()
                } else if c == esc {
                    format!("{esc}{esc}")
                } else if (c as u32) < 0x10000 {
                    format!("{esc}{:04X}", c as u32)
                } else {
                    format!("{esc}+{:06X}", c as u32)
                }
            })
            .collect()
    }

    /// `value` as a string constant, in one of PostgreSQL's quoting forms.
    fn quote(&mut self, value: &str) -> String {
        let standard = |v: &str| format!("'{}'", v.replace('\'', "''"));
        match self.rng.below(8) {
            0 | 1 => standard(value),
            2 => format!(
                "{}'{}'",
                self.rng.pick(&["E", "e"]),
                value.replace('\\', "\\\\").replace('\'', "\\'")
            ),
            3 | 4 => {
                let tag = *self
                    .rng
                    .pick(&["", "a", "_x", "€", "ä1", "tag", "Q", "тег"]);
                let delim = format!("${tag}$");
                if value.contains(&delim) || value.ends_with('$') {
                    standard(value)
                } else {
                    format!("{delim}{value}{delim}")
                }
            }
            5 => {
                // A first character escaped at least, so the U& form is really used.
                let body = Self::u_escape(value, '\\');
                let first = value.chars().next().unwrap_or('x');
                if body.starts_with('\\') {
                    format!("U&'{body}'")
                } else {
                    format!(
                        "U&'\\{:04X}{}'",
                        first as u32,
                        Self::u_escape(&value[first.len_utf8()..], '\\')
                    )
                }
            }
            6 => format!("U&'{}' UESCAPE '!'", Self::u_escape(value, '!')),
            _ => {
                // Continued across a newline: 'ab' written as 'a'\n'b'.
                let mid = value
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(value.chars().count() / 2)
                    .unwrap_or(0);
                let (a, b) = value.split_at(mid);
                format!(
                    "'{}'{}'{}'",
                    a.replace('\'', "''"),
                    self.rng.pick(&["\n", " \n ", "\n-- c\n", "\r\n"]),
                    b.replace('\'', "''")
                )
            }
        }
    }

    fn literal(&mut self) -> String {
        let v = *self.rng.pick(VALUES);
        self.quote(v)
    }

    /// An identifier as written: plain, upper case, quoted, or U& with a Unicode escape.
    fn ident(&mut self, name: &str) -> String {
        match self.rng.below(6) {
            0 | 1 => name.to_owned(),
            2 => name.to_uppercase(),
            3 => format!("\"{name}\""),
            4 => {
                let first = name.chars().next().unwrap();
                format!("U&\"\\{:04x}{}\"", first as u32, &name[1..])
            }
            _ => {
                let first = name.chars().next().unwrap();
                format!("U&\"!{:04x}{}\" UESCAPE '!'", first as u32, &name[1..])
            }
        }
    }

    fn relation(&mut self) -> (String, &'static str) {
        let (schema, name, column) = *self.rng.pick(RELATIONS);
        let qualified = match self.rng.below(6) {
            0 | 1 if schema == "public" => self.ident(name),
            2 => format!("billing.{schema}.{}", self.ident(name)),
            3 => format!(
                "{}{}.{}",
                self.ident(schema),
                self.rng.pick(&[" ", "\n", " /**/ "]),
                name
            ),
            4 => format!("{schema}/**/./**/{name}"),
            _ => format!("{}.{}", schema, self.ident(name)),
        };
        (qualified, column)
    }

    fn function(&mut self, name: &str) -> String {
        match self.rng.below(5) {
            0 | 1 => self.ident(name),
            2 => name.to_uppercase(),
            _ => format!("pg_catalog.{}", self.ident(name)),
        }
    }

    fn call(&mut self, depth: usize) -> String {
        match self.rng.below(9) {
            0 => {
                let (f, e) = (self.function("lower"), self.expr(depth));
                format!("{f}({e})")
            }
            1 => {
                let (f, e) = (self.function("length"), self.expr(depth));
                format!("{f}({e})::text")
            }
            2 => {
                let (f, p) = (self.function("pg_read_file"), self.quote("/etc/hostname"));
                format!("{f}({p})")
            }
            3 => {
                let f = self.function("pg_sleep");
                format!("{f}(0)::text")
            }
            4 => {
                let (name, value) = *self.rng.pick(&[
                    ("client_encoding", "UTF8"),
                    ("search_path", "secret_schema, public"),
                    ("search_path", "public"),
                    ("role", "none"),
                    ("standard_conforming_strings", "on"),
                    ("application_name", "pginv"),
                ]);
                let f = self.function("set_config");
                let (n, v) = (self.quote(name), self.quote(value));
                format!("{f}({n}, {v}, false)")
            }
            5 => {
                let f = self.function("query_to_xml");
                let q = self.quote("select * from secrets");
                format!("{f}({q}, true, false, '')::text")
            }
            6 => {
                let f = self.function("table_to_xml");
                let t = self.quote("secrets");
                format!("{f}({t}, true, false, '')::text")
            }
            7 => {
                let f = self.function("coalesce");
                let (a, b) = (self.expr(depth), self.expr(depth));
                format!("{f}({a}, {b})")
            }
            _ => {
                let f = self.function("md5");
                let e = self.expr(depth);
                format!("{f}({e})")
            }
        }
    }

    /// A text-valued expression.
    fn expr(&mut self, depth: usize) -> String {
        if depth == 0 {
            return self.literal();
        }
        let d = depth - 1;
        match self.rng.below(8) {
            0 | 1 => self.literal(),
            2 => format!("{}::text", self.rng.below(1000)),
            3 => self.call(d),
            4 => {
                let (a, e, b) = (self.sp(), self.expr(d), self.sp());
                format!("({a}{e}{b})")
            }
            5 => {
                let (l, s, r) = (self.expr(d), self.sp(), self.expr(d));
                format!("{l}{s}||{s}{r}")
            }
            6 => {
                let (rel, _) = self.relation();
                let sel = self.toks(&["SELECT", "count(*)::text", "FROM", &rel]);
                format!("({sel})")
            }
            _ => {
                let (rel, col) = self.relation();
                let sel = self.toks(&[
                    "SELECT",
                    &format!("{col}::text"),
                    "FROM",
                    &rel,
                    "LIMIT",
                    "1",
                ]);
                format!("({sel})")
            }
        }
    }

    fn condition(&mut self) -> String {
        match self.rng.below(6) {
            0 => "true".into(),
            1 => "1 = 1".into(),
            2 => {
                let e = self.expr(1);
                format!("{e} IS NOT NULL")
            }
            3 => "false".into(),
            4 => {
                let e = self.expr(2);
                format!("length({e}) > 0")
            }
            _ => format!("{} < 0", self.rng.pick(&["id", "1", "-1"])),
        }
    }

    fn select(&mut self, depth: usize) -> String {
        match self.rng.below(5) {
            0 => {
                let e = self.expr(depth);
                self.toks(&["SELECT", &e])
            }
            1 => {
                let (rel, _) = self.relation();
                self.toks(&["TABLE", &rel])
            }
            2 => {
                let (rel, _) = self.relation();
                let c = self.condition();
                self.toks(&["SELECT", "*", "FROM", &rel, "WHERE", &c])
            }
            3 => {
                let inner = self.select(depth.saturating_sub(1));
                self.toks(&[
                    "WITH", "c", "AS", "(", &inner, ")", "SELECT", "*", "FROM", "c",
                ])
            }
            _ => {
                let inner = self.select(depth.saturating_sub(1));
                self.toks(&["SELECT", "*", "FROM", "(", &inner, ")", "AS", "s"])
            }
        }
    }

    /// A statement PREPARE accepts.
    fn dml(&mut self, depth: usize) -> String {
        let (rel, col) = self.relation();
        match self.rng.below(4) {
            0 => self.select(depth),
            1 => {
                let n = self.rng.below(100).to_string();
                self.toks(&[
                    "INSERT", "INTO", &rel, "(", col, ")", "VALUES", "(", &n, ")",
                ])
            }
            2 => {
                let mut parts = vec!["UPDATE", &rel, "SET", col, "=", col];
                let c = self.condition();
                if self.rng.chance(70) {
                    parts.extend(["WHERE", &c]);
                }
                self.toks(&parts)
            }
            _ => {
                let mut parts = vec!["DELETE", "FROM", &rel];
                let c = self.condition();
                if self.rng.chance(70) {
                    parts.extend(["WHERE", &c]);
                }
                self.toks(&parts)
            }
        }
    }

    fn statement(&mut self, depth: usize) -> String {
        match self.rng.below(16) {
            0..=3 => self.select(depth),
            4..=6 => self.dml(depth),
            7 => {
                let (rel, col) = self.relation();
                match self.rng.below(4) {
                    0 => self.toks(&["DROP", "TABLE", &rel]),
                    1 => self.toks(&["TRUNCATE", &rel]),
                    2 => self.toks(&[
                        "ALTER", "TABLE", &rel, "ALTER", "COLUMN", col, "TYPE", "int",
                    ]),
                    _ => self.toks(&["CREATE", "TEMP", "TABLE", "pginv_gen", "AS", "TABLE", &rel]),
                }
            }
            8 => {
                let (set, value) = match self.rng.below(6) {
                    0 => ("SET search_path =", "secret_schema, public".to_owned()),
                    1 => ("SET search_path TO", "public".to_owned()),
                    2 => ("SET client_encoding =", "'UTF8'".to_owned()),
                    3 => ("SET application_name =", self.literal()),
                    4 => ("SET ROLE", "NONE".to_owned()),
                    _ => ("RESET", "ROLE".to_owned()),
                };
                let words: Vec<&str> = set.split(' ').chain([value.as_str()]).collect();
                self.toks(&words)
            }
            9 => {
                self.prepared += 1;
                let name = format!("g{}", self.prepared);
                let inner = self.dml(depth);
                let prep = self.toks(&["PREPARE", &name, "AS", &inner]);
                let exec = self.toks(&["EXECUTE", &name]);
                format!("{prep};{}{exec}", self.sp())
            }
            10 => {
                let (rel, _) = self.relation();
                match self.rng.below(3) {
                    0 => self.toks(&["COPY", &rel, "FROM", "STDIN"]),
                    1 => self.toks(&["COPY", &rel, "TO", "STDOUT"]),
                    _ => {
                        let inner = self.select(depth);
                        self.toks(&["COPY", "(", &inner, ")", "TO", "STDOUT"])
                    }
                }
            }
            11 => {
                let inner = self.dml(depth);
                if self.rng.chance(50) {
                    self.toks(&["EXPLAIN", "ANALYZE", &inner])
                } else {
                    self.toks(&["EXPLAIN", &inner])
                }
            }
            12 => {
                let inner = self.dml(depth);
                let tag = *self.rng.pick(&["$$", "$do$", "$€$"]);
                if inner.contains(tag) {
                    self.select(depth)
                } else {
                    let body = format!("{tag} BEGIN {inner}; END {tag}");
                    self.toks(&["DO", &body])
                }
            }
            13 => {
                // A whole statement inside a string: harmless if the string is read right.
                let inner = self.dml(depth);
                let lit = self.quote(&format!("; {inner}; --"));
                self.toks(&["SELECT", &lit])
            }
            14 => {
                let (rel, _) = self.relation();
                self.toks(&[
                    "DECLARE", "gc", "CURSOR", "WITH", "HOLD", "FOR", "TABLE", &rel,
                ])
            }
            _ => {
                let inner = self.select(depth);
                self.toks(&[
                    "SELECT", "*", "FROM", "(", &inner, ")", "s1", ",", "LATERAL", "(", "TABLE",
                    "secrets", ")", "s2",
                ])
            }
        }
    }

    fn message(&mut self) -> String {
        const LEADS: &[&str] = &["/* lead */ ", "-- lead\n", ";", " \n"];
        const SEPARATORS: &[&str] = &[";", " ;", ";\n", "; ", ";/**/", ";--c\n", ";;"];
        let n = 1 + self.rng.below(3);
        let mut out = String::new();
        if self.rng.chance(10) {
            out.push_str(self.rng.pick_str(LEADS));
        }
        for i in 0..n {
            if i > 0 {
                out.push_str(self.rng.pick_str(SEPARATORS));
            }
            let depth = 1 + self.rng.below(3);
            let s = self.statement(depth);
            out.push_str(&s);
        }
        match self.rng.below(10) {
            0 | 1 => out.push(';'),
            2 => out.push_str(" --"),
            3 => out.push_str(" /* tail */"),
            4 => out.push_str("; -- tail"),
            _ => {}
        }
        out
    }
}

fn generated(seed: u64, count: usize, next_id: &mut usize) -> Vec<Session> {
    let mut g = Gen {
        rng: Rng(seed),
        prepared: 0,
    };
    let mut sessions: Vec<Session> = Vec::new();
    for i in 0..count {
        // A fresh connection every 50 messages bounds what one session's state can pile up.
        if i % 50 == 0 {
            sessions.push(Session {
                name: format!("gen-{}", i / 50),
                params: vec![],
                cases: vec![],
            });
        }
        *next_id += 1;
        let text = g.message();
        sessions.last_mut().unwrap().cases.push(Case {
            id: *next_id,
            label: format!("gen/{i}"),
            bytes: text.into_bytes(),
        });
    }
    sessions
}

/// Messages nested or chained `DEEP` levels deep; then a healthy session.
fn deep(depth: usize, next_id: &mut usize) -> Vec<Session> {
    let or_chain = (0..depth)
        .map(|i| format!("id = {i}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let texts = [
        (
            "or-chain",
            format!("SELECT count(*) FROM invoices WHERE {or_chain}"),
        ),
        (
            "or-chain-then-drop",
            format!("SELECT count(*) FROM invoices WHERE {or_chain}; DROP TABLE x"),
        ),
        (
            "concat-chain",
            format!("SELECT 'a'{}", " || 'a'".repeat(depth - 1)),
        ),
        ("cast-chain", format!("SELECT 1{}", "::int".repeat(depth))),
        (
            "parens",
            format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth)),
        ),
        (
            "parens-then-drop",
            format!(
                "SELECT {}1{}; DROP TABLE x",
                "(".repeat(depth),
                ")".repeat(depth)
            ),
        ),
        ("not-chain", format!("SELECT {}true", "NOT ".repeat(depth))),
        (
            "subquery-nest",
            format!(
                "SELECT {}1{}",
                "(SELECT ".repeat(depth / 10),
                ")".repeat(depth / 10)
            ),
        ),
    ];
    let mut cases = Vec::new();
    for (label, text) in texts {
        *next_id += 1;
        cases.push(Case {
            id: *next_id,
            label: format!("deep/{label}"),
            bytes: text.into_bytes(),
        });
    }
    *next_id += 1;
    let healthy = Case {
        id: *next_id,
        label: "deep/healthy-after".into(),
        bytes: b"SELECT 'healthy'".to_vec(),
    };
    vec![
        Session {
            name: "deep".into(),
            params: vec![],
            cases,
        },
        Session {
            name: "healthy".into(),
            params: vec![],
            cases: vec![healthy],
        },
    ]
}

// ------------------------------------------------------------------------------- the record

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One message the agent sent and what it saw.
#[derive(Debug, Clone)]
struct Sent {
    conn: Option<u64>,
    role: String,
    case: Option<usize>,
    bytes: Vec<u8>,
    encoding: String,
    outcome: String,
    errors: Vec<Value>,
    tags: Vec<String>,
    first: Option<String>,
    watched: bool,
}

impl Sent {
    fn from_record(r: &Value, cases: &HashMap<usize, Case>) -> Sent {
        let case = r["case"].as_u64().map(|c| c as usize);
        let bytes = match case {
            Some(id) => cases[&id].bytes.clone(),
            None => r["text"].as_str().unwrap_or("").as_bytes().to_vec(),
        };
        Sent {
            conn: r["conn"].as_u64(),
            role: r["role"].as_str().unwrap_or("").to_owned(),
            case,
            bytes,
            encoding: r["encoding"].as_str().unwrap_or("UTF8").to_owned(),
            outcome: r["outcome"].as_str().unwrap_or("").to_owned(),
            errors: r["errors"].as_array().cloned().unwrap_or_default(),
            tags: r["tags"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            first: r["first"].as_str().map(str::to_owned),
            watched: r["watched"].as_bool().unwrap_or(false),
        }
    }

    fn is_marker(&self) -> bool {
        self.role == "hello" || self.role == "mark"
    }

    /// The quoted literal a hello or mark carries: what finds it in the audit.
    fn marker_literal(&self) -> Option<String> {
        if !self.is_marker() {
            return None;
        }
        let t = String::from_utf8_lossy(&self.bytes);
        t.find('\'').map(|i| t[i..].to_owned())
    }
}

/// One line of the server's JSON log.
#[derive(Debug, Clone)]
struct LogEntry {
    session_id: String,
    user: String,
    message: String,
    statement: Option<String>,
    detail: Option<String>,
    context: Option<String>,
}

impl LogEntry {
    /// The text of a statement the server received, when the entry is the record of one.
    fn received(&self) -> Option<&str> {
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
    fn analyzed(&self) -> Option<(usize, usize, u32)> {
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
fn command_type(n: u32) -> &'static str {
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
fn cut(text: &str, loc: usize, len: usize) -> String {
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
fn log_mark(pg: &PgServer, sql: &str) -> (Vec<LogEntry>, Vec<String>) {
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

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

fn show(bytes: &[u8]) -> String {
    format!("{:?}", truncate(&String::from_utf8_lossy(bytes), 240))
}

/// The text the server logs for `bytes` sent while `encoding` was in force: the server's own
/// conversion (None if it cannot convert them, so it never ran them). Asked in one query.
fn server_texts(pg: &PgServer, wanted: &[(String, Vec<u8>)]) -> Vec<Option<String>> {
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

/// Kinds of audited statement that can make the server complete a statement with this tag; for
/// tags of statements that write or change the schema (the others are not checked).
fn kinds_for_tag(tag: &str) -> Option<&'static [&'static str]> {
    let word = tag.split(' ').next().unwrap_or("");
    Some(match word {
        "INSERT" => &["insert", "execute"],
        "UPDATE" => &["update", "execute"],
        "DELETE" => &["delete", "execute"],
        "MERGE" => &["merge", "execute"],
        "COPY" => &["copy"],
        "TRUNCATE" => &["truncate"],
        "DROP" => &["drop"],
        "ALTER" => &["alter"],
        "CREATE" => &["create"],
        "GRANT" => &["grant"],
        "REVOKE" => &["revoke"],
        "DO" => &["do"],
        "CALL" => &["call"],
        _ => return None,
    })
}

/// The events of every audited session, by the connection whose hello they carry.
fn audit_by_conn(gw: &Gateway, conns: u64) -> (HashMap<u64, Vec<Value>>, Vec<String>) {
    let mut problems = Vec::new();
    let mut by_conn = HashMap::new();
    for s in gw.sessions() {
        let v = gateway_user::admin::client::call(
            &gw.socket(),
            &gateway_user::admin::Request::SessionsShow { id: s.id },
        )
        .expect("sessions show");
        let mut events = v["events"].as_array().cloned().unwrap_or_default();
        events.sort_by_key(|e| e["seq"].as_u64());
        let conn = (1..=conns).find(|c| {
            let hello = format!("'pginv-conn-{c}'");
            events
                .iter()
                .any(|e| e["sql"].as_str().is_some_and(|q| q.contains(&hello)))
        });
        match conn {
            Some(c) => {
                by_conn.insert(c, events);
            }
            None if events.is_empty() => {}
            None => problems.push(format!(
                "audit session {} has {} events but no hello of the agent's",
                s.id,
                events.len()
            )),
        }
    }
    (by_conn, problems)
}

/// One connection's messages held against its slice of the server log and of the audit.
struct ConnCheck<'a> {
    conn: u64,
    sent: Vec<&'a Sent>,
    label: &'a dyn Fn(&Sent) -> String,
}

impl ConnCheck<'_> {
    /// Cuts the audit events into one group per message sent (events between two markers
    /// belong to the message, and its ROLLBACK, sent between them). Returns each message's
    /// events by index into `sent`.
    fn audit_groups(&self, events: &[Value], v: &mut Vec<String>) -> HashMap<usize, Vec<Value>> {
        let mut groups: HashMap<usize, Vec<Value>> = HashMap::new();
        let mut at = 0; // next event to look at
        // Marker positions in `events`.
        let mut last_marker: Option<usize> = None;
        let mut pending: Vec<usize> = Vec::new(); // messages sent since the last marker
        for (i, s) in self.sent.iter().enumerate() {
            let Some(lit) = s.marker_literal() else {
                pending.push(i);
                continue;
            };
            if s.outcome != "answered" {
                pending.push(i);
                continue;
            }
            let found = events[at..]
                .iter()
                .position(|e| e["sql"].as_str().is_some_and(|q| q.contains(&lit)));
            let Some(off) = found else {
                v.push(format!(
                    "conn {}: the audit has no event for the marker {lit} the server answered",
                    self.conn
                ));
                continue;
            };
            let pos = at + off;
            let verdict = events[pos]["verdict"].as_str().unwrap_or("");
            if verdict != "allow" {
                v.push(format!(
                    "conn {}: marker {lit} audited as {verdict}",
                    self.conn
                ));
            }
            if last_marker.is_none() && pos > 0 {
                v.push(format!(
                    "conn {}: {} audit events before the connection's hello",
                    self.conn, pos
                ));
            }
            self.assign(&events[at..pos], &pending, &mut groups, v);
            pending.clear();
            last_marker = Some(pos);
            at = pos + 1;
        }
        self.assign(&events[at..], &pending, &mut groups, v);
        groups
    }

    /// Gives `events` to the messages `pending` (one case, maybe its ROLLBACK).
    fn assign(
        &self,
        events: &[Value],
        pending: &[usize],
        groups: &mut HashMap<usize, Vec<Value>>,
        v: &mut Vec<String>,
    ) {
        let mut events = events.to_vec();
        let mut pending = pending.to_vec();
        if pending.len() > 1 && self.sent[*pending.last().unwrap()].role == "rollback" {
            let rb = pending.pop().unwrap();
            let last = events.pop();
            let ok = last
                .as_ref()
                .and_then(|e| e["sql"].as_str())
                .is_some_and(|q| q.trim().eq_ignore_ascii_case("rollback"));
            if !ok {
                v.push(format!(
                    "conn {}: the ROLLBACK after {} is not the last audit event of its slice ({last:?})",
                    self.conn,
                    (self.label)(self.sent[rb - 1])
                ));
            }
        }
        match pending.as_slice() {
            [] if !events.is_empty() => v.push(format!(
                "conn {}: {} audit events belong to no message: {:?}",
                self.conn,
                events.len(),
                events.iter().map(|e| e["sql"].clone()).collect::<Vec<_>>()
            )),
            [] => {}
            [one] => {
                groups.insert(*one, events);
            }
            many => v.push(format!(
                "conn {}: cannot cut the audit between {many:?}",
                self.conn
            )),
        }
    }
}

/// Whether the daemon still runs (a dead child stays a zombie until the fixture reaps it).
fn daemon_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// Runs `pg-agent script` in the governed cgroup over `sessions`, numbering connections from
/// `first_conn`; what it sent and saw.
fn run_script(
    gw: &Gateway,
    pg: &PgServer,
    sessions: &[Session],
    first_conn: u64,
    path: &Path,
    cases: &HashMap<usize, Case>,
) -> Vec<Sent> {
    let plan = json!({
        "addr": pg.addr.to_string(),
        "watch": CANARY,
        "timeout_ms": 120_000,
        "first_conn": first_conn,
        "sessions": sessions.iter().map(|s| json!({
            "name": s.name,
            "params": s.params.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "cases": s.cases.iter().map(|c| json!({"id": c.id, "hex": hex(&c.bytes)})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    std::fs::write(path, serde_json::to_vec(&plan).unwrap()).unwrap();
    let mut cmd = Command::new(bin("pg-agent"));
    cmd.arg("script").arg(path);
    let out = output_json(&mut gw.cgroup.command(cmd));
    out["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| Sent::from_record(r, cases))
        .collect()
}

/// Waits until every connection in `sent` that reached the daemon has ended as a gateway
/// session, then reads the audit by connection.
fn settle_and_audit(gw: &Gateway, sent: &[Sent]) -> (HashMap<u64, Vec<Value>>, Vec<String>) {
    let conns = sent.iter().filter_map(|s| s.conn).max().unwrap_or(0);
    let unreached = sent
        .iter()
        .filter(|s| {
            s.role == "login"
                && s.errors
                    .first()
                    .and_then(|e| e["message"].as_str())
                    .is_some_and(|m| m.starts_with("connect:"))
        })
        .count();
    gw.ended_sessions(conns as usize - unreached);
    audit_by_conn(gw, conns)
}

#[test]
fn the_server_runs_only_what_the_gateway_allowed() {
    let seed: u64 = std::env::var("PG_INVARIANT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0F1A);
    let count: usize = std::env::var("PG_INVARIANT_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);

    // The plan: the corpus, generated messages, deep ones, a healthy session.
    let corpus_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/pg_hostile.sql");
    let corpus = std::fs::read_to_string(&corpus_path).expect("tests/corpus/pg_hostile.sql");
    let mut next_id = 0;
    let mut sessions = parse_corpus(&corpus, &mut next_id);
    let corpus_cases = next_id;
    assert!(
        corpus_cases > 150,
        "the corpus has only {corpus_cases} cases"
    );
    sessions.extend(generated(seed, count, &mut next_id));
    // The deep messages go in a second run: the audit of the first is read before them, so a
    // daemon they kill still leaves the rest checked.
    let depth: usize = std::env::var("PG_INVARIANT_DEPTH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEEP)
        .max(2);
    let deep_sessions = deep(depth, &mut next_id);
    let cases: HashMap<usize, Case> = sessions
        .iter()
        .chain(&deep_sessions)
        .flat_map(|s| s.cases.iter().cloned())
        .map(|c| (c.id, c))
        .collect();

    let pg = PgServer::start_logging("127.10.0.7");
    pg.app_sql(SCHEMA);
    let body = billing_target(&pg) + "audit_literals = true\n" + RULES;
    let gw = Gateway::start("pg-invariant", &body);
    let dir = tempfile::tempdir().unwrap();

    // Everything the server logs between these two marks is the run.
    let (before, _) = log_mark(&pg, "SELECT 'pginv-window-start'");
    let started = Instant::now();
    let mut sent = run_script(
        &gw,
        &pg,
        &sessions,
        1,
        &dir.path().join("run1.json"),
        &cases,
    );
    let mut audit = HashMap::new();
    let mut v: Vec<String> = Vec::new(); // invariant violations
    let first_alive = daemon_alive(gw.pid());
    if first_alive {
        let (a, problems) = settle_and_audit(&gw, &sent);
        audit.extend(a);
        v.extend(problems);
    }
    let next_conn = sent.iter().filter_map(|s| s.conn).max().unwrap_or(0) + 1;
    if first_alive {
        sent.extend(run_script(
            &gw,
            &pg,
            &deep_sessions,
            next_conn,
            &dir.path().join("run2.json"),
            &cases,
        ));
    }
    let elapsed = started.elapsed();
    let alive = daemon_alive(gw.pid());
    if alive {
        let (a, problems) = settle_and_audit(&gw, &sent);
        audit.extend(a);
        v.extend(problems);
    } else {
        // Which message it died of: the last one sent before connections were refused.
        let last = sent
            .iter()
            .rev()
            .find(|s| s.case.is_some() && s.outcome != "not_sent")
            .map(|s| match s.case {
                Some(id) => format!("[{}] ({} bytes)", cases[&id].label, s.bytes.len()),
                None => String::new(),
            });
        v.push(format!(
            "gatewayd died; the last message it was sent: {}",
            last.unwrap_or_default()
        ));
    }
    let conns = sent.iter().filter_map(|s| s.conn).max().unwrap_or(0);
    let (upto_end, bad_lines) = log_mark(&pg, "SELECT 'pginv-window-end'");
    let window: Vec<LogEntry> = upto_end[before.len()..upto_end.len() - 1].to_vec();

    let label = |s: &Sent| -> String {
        match s.case {
            Some(id) => format!("[{}] {}", cases[&id].label, show(&s.bytes)),
            None => format!("[{}] {}", s.role, show(&s.bytes)),
        }
    };
    v.extend(
        bad_lines
            .iter()
            .map(|l| format!("unreadable server log line: {l}")),
    );

    // --- What the server logged, by connection.
    let hello_sid: HashMap<u64, String> = (1..=conns)
        .filter_map(|c| {
            let want = format!("SELECT 'pginv-conn-{c}'");
            window
                .iter()
                .find(|e| e.received() == Some(want.as_str()))
                .map(|e| (c, e.session_id.clone()))
        })
        .collect();
    let sid_conn: HashMap<&str, u64> = hello_sid.iter().map(|(c, s)| (s.as_str(), *c)).collect();
    for e in &window {
        if e.user == APP_ROLE
            && e.received().is_some()
            && !sid_conn.contains_key(e.session_id.as_str())
        {
            v.push(format!(
                "the server logged a statement on a backend no agent connection opened: {:?}",
                truncate(&e.message, 240)
            ));
        }
    }

    // What the server would log for each message: its bytes, converted if the connection's
    // client_encoding was not UTF8 when it was sent.
    let foreign: Vec<(String, Vec<u8>)> = sent
        .iter()
        .filter(|s| !matches!(s.encoding.as_str(), "UTF8" | "UNICODE" | ""))
        .map(|s| (s.encoding.clone(), s.bytes.clone()))
        .collect();
    let converted = server_texts(&pg, &foreign);
    let mut conv = converted.into_iter();
    let expected: Vec<Option<String>> = sent
        .iter()
        .map(|s| {
            if matches!(s.encoding.as_str(), "UTF8" | "UNICODE" | "") {
                String::from_utf8(s.bytes.clone()).ok()
            } else {
                conv.next().flatten()
            }
        })
        .collect();

    let mut logged_total = 0usize;
    let mut stand_ins_total = 0usize;
    let mut statement_findings = 0usize;
    for conn in 1..=conns {
        let idx: Vec<usize> = (0..sent.len())
            .filter(|&i| sent[i].conn == Some(conn))
            .collect();
        let mine: Vec<&Sent> = idx.iter().map(|&i| &sent[i]).collect();
        if mine.iter().all(|s| s.role == "login") {
            continue; // the login itself was refused: nothing was sent
        }
        let check = ConnCheck {
            conn,
            sent: mine.clone(),
            label: &label,
        };
        let events = audit.get(&conn).cloned().unwrap_or_default();
        // With the daemon dead its audit cannot be read: only the log is checked then.
        let audited = audit.contains_key(&conn) || alive;
        if events.is_empty() && audited {
            v.push(format!("conn {conn}: no audited session carries its hello"));
        }
        let groups = if audited {
            check.audit_groups(&events, &mut v)
        } else {
            HashMap::new()
        };
        // Whether the gateway let the message through, by its audit (the answer may be lost
        // when a connection ends).
        let audited_allow = |k: usize| {
            groups.get(&k).is_some_and(|g| {
                !g.is_empty()
                    && g.iter()
                        .all(|e| matches!(e["verdict"].as_str(), Some("allow" | "mask")))
            })
        };

        // The log: in order, each entry the text of a message of this connection that was
        // let through; skipped messages are those the server did not log (its raw parser or
        // its encoding conversion failed first).
        let sid = hello_sid.get(&conn);
        if sid.is_none()
            && mine
                .iter()
                .any(|s| s.role == "hello" && s.outcome == "answered")
        {
            v.push(format!(
                "conn {conn}: the server never logged the hello it answered"
            ));
        }
        let entries: Vec<&LogEntry> = window
            .iter()
            .filter(|e| Some(&e.session_id) == sid)
            .collect();
        let stand_ins = entries
            .iter()
            .filter(|e| e.statement.as_deref() == Some(STAND_IN))
            .count();
        let refused = mine.iter().filter(|s| s.outcome == "refused").count();
        stand_ins_total += stand_ins;
        if stand_ins != refused {
            v.push(format!(
                "conn {conn}: the gateway refused {refused} messages but the server failed {stand_ins} stand-ins"
            ));
        }
        // The statements the server analyzed for each message (by index into `mine`), from
        // the parse trees it printed after logging the message: one per distinct location,
        // since PREPARE and COPY (query) print their inner query again at the same place.
        let mut analyzed: HashMap<usize, Vec<(usize, usize, u32)>> = HashMap::new();
        let mut current: Option<usize> = None;
        let mut p = 0;
        for entry in &entries {
            if let Some(tree) = entry.analyzed() {
                if let Some(k) = current {
                    let list = analyzed.entry(k).or_default();
                    if !list.iter().any(|t| (t.0, t.1) == (tree.0, tree.1)) {
                        list.push(tree);
                    }
                }
                continue;
            }
            let Some(e) = entry.received() else {
                continue;
            };
            current = None;
            logged_total += 1;
            // Within the current slice: up to the next marker the server answered.
            let limit = (p..mine.len())
                .find(|&k| mine[k].is_marker() && mine[k].outcome == "answered")
                .unwrap_or(mine.len().saturating_sub(1));
            let hit = (p..=limit).find(|&k| expected[idx[k]].as_deref() == Some(e));
            let Some(k) = hit else {
                let refused_text = (0..mine.len()).any(|k| {
                    mine[k].outcome == "refused" && expected[idx[k]].as_deref() == Some(e)
                });
                v.push(format!(
                    "conn {conn}: the server logged {:?}, {}",
                    truncate(e, 240),
                    if refused_text {
                        "the text of a message the gateway REFUSED"
                    } else {
                        "which no allowed message of this connection sent (in this order)"
                    }
                ));
                continue;
            };
            for skipped in &mine[p..k] {
                if skipped.is_marker() && skipped.outcome == "answered" {
                    v.push(format!(
                        "conn {conn}: {} answered but missing from the server log",
                        label(skipped)
                    ));
                }
            }
            current = Some(k);
            let s = mine[k];
            match s.outcome.as_str() {
                "answered" => {}
                "refused" => v.push(format!(
                    "conn {conn}: the gateway REFUSED {} and the server logged it",
                    label(s)
                )),
                _ if audited_allow(k) => {}
                other => v.push(format!(
                    "conn {conn}: {} ({other}, not audited as allowed) is in the server log",
                    label(s)
                )),
            }
            p = k + 1;
        }

        // The audit against the answers.
        for (k, s) in mine.iter().enumerate() {
            if s.role != "case" || !audited {
                continue;
            }
            let group = groups.get(&k).cloned().unwrap_or_default();
            let verdicts: Vec<&str> = group.iter().filter_map(|e| e["verdict"].as_str()).collect();
            match s.outcome.as_str() {
                "refused" => {
                    if group.is_empty() {
                        v.push(format!(
                            "conn {conn}: refused {} has no audit event",
                            label(s)
                        ));
                    } else if verdicts.iter().any(|x| matches!(*x, "allow" | "mask")) {
                        v.push(format!(
                            "conn {conn}: refused {} audited as {verdicts:?}",
                            label(s)
                        ));
                    }
                    if !s.tags.is_empty() {
                        v.push(format!(
                            "conn {conn}: refused {} yet the server completed {:?}",
                            label(s),
                            s.tags
                        ));
                    }
                }
                "answered" => {
                    if group.is_empty() {
                        v.push(format!(
                            "conn {conn}: allowed {} has no audit event",
                            label(s)
                        ));
                        continue;
                    }
                    if verdicts.iter().any(|x| !matches!(*x, "allow" | "mask")) {
                        v.push(format!(
                            "conn {conn}: allowed {} audited as {verdicts:?}",
                            label(s)
                        ));
                    }
                    // The server's own record of what it ran: the statements it analyzed (its
                    // log) and completed (its CommandComplete tags).
                    let kinds: Vec<&str> =
                        group.iter().filter_map(|e| e["kind"].as_str()).collect();
                    let trees = analyzed.get(&k).cloned().unwrap_or_default();
                    let mut unjudged: Vec<String> = Vec::new();
                    if trees.len() > group.len() {
                        unjudged.push(format!(
                            "it analyzed {} statements, the gateway judged {}",
                            trees.len(),
                            group.len()
                        ));
                    }
                    for &(_, _, t) in &trees {
                        let want: &[&str] = match t {
                            2 => &["update", "execute"],
                            3 => &["insert", "execute"],
                            4 => &["delete", "execute"],
                            5 => &["merge", "execute"],
                            _ => continue,
                        };
                        if !kinds.iter().any(|k| want.contains(k)) {
                            unjudged.push(format!("it ran an {}", command_type(t)));
                        }
                    }
                    for tag in &s.tags {
                        if let Some(want) = kinds_for_tag(tag)
                            && !kinds.iter().any(|k| want.contains(k))
                        {
                            unjudged.push(format!("it completed {tag:?}"));
                        }
                    }
                    if !unjudged.is_empty() {
                        statement_findings += 1;
                        let text = expected[idx[k]].clone().unwrap_or_default();
                        let server: Vec<String> = trees
                            .iter()
                            .map(|&(loc, len, t)| {
                                format!(
                                    "{} {:?}",
                                    command_type(t),
                                    truncate(cut(&text, loc, len).trim(), 120)
                                )
                            })
                            .collect();
                        v.push(format!(
                            "conn {conn}: allowed {}: {}; the server's statements {server:?}, completed {:?}; the gateway's {kinds:?}",
                            label(s),
                            unjudged.join(", "),
                            s.tags
                        ));
                    }
                }
                "timeout" => v.push(format!(
                    "conn {conn}: no answer within the timeout to {}",
                    label(s)
                )),
                _ => {}
            }
        }
    }

    // --- The daemon lives and serves.
    let healthy = sent
        .iter()
        .find(|s| {
            s.case
                .is_some_and(|id| cases[&id].label == "deep/healthy-after")
        })
        .cloned();
    let (status, wire) = if alive {
        let mut cmd = Command::new(bin("pg-agent"));
        cmd.args(["wire", &pg.addr.to_string(), "SELECT 'alive-at-the-end'"]);
        (gw.status(), output_json(&mut gw.cgroup.command(cmd)))
    } else {
        (Value::Null, Value::Null)
    };

    // --- Report.
    let of = |o: &str| {
        sent.iter()
            .filter(|s| s.role == "case" && s.outcome == o)
            .count()
    };
    let case_count = sent.iter().filter(|s| s.role == "case").count();
    let mut report = String::new();
    let _ = writeln!(
        report,
        "pg_invariant: seed {seed} ({seed:#x}), {} cases ({corpus_cases} corpus, {count} generated, {} deep/healthy) in {:.1}s; gatewayd {}",
        cases.len(),
        cases.len() - corpus_cases - count,
        elapsed.as_secs_f64(),
        if alive { "alive" } else { "DIED" }
    );
    let _ = writeln!(
        report,
        "  messages sent {} (cases {case_count}: answered {}, refused {}, closed {}, timeout {}, not sent {}), connections {conns}",
        sent.iter().filter(|s| s.role != "login").count(),
        of("answered"),
        of("refused"),
        of("closed"),
        of("timeout"),
        of("not_sent"),
    );
    let _ = writeln!(
        report,
        "  server log: {logged_total} statements from the agent's backends, {stand_ins_total} stand-ins failed; audit events {}",
        audit.values().map(Vec::len).sum::<usize>()
    );
    let logins: Vec<String> = sent
        .iter()
        .filter(|s| s.role == "login")
        .map(|s| format!("conn {:?}: {:?}", s.conn, s.errors))
        .collect();
    if !logins.is_empty() {
        let _ = writeln!(report, "  logins refused: {logins:?}");
    }
    let mut by_class: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for s in sent.iter().filter(|s| s.role == "case") {
        let l = &cases[&s.case.unwrap()].label;
        let class = l.split('/').next().unwrap_or("").to_owned();
        let e = by_class.entry(class).or_default();
        match s.outcome.as_str() {
            "answered" => e.0 += 1,
            "refused" => e.1 += 1,
            _ => e.2 += 1,
        }
    }
    for (class, (a, r, o)) in &by_class {
        let _ = writeln!(
            report,
            "  {class:14} allowed {a:4}  refused {r:4}  other {o:3}"
        );
    }
    // Not asserted (the judge's verdicts are not this test's business), but worth reading:
    // denied data that reached the agent.
    for s in sent.iter().filter(|s| s.watched) {
        let _ = writeln!(
            report,
            "  finding: the canary reached the agent: {}",
            label(s)
        );
    }
    let payouts = pg.app_sql("SELECT count(*) FROM payouts");
    let tables = pg.app_sql(
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE relkind = 'r' AND nspname IN ('public', 'secret_schema')",
    );
    let _ = writeln!(
        report,
        "  afterwards: payouts rows {} (3 at the start), tables {}",
        payouts.trim(),
        tables.trim()
    );
    if std::env::var_os("PG_INVARIANT_VERBOSE").is_some() {
        for s in sent.iter().filter(|s| s.role == "case") {
            let _ = writeln!(
                report,
                "    {:9} {} {:?} {:?}",
                s.outcome,
                label(s),
                s.tags,
                s.errors
                    .iter()
                    .map(|e| e["message"].clone())
                    .collect::<Vec<_>>()
            );
        }
    }
    let _ = writeln!(
        report,
        "  invariant violations: {} ({statement_findings} where the server ran statements the gateway did not judge)",
        v.len()
    );
    for line in &v {
        let _ = writeln!(report, "    - {line}");
    }
    eprintln!("{report}");

    assert!(alive, "gatewayd died during the run (its log follows)");
    assert_eq!(status["audit_events_lost"], 0, "{status}");
    let healthy = healthy.expect("the healthy case was sent");
    assert_eq!(
        (healthy.outcome.as_str(), healthy.first.as_deref()),
        ("answered", Some("healthy")),
        "the session after the deep ones: {healthy:?}"
    );
    assert!(
        wire["received"]
            .as_str()
            .is_some_and(|r| r.contains("alive-at-the-end")),
        "a fresh session at the end: {wire}"
    );
    assert!(
        of("refused") > 0 && of("answered") > 0,
        "a run with no refusal or no allowed message proves nothing"
    );
    assert!(logged_total > 0, "the server logged nothing of the run");
    assert!(
        v.is_empty(),
        "{} invariant violations (see the report above)",
        v.len()
    );
}

#[test]
fn the_corpus_format_reads_messages_exactly() {
    let text = "description, ignored\n\
                %% case a/one\nSELECT 1 --\n\n\n\
                %% # a comment\n\
                %% case a/two esc nl\nSELECT 1 -- x\\r; \\xe2\\x80\\xa8 \\\\\n\
                %% session s client_encoding=SJIS options=-c\\x20a=b\n\
                %% case b/three\nSELECT 'a'\n'b'\n\
                %% case b/empty\n";
    let mut id = 0;
    let sessions = parse_corpus(text, &mut id);
    assert_eq!(id, 4);
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].name, "main");
    let bytes: Vec<&[u8]> = sessions[0].cases.iter().map(|c| &c.bytes[..]).collect();
    assert_eq!(
        bytes,
        [&b"SELECT 1 --"[..], b"SELECT 1 -- x\r; \xe2\x80\xa8 \\\n"]
    );
    assert_eq!(
        sessions[1].params,
        [
            ("client_encoding".to_owned(), "SJIS".to_owned()),
            ("options".to_owned(), "-c a=b".to_owned())
        ]
    );
    assert_eq!(sessions[1].cases[0].bytes, b"SELECT 'a'\n'b'");
    assert_eq!(sessions[1].cases[1].label, "b/empty");
    assert!(sessions[1].cases[1].bytes.is_empty());

    // The shipped corpus reads, with every class the test is about.
    let corpus = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/pg_hostile.sql"),
    )
    .unwrap();
    let cases: Vec<Case> = parse_corpus(&corpus, &mut 0)
        .into_iter()
        .flat_map(|s| s.cases)
        .collect();
    for class in [
        "differential",
        "encoding",
        "names",
        "roles",
        "writes",
        "prepare",
    ] {
        let n = cases
            .iter()
            .filter(|c| c.label.starts_with(&format!("{class}/")))
            .count();
        assert!(n >= 5, "{class}: {n} cases");
    }
}

#[test]
fn the_generator_is_deterministic_by_seed() {
    let texts = |seed| -> Vec<Vec<u8>> {
        generated(seed, 120, &mut 0)
            .into_iter()
            .flat_map(|s| s.cases)
            .map(|c| c.bytes)
            .collect()
    };
    let a = texts(7);
    assert_eq!(a, texts(7));
    assert_ne!(a, texts(8));
    assert_eq!(a.len(), 120);
    let all = a.concat();
    // The fragments the generator exists for do show up.
    for needle in ["U&", "$", "E'", "/*", "--", "\n'", "PREPARE", "TABLE"] {
        let hit = all
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()));
        assert!(hit, "no {needle:?} in 120 generated messages");
    }
}

#[test]
fn the_servers_parse_tree_names_the_statement() {
    let entry = |detail: &str, context: Option<&str>| LogEntry {
        session_id: "s".into(),
        user: "u".into(),
        message: "parse tree:".into(),
        statement: None,
        detail: Some(detail.into()),
        context: context.map(str::to_owned),
    };
    // The outer Query's location and length come last, after any nested query's.
    let tree = "{QUERY :commandType 4 :querySource 0 :canSetTag true :utilityStmt <> \
                :cteList ({COMMONTABLEEXPR :ctequery {QUERY :commandType 1 :stmt_location 0 \
                :stmt_len 0}}) :stmt_location 14 :stmt_len 0}";
    assert_eq!(entry(tree, None).analyzed(), Some((14, 0, 4)));
    assert_eq!(
        entry(tree, Some("SQL statement \"SELECT 1\"")).analyzed(),
        None
    );
    assert_eq!(cut("SET ROLE NONE; DELETE FROM t", 14, 0), " DELETE FROM t");
    assert_eq!(cut("SET ROLE NONE; DELETE FROM t", 0, 13), "SET ROLE NONE");
}
