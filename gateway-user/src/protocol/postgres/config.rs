//! A `postgres` target's settings in a policy file: the upstream login, TLS, and the
//! per-statement rules. Validated here, so the session never meets a bad combination.

use std::path::PathBuf;

use serde::Deserialize;

use super::rules::SqlRule;
use crate::{
    identity::token::{JwtFile, JwtVerifier},
    session::{
        credential::Credential,
        tls::{TlsMode, UpstreamTls},
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresFile {
    /// The upstream role and database the daemon logs in as; the agent's own are ignored.
    pub user: String,
    pub database: String,
    /// The upstream password: a file only the daemon can read, or a variable of its service
    /// environment. Read at each login, so a rotated secret needs no reload.
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// `disable`, `require` (encrypted, certificate not checked) or `verify-full` (chain
    /// checked against `ca_file`, name against the target's host).
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// The schemas unqualified names resolve to, pinned upstream at login (default
    /// `["public"]`): the judge resolves names as the server will, and nothing the agent sends
    /// may change it.
    pub search_path: Option<Vec<String>>,
    /// A bound on each statement's run time, pinned upstream (`statement_timeout`) so that
    /// `pg_sleep` and runaway queries end; e.g. "30s". Unset: the server's own setting.
    #[serde(default, with = "crate::config::humantime_serde_opt")]
    pub statement_timeout: Option<std::time::Duration>,
    /// A statement PostgreSQL's parser rejects: `deny` (the default) or `allow`.
    #[serde(default)]
    pub unparsed: Unparsed,
    /// Keep literal values in the audited SQL text (off: they are replaced by `?`).
    #[serde(default)]
    pub audit_literals: bool,
    /// When a statement's audit reaches the disk: `async` (the default) or `before-forward`.
    #[serde(default)]
    pub durability: Durability,
    /// Require the agent to present a JWT as its password.
    pub agent_jwt: Option<JwtFile>,
    #[serde(default)]
    pub rules: Vec<SqlRule>,
}

/// When a statement's audit reaches the disk.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Written within the audit writer's window and flushed with the store's next flush
    /// (sled's, every 200 ms, or a session's end): a crash can lose the last moments.
    #[default]
    Async,
    /// Each statement is on disk (a `sent` event) before it is forwarded: a kill -9 never
    /// loses a statement the upstream received. Flushes are shared by every session waiting
    /// at that moment (group commit).
    BeforeForward,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unparsed {
    #[default]
    Deny,
    Allow,
}

fn search_path(raw: Option<Vec<String>>) -> Result<Vec<String>, String> {
    let path = raw.unwrap_or_else(|| {
        crate::protocol::postgres::sql::DEFAULT_SEARCH_PATH
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    });
    if path.is_empty() || path.iter().any(|s| s.is_empty() || s.contains('\0')) {
        return Err("`search_path` needs at least one schema name, none empty".into());
    }
    Ok(path)
}

/// A validated `postgres` target.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresTarget {
    pub user: String,
    pub database: String,
    pub credential: Credential,
    pub tls: UpstreamTls,
    pub unparsed: Unparsed,
    pub audit_literals: bool,
    pub durability: Durability,
    pub jwt: Option<JwtVerifier>,
    pub rules: Vec<SqlRule>,
    pub search_path: Vec<String>,
    pub statement_timeout: Option<std::time::Duration>,
}

/// Settings the gateway pins upstream because they change how the server reads bytes
/// (string syntax, encoding), resolves names (search_path) or who the session is (role):
/// a statement that would change one is refused.
pub const PINNED_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "client_encoding",
    "search_path",
    "role",
    "session_authorization",
];

/// Whether a setting the server reports (ParameterStatus) is one the judge can read
/// statements under: string syntax standard and the client encoding UTF8. Should the server
/// report otherwise, the session ends: bytes would no longer mean what the judge read.
pub fn reported_setting_ok(name: &str, value: &str) -> bool {
    match name {
        "standard_conforming_strings" => value == "on",
        "client_encoding" => value.eq_ignore_ascii_case("UTF8"),
        _ => true,
    }
}

impl PostgresTarget {
    pub fn validate(raw: PostgresFile) -> Result<PostgresTarget, String> {
        if raw.user.is_empty() || raw.database.is_empty() {
            return Err("`user` and `database` must not be empty".into());
        }
        let credential = Credential::from_settings(raw.password_file, raw.password_env)?;
        let tls = UpstreamTls::new(raw.tls, raw.ca_file)?;
        let mut names = std::collections::BTreeSet::new();
        for r in &raw.rules {
            r.validate().map_err(|e| e.to_string())?;
            if !names.insert(r.name.as_str()) {
                return Err(format!("two rules are named {:?}", r.name));
            }
        }
        Ok(PostgresTarget {
            user: raw.user,
            database: raw.database,
            credential,
            tls,
            unparsed: raw.unparsed,
            audit_literals: raw.audit_literals,
            durability: raw.durability,
            jwt: raw
                .agent_jwt
                .map(JwtVerifier::load)
                .transpose()
                .map_err(|e| e.to_string())?,
            rules: raw.rules,
            search_path: search_path(raw.search_path)?,
            statement_timeout: raw.statement_timeout,
        })
    }

    /// Whether a statement changing `setting` is refused: the pinned ones, a computed name
    /// (`*`), and `statement_timeout` when the target pins one.
    pub fn pins(&self, setting: &str) -> bool {
        setting == "*"
            || PINNED_SETTINGS.contains(&setting)
            || (setting == "statement_timeout" && self.statement_timeout.is_some())
    }

    /// What the daemon sets at login, whatever the agent asked for.
    pub fn pinned_parameters(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![
            ("client_encoding", "UTF8".to_owned()),
            ("standard_conforming_strings", "on".to_owned()),
            (
                "search_path",
                self.search_path
                    .iter()
                    .map(|s| format!("\"{}\"", s.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ];
        if let Some(t) = self.statement_timeout {
            p.push(("statement_timeout", t.as_millis().to_string()));
        }
        p
    }
}
