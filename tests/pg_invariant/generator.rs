//! The generator: messages built from SQL fragments by a seeded PRNG, the same messages for
//! the same seed.

use crate::corpus::{Case, Session};

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

/// `count` messages generated from `seed`, a fresh connection every 50, case ids counted on
/// from `next_id`.
pub(crate) fn generated(seed: u64, count: usize, next_id: &mut usize) -> Vec<Session> {
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
