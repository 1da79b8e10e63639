//! A statement's shape: its tokens, as PostgreSQL's lexer reads them, with the literals' values
//! taken out. Two texts of one shape parse to the same tree but for those values, so a session
//! that judged one has judged the other (a loop of `... WHERE id = 17`, `... = 18` is parsed
//! once), and the audit keeps the shape's text, which holds no literal.
//!
//! Two keys, never confused with each other:
//! - **Plain**: for the common, simple text (ASCII words, integers of up to 9 digits, `'...'`
//!   strings with no quote or backslash inside and no prefix letter, a few punctuation marks,
//!   no comment, no `$`, no `"`), the text itself with each literal's value cut out, found in
//!   one pass without the C lexer. In that subset the server's lexer can only read the same
//!   tokens from two texts with equal keys, but for the literals' values: every other byte is
//!   kept, a string cannot end early, and an integer of up to 9 digits is always an ICONST.
//! - **Scanned**: anything else goes through the server's lexer: token kinds and their text,
//!   literals by kind only.
//!
//! A statement whose judgement reads a literal's value (`EXPLAIN (ANALYZE 0)`, `set_config`)
//! is not cached by shape: see [`super::sql::StatementInfo::reads_literals`]. A text with a
//! `UESCAPE` clause has no shape: there a literal's value decides what an identifier is.

use super::sql::scan;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Shape {
    Plain(Box<str>),
    Scanned(Box<[u8]>),
}

/// Marks a cut-out literal in a plain key; never part of the subset the plain key accepts.
const CUT: char = '\u{1}';

impl Shape {
    pub fn of(sql: &str) -> Option<Shape> {
        match plain(sql) {
            Some(key) => Some(Shape::Plain(key.into_boxed_str())),
            None => scanned(sql).map(|k| Shape::Scanned(k.into_boxed_slice())),
        }
    }
}

fn plain(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut key = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                // A word straight before a quote is a prefix (E'', B'', X'', N'', U&):
                // outside the subset. So is `$` inside a word.
                if i < b.len() && matches!(b[i], b'\'' | b'$' | b'&') {
                    return None;
                }
                key.push_str(&sql[start..i]);
            }
            b'0'..=b'9' => {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                // `1.5`, `1e5`, `0x1f`, `1_000` and ten or more digits (ICONST or FCONST by
                // value) are left to the lexer.
                if i - start > 9
                    || (i < b.len()
                        && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.')))
                {
                    return None;
                }
                // A digit run glued to a word before it is part of that word (handled above).
                key.push(CUT);
                key.push('i');
            }
            b'\'' => {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    if b[i] == b'\\' || !b[i].is_ascii() || b[i] == 0 {
                        return None;
                    }
                    i += 1;
                }
                if i >= b.len() {
                    return None;
                }
                i += 1;
                // `'a''b'` (a doubled quote) is left to the lexer.
                if i < b.len() && b[i] == b'\'' {
                    return None;
                }
                key.push(CUT);
                key.push('s');
            }
            b' ' | b'\t' | b'\n' | b'\r' | b',' | b'(' | b')' | b';' | b'=' | b'*' => {
                key.push(c as char);
                i += 1;
            }
            // `<`, `>`, `+`, `-`, `/`, `.`, `:` combine into operators, comments and casts:
            // kept as they are, but `--` and `/*` start comments, left to the lexer.
            b'<' | b'>' | b'+' | b'-' | b'/' | b'.' | b':' => {
                if (c == b'-' && b.get(i + 1) == Some(&b'-'))
                    || (c == b'/' && b.get(i + 1) == Some(&b'*'))
                {
                    return None;
                }
                key.push(c as char);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(key)
}

fn scanned(sql: &str) -> Option<Vec<u8>> {
    let tokens = scan::tokens(sql)?;
    let mut key = Vec::with_capacity(sql.len() + tokens.len() * 4);
    for t in &tokens {
        if scan::value_dependent(t.token) {
            return None;
        }
        key.extend_from_slice(&t.token.to_le_bytes());
        if !scan::is_literal(t.token) {
            let text = sql.get(t.start as usize..t.end as usize)?;
            key.extend_from_slice(&(text.len() as u32).to_le_bytes());
            key.extend_from_slice(text.as_bytes());
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> Shape {
        Shape::of(sql).unwrap_or_else(|| panic!("no shape: {sql}"))
    }

    #[test]
    fn literals_values_do_not_change_the_shape() {
        #[rustfmt::skip]
        let same = [
            ("SELECT * FROM t WHERE id = 17", "SELECT * FROM t WHERE id = 18"),
            ("SELECT 'a' , $$x$$", "SELECT 'bbb' , $$yy$$"),
            ("SELECT E'\\n', X'ff'", "SELECT E'q', X'00'"),
            ("SELECT 1.5 -- c\n", "SELECT 2.25 -- c\n"),
            ("SELECT 'it''s'", "SELECT 'x''y'"),
            // A dollar quote's tag is not part of the value the parser sees.
            ("SELECT $$x$$", "SELECT $t$x$t$"),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 5", "SELECT abalance FROM pgbench_accounts WHERE aid = 123456"),
        ];
        for (a, b) in same {
            assert_eq!(shape(a), shape(b), "{a} / {b}");
        }
    }

    #[test]
    fn anything_the_parser_can_branch_on_changes_the_shape() {
        #[rustfmt::skip]
        let differ = [
            ("SELECT a FROM t", "SELECT b FROM t"),
            ("SELECT a FROM t", "SELECT \"a\" FROM t"),
            ("SELECT 1", "SELECT '1'"),
            ("SELECT 'x'", "SELECT E'x'"),
            // ICONST and FCONST by value.
            ("SELECT 1 LIMIT 5", "SELECT 1 LIMIT 5.5"),
            ("SELECT 1 LIMIT 5", "SELECT 1 LIMIT 99999999999"),
            // String continuation across a newline, and adjacency of operator characters.
            ("SELECT 'a' 'b'", "SELECT 'a'\n'b'"),
            ("SELECT 1 -< 2", "SELECT 1 - < 2"),
            ("/*+ SeqScan(t) */ SELECT 1", "/*+ IndexScan(t) */ SELECT 1"),
            ("SELECT a ?| b", "SELECT a | b"),
            // The plain and the scanned key of one text never meet.
            ("SELECT 1", "SELECT 1 /* */"),
        ];
        for (a, b) in differ {
            assert_ne!(shape(a), shape(b), "{a} / {b}");
        }
    }

    #[test]
    fn plain_subset_is_strict() {
        for sql in [
            "SELECT E'x'",
            "SELECT 'a\\'",
            "SELECT 'é'",
            "SELECT 1.5",
            "SELECT 0x1f",
            "SELECT 1234567890",
            "SELECT \"a\"",
            "SELECT $1",
            "SELECT 1 -- x",
            "SELECT a$b",
            "SELECT U&'x'",
        ] {
            assert_eq!(plain(sql), None, "{sql}");
        }
        assert!(plain("SELECT a, b FROM t WHERE x = 'y' AND z < 3;").is_some());
    }

    #[test]
    fn uescape_has_no_shape() {
        assert_eq!(
            Shape::of(r#"SELECT * FROM U&"!0073ecrets" UESCAPE '!'"#),
            None
        );
    }
}
