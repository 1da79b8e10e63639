//! Name patterns, as every rule writes them: `*` matches any run of characters (dots
//! included), `?` exactly one, case folded. Nothing else is a wildcard, so a pattern from
//! another language is an error rather than a rule that silently never matches.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("empty pattern")]
    Empty,
    #[error("pattern {0:?} has leading or trailing whitespace or a control character")]
    Whitespace(String),
    #[error("pattern {pattern:?} uses {found:?}; only `*` and `?` are wildcards")]
    Unsupported { pattern: String, found: char },
}

/// A case-insensitive pattern where `*` matches any run of characters
/// (dots included) and `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Glob {
    source: String,
    folded: Vec<char>,
    /// The pattern as written, for case-kept matches (read once, not per match).
    chars: Vec<char>,
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.trim() != pattern || pattern.chars().any(char::is_control) {
            return Err(GlobError::Whitespace(pattern.to_string()));
        }
        // Reject syntax from other pattern languages so `[a-z]*` in a deny
        // rule is an error instead of a rule that silently never matches.
        // (`$` stays legal: PostgreSQL identifiers may contain it.)
        if let Some(found) = pattern.chars().find(|c| "[]{}\\|^".contains(*c)) {
            return Err(GlobError::Unsupported {
                pattern: pattern.to_string(),
                found,
            });
        }
        Ok(Glob {
            source: pattern.to_string(),
            folded: pattern.chars().map(fold).collect(),
            chars: pattern.chars().collect(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whole-string match, ignoring case (SQL names).
    pub fn matches(&self, text: &str) -> bool {
        wild_match(&self.folded, text, fold)
    }

    /// Whole-string match, case kept: file names, paths and programs, which the systems
    /// they live on tell apart by case.
    pub fn matches_exact(&self, text: &str) -> bool {
        wild_match(&self.chars, text, |c| c)
    }

    /// For schema-qualified names: a pattern without a dot names the object
    /// in any schema, one with a dot names `schema.object`.
    pub fn matches_qualified(&self, name: &str) -> bool {
        if self.folded.contains(&'.') {
            self.matches(name)
        } else {
            self.matches(name.rsplit('.').next().unwrap_or(name))
        }
    }
}

/// `*` and `?` over `pattern` (already normalised), each text character passed through `norm`.
fn wild_match(pattern: &[char], text: &str, norm: impl Fn(char) -> char) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    loop {
        let next = text[t..].chars().next();
        match (pattern.get(p), next) {
            (Some('*'), _) => {
                backtrack = Some((p + 1, t));
                p += 1;
                continue;
            }
            (Some('?'), Some(c)) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            (Some(&pc), Some(c)) if pc == norm(c) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        // Let the last `*` absorb one more character and retry.
        match backtrack {
            Some((bp, bt)) if bt < text.len() => {
                let step = text[bt..].chars().next().map_or(1, char::len_utf8);
                backtrack = Some((bp, bt + step));
                p = bp;
                t = bt + step;
            }
            _ => return false,
        }
    }
}

fn fold(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

impl TryFrom<String> for Glob {
    type Error = GlobError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Glob::new(&s)
    }
}

impl From<Glob> for String {
    fn from(g: Glob) -> String {
        g.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        // (pattern, text, matches as plain, matches as qualified name)
        #[rustfmt::skip]
        let cases = [
            ("users", "USERS", true, true),
            ("users", "public.users", false, true),
            ("us?rs", "users", true, true),
            ("*", "anything.at.all", true, true),
            ("a*b*c", "aXXbYYc", true, true),
            ("a*b*c", "aXXbYY", false, false),
            ("secret.*", "secret.keys", true, true),
            ("secret.*", "public.secret", false, false),
            ("*secret*", "secret_schema.users", true, false),
            ("Ä*", "äpfel", true, true),
            ("?", "", false, false),
            ("a$b", "A$B", true, true),
        ];
        for (pattern, text, plain, qualified) in cases {
            let g = Glob::new(pattern).unwrap();
            assert_eq!(g.matches(text), plain, "{pattern} ~ {text}");
            assert_eq!(g.matches_qualified(text), qualified, "{pattern} ~q {text}");
        }
        for bad in ["", " users", "users\n", "[a-z]*", "a|b", "x{1}"] {
            assert!(Glob::new(bad).is_err(), "{bad:?}");
        }
        #[derive(Debug, Deserialize)]
        struct File {
            #[allow(dead_code)]
            tables: Vec<Glob>,
        }
        let err = toml::from_str::<File>("tables=['[x]']");
        assert!(err.unwrap_err().to_string().contains("only `*` and `?`"));
    }
}
