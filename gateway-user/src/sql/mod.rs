//! The SQL vocabulary every SQL target shares: the kinds rules name statements by and audits
//! record. Each dialect's classifier (PostgreSQL's parser under `protocol/postgres/sql`)
//! maps its own statement types onto these.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Copy,
    Create,
    Alter,
    Drop,
    Truncate,
    Grant,
    Revoke,
    Set,
    Show,
    Call,
    /// An anonymous code block: what it runs is out of the judge's sight, so it is refused
    /// (rule `sql-text`) whatever the rules say.
    Do,
    Transaction,
    Prepare,
    Execute,
    Deallocate,
    Explain,
    Maintenance,
    Lock,
    Notify,
    Load,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION` and their RESETs: who the session is, for a
    /// rule to allow by name (not a `set`).
    Role,
    Other,
}

impl StatementKind {
    /// The name rules and audits use (the serde name), without going through serde on the
    /// per-statement path.
    pub fn as_str(self) -> &'static str {
        use StatementKind as K;
        match self {
            K::Select => "select",
            K::Insert => "insert",
            K::Update => "update",
            K::Delete => "delete",
            K::Merge => "merge",
            K::Copy => "copy",
            K::Create => "create",
            K::Alter => "alter",
            K::Drop => "drop",
            K::Truncate => "truncate",
            K::Grant => "grant",
            K::Revoke => "revoke",
            K::Set => "set",
            K::Show => "show",
            K::Call => "call",
            K::Do => "do",
            K::Transaction => "transaction",
            K::Prepare => "prepare",
            K::Execute => "execute",
            K::Deallocate => "deallocate",
            K::Explain => "explain",
            K::Maintenance => "maintenance",
            K::Lock => "lock",
            K::Notify => "notify",
            K::Load => "load",
            K::Role => "role",
            K::Other => "other",
        }
    }
}

/// What an audited SQL event was: a classified statement, or something the classifier did
/// not get to classify. Recorded as one word (`select`, `unparsed`, `function_call`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SqlKind {
    Statement(StatementKind),
    Unclassified(Unclassified),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unclassified {
    /// The parser rejected it (or it was refused before parsing: too long, not UTF-8).
    Unparsed,
    /// A protocol-level function call (PostgreSQL's FunctionCall message).
    FunctionCall,
    /// A message with no statement in it (blanks, comments, `;`): it runs nothing, but it
    /// went upstream.
    Empty,
}

impl SqlKind {
    pub const UNPARSED: SqlKind = SqlKind::Unclassified(Unclassified::Unparsed);
    pub const FUNCTION_CALL: SqlKind = SqlKind::Unclassified(Unclassified::FunctionCall);
    pub const EMPTY: SqlKind = SqlKind::Unclassified(Unclassified::Empty);

    pub fn as_str(self) -> &'static str {
        match self {
            SqlKind::Statement(k) => k.as_str(),
            SqlKind::Unclassified(Unclassified::Unparsed) => "unparsed",
            SqlKind::Unclassified(Unclassified::FunctionCall) => "function_call",
            SqlKind::Unclassified(Unclassified::Empty) => "empty",
        }
    }
}

impl From<StatementKind> for SqlKind {
    fn from(k: StatementKind) -> SqlKind {
        SqlKind::Statement(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_one_word_each_way() {
        for (kind, word) in [
            (SqlKind::Statement(StatementKind::Select), "select"),
            (SqlKind::Statement(StatementKind::Role), "role"),
            (SqlKind::UNPARSED, "unparsed"),
            (
                SqlKind::Unclassified(Unclassified::FunctionCall),
                "function_call",
            ),
        ] {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{word}\""));
            assert_eq!(kind.as_str(), word);
            assert_eq!(serde_json::from_str::<SqlKind>(&json).unwrap(), kind);
        }
        assert!(serde_json::from_str::<SqlKind>("\"dance\"").is_err());
    }
}
