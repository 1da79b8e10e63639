//! A statement's shape: its tokens with the literals' values taken out. Two texts of one
//! shape parse to the same tree but for those values, so a session that judged one has judged
//! the other (a loop of `... WHERE id = 17`, `... WHERE id = 18` is parsed once), and the
//! audit keeps the shape's text, which holds no literal, instead of the agent's.
//!
//! The key is the token sequence itself rather than a rendering of it, so no two different
//! sequences can share one. What it keeps is what sqlparser's parser can branch on: token
//! kinds, words as written, whether whitespace separates two tokens and whether it spans a line
//! (PostgreSQL joins string literals across a newline), comments (pg_hint_plan hints), and of a
//! number whether it is a plain integer that fits `u64` (`LIMIT 5` parses, `LIMIT 5.5` does not).
//! A statement whose judgement reads a literal's value (`EXPLAIN (ANALYZE off)`) is not cached by
//! shape: see [`super::sql::StatementInfo::reads_literals`].

use sqlparser::{
    dialect::PostgreSqlDialect,
    tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace},
};

use super::sql::ParseError;

/// Tokenizes as sqlparser's own `Parser::parse_sql` does, so that parsing these tokens gives
/// what parsing the text would.
pub fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, ParseError> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|e| ParseError {
            message: e.to_string(),
        })
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape(Vec<Token>);

impl Shape {
    /// Takes the tokens, so a session that only looks the shape up copies no word.
    pub fn from_tokens(tokens: Vec<TokenWithSpan>) -> Shape {
        let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
        for token in tokens.into_iter().map(|t| t.token) {
            let token = match token {
                Token::Whitespace(
                    w @ (Whitespace::Space | Whitespace::Tab | Whitespace::Newline),
                ) => {
                    let newline = w == Whitespace::Newline;
                    // A run of blanks is one separator; it remembers whether it spans a line.
                    if let Some(Token::Whitespace(prev)) = out.last_mut()
                        && matches!(prev, Whitespace::Space | Whitespace::Newline)
                    {
                        if newline {
                            *prev = Whitespace::Newline;
                        }
                        continue;
                    }
                    Token::Whitespace(if newline {
                        Whitespace::Newline
                    } else {
                        Whitespace::Space
                    })
                }
                other => canonical(&other).unwrap_or(other),
            };
            out.push(token);
        }
        Shape(out)
    }
}

/// The literal with its value taken out, or None for a token kept as it is.
fn canonical(token: &Token) -> Option<Token> {
    let empty = String::new;
    Some(match token {
        Token::Number(n, long) => {
            if n.len() > 18 || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Token::Number("0".into(), *long)
        }
        Token::SingleQuotedString(_) => Token::SingleQuotedString(empty()),
        Token::EscapedStringLiteral(_) => Token::EscapedStringLiteral(empty()),
        Token::UnicodeStringLiteral(_) => Token::UnicodeStringLiteral(empty()),
        Token::NationalStringLiteral(_) => Token::NationalStringLiteral(empty()),
        Token::HexStringLiteral(_) => Token::HexStringLiteral(empty()),
        Token::SingleQuotedByteStringLiteral(_) => Token::SingleQuotedByteStringLiteral(empty()),
        Token::DollarQuotedString(d) => {
            Token::DollarQuotedString(sqlparser::ast::DollarQuotedString {
                value: empty(),
                tag: d.tag.as_ref().map(|_| empty()),
            })
        }
        _ => return None,
    })
}

fn is_literal(token: &Token) -> bool {
    matches!(
        token,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::DollarQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
    )
}

/// The statement as the audit keeps it when literals are not kept: the agent's words and
/// operators, every literal as `?`, blanks and comments as one space, no trailing `;`.
pub fn redacted_text(tokens: &[TokenWithSpan]) -> String {
    let mut out = String::with_capacity(tokens.len() * 6);
    let mut gap = false;
    for t in tokens {
        match &t.token {
            Token::Whitespace(_) => gap = true,
            Token::EOF => {}
            token => {
                if gap && !out.is_empty() {
                    out.push(' ');
                }
                gap = false;
                if is_literal(token) {
                    out.push('?');
                } else {
                    use std::fmt::Write as _;
                    let _ = write!(out, "{token}");
                }
            }
        }
    }
    let trimmed = out.trim_end_matches([';', ' ']).len();
    out.truncate(trimmed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(sql: &str) -> Shape {
        Shape::from_tokens(tokenize(sql).unwrap())
    }

    #[test]
    fn literals_values_do_not_change_the_shape() {
        #[rustfmt::skip]
        let same = [
            ("SELECT * FROM t WHERE id = 17", "SELECT * FROM t WHERE id = 18"),
            ("SELECT 'a' , $$x$$", "SELECT 'bbb' , $$yy$$"),
            ("SELECT E'\\n', X'ff'", "SELECT E'q', X'00'"),
            ("SELECT  1\t+ 2", "SELECT 3 + 4"),
            ("select 1\n\n, 2", "select 1 \n , 2"),
        ];
        for (a, b) in same {
            assert_eq!(shape(a), shape(b), "{a} / {b}");
        }
    }

    #[test]
    fn anything_the_parser_can_branch_on_changes_the_shape() {
        #[rustfmt::skip]
        let differ = [
            // Words as written, quoted or not.
            ("SELECT a FROM t", "SELECT b FROM t"),
            ("SELECT a FROM t", "SELECT \"a\" FROM t"),
            // Literal kinds.
            ("SELECT 1", "SELECT '1'"),
            ("SELECT 'x'", "SELECT E'x'"),
            ("SELECT $$x$$", "SELECT $t$x$t$"),
            // An integer that fits u64, a decimal, one that does not fit.
            ("SELECT 1 LIMIT 5", "SELECT 1 LIMIT 5.5"),
            ("SELECT 1 LIMIT 5", "SELECT 1 LIMIT 99999999999999999999"),
            // Adjacency (`:name` placeholders) and newlines (string continuation).
            ("SELECT :x", "SELECT : x"),
            ("SELECT 'a' 'b'", "SELECT 'a'\n'b'"),
            // Comments, which may carry planner hints.
            ("/*+ SeqScan(t) */ SELECT 1", "/*+ IndexScan(t) */ SELECT 1"),
            // Operators.
            ("SELECT a ?| b", "SELECT a | b"),
        ];
        for (a, b) in differ {
            assert_ne!(shape(a), shape(b), "{a} / {b}");
        }
    }

    #[test]
    fn redacted_text_keeps_words_and_hides_every_literal() {
        #[rustfmt::skip]
        let cases = [
            ("SELECT * FROM t WHERE a = 'x' AND b = 42", "SELECT * FROM t WHERE a = ? AND b = ?"),
            ("SELECT NULL, true, $1, -2.5", "SELECT NULL, true, $1, -?"),
            ("INSERT INTO t VALUES ('secret', E'x', $$y$$)", "INSERT INTO t VALUES (?, ?, ?)"),
            ("SELECT DATE '2020-01-01' LIMIT 5;", "SELECT DATE ? LIMIT ?"),
            ("ALTER ROLE bob PASSWORD 'hunter2'", "ALTER ROLE bob PASSWORD ?"),
            ("COPY t FROM PROGRAM 'curl -u me:pw x'", "COPY t FROM PROGRAM ?"),
            ("NOTIFY ch, 'payload'", "NOTIFY ch, ?"),
            ("select \"Odd \"\"name\"\"\" -- why\n from t", "select \"Odd \"\"name\"\"\" from t"),
            ("CREATE FUNCTION f() RETURNS int AS $b$ SELECT 'k' $b$ LANGUAGE sql", "CREATE FUNCTION f() RETURNS int AS ? LANGUAGE sql"),
        ];
        for (sql, want) in cases {
            assert_eq!(redacted_text(&tokenize(sql).unwrap()), want, "{sql}");
        }
    }
}
