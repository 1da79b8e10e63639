//! PostgreSQL's own lexer (libpg_query's scanner): the tokens the server would read, used for
//! the shape of a statement and for the audit's text with literals hidden.

use pg_query::protobuf::{ScanToken, Token};

/// Tokens of `sql` as the server's lexer reads them (comments included), or None where the
/// lexer fails (the parser would fail too).
pub(crate) fn tokens(sql: &str) -> Option<Vec<ScanToken>> {
    pg_query::scan(sql).ok().map(|r| r.tokens)
}

/// A literal whose value the grammar never branches on: only its kind shapes the tree.
pub(crate) fn is_literal(token: i32) -> bool {
    [
        Token::Sconst,
        Token::Usconst,
        Token::Iconst,
        Token::Fconst,
        Token::Bconst,
        Token::Xconst,
    ]
    .iter()
    .any(|t| *t as i32 == token)
}

pub(crate) fn is_comment(token: i32) -> bool {
    token == Token::SqlComment as i32 || token == Token::CComment as i32
}

/// Tokens whose meaning depends on a literal's value (`U&"..." UESCAPE '!'`: the escape
/// character decides which identifier it is), so a text holding one has no shape.
pub(crate) fn value_dependent(token: i32) -> bool {
    token == Token::Uescape as i32 || token == Token::Uident as i32
}

/// The statement as the audit keeps it when literals are not kept: the agent's words and
/// operators, every literal as `?`, blanks and comments as one space.
pub(crate) fn redacted(text: &str) -> String {
    let Some(tokens) = tokens(text) else {
        // The parser accepted it, so the lexer does too; should it not, keep nothing.
        return "?".into();
    };
    let mut out = String::with_capacity(text.len());
    let mut end = 0usize;
    for t in &tokens {
        let (start, stop) = (t.start as usize, t.end as usize);
        if is_comment(t.token) {
            continue;
        }
        if start > end && !out.is_empty() {
            out.push(' ');
        }
        if is_literal(t.token) {
            out.push('?');
        } else {
            out.push_str(text.get(start..stop).unwrap_or("?"));
        }
        end = stop;
    }
    let trimmed = out.trim_end_matches([';', ' ']).len();
    out.truncate(trimmed);
    out
}
