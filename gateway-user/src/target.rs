//! The protocols a target can speak, by name: what policies write as `protocol = "..."` and
//! audits record. Each has a handler under `protocol/`; a new one adds a name here, a variant
//! of [`crate::protocol::TargetKind`] and its handler.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bytes relayed both ways; the connection is the unit of policy.
    Tcp,
    /// The wire protocol terminated; each statement is judged.
    Postgres,
    /// SSH terminated on both legs; each exec, shell and subsystem request is judged.
    Ssh,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Ssh => "ssh",
        }
    }
}
