//! Protocol handlers, one folder each, over the session core ([`crate::session`]). A handler
//! terminates its protocol on the agent side and speaks it to the upstream; plain `tcp`
//! relays bytes. [`TargetKind`] is what a policy target's protocol and settings validate
//! into; [`Handlers`] holds each protocol's state shared across sessions.

pub mod postgres;
pub mod tcp;

use std::sync::Arc;

use crate::{session::Handler, target::Protocol};

/// A validated target's protocol with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetKind {
    Tcp,
    Postgres(Arc<postgres::PostgresTarget>),
}

/// A target's protocol-specific tables as the policy file has them (`[targets.postgres]`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetTables {
    pub postgres: Option<postgres::PostgresFile>,
}

impl TargetKind {
    /// Checks that the tables given are the ones `protocol` needs, and validates them.
    pub fn validate(protocol: Protocol, tables: TargetTables) -> Result<TargetKind, String> {
        let table = |p: Protocol| format!("[targets.{}]", p.as_str());
        match (protocol, tables.postgres) {
            (Protocol::Postgres, Some(pg)) => Ok(TargetKind::Postgres(Arc::new(
                postgres::PostgresTarget::validate(pg)?,
            ))),
            (Protocol::Postgres, None) => Err(format!(
                "protocol \"postgres\" needs a {} table",
                table(Protocol::Postgres)
            )),
            (Protocol::Tcp, Some(_)) => Err(format!(
                "a {} table needs protocol \"postgres\"",
                table(Protocol::Postgres)
            )),
            (Protocol::Tcp, None) => Ok(TargetKind::Tcp),
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            TargetKind::Tcp => Protocol::Tcp,
            TargetKind::Postgres(_) => Protocol::Postgres,
        }
    }
}

/// Each protocol's state shared by its sessions (PostgreSQL's cancel keys).
#[derive(Default)]
pub struct Handlers {
    postgres: postgres::Shared,
}

impl Handlers {
    /// The handler that serves one session of a target of this kind.
    pub fn for_target<'a>(&'a self, kind: &TargetKind) -> Box<dyn Handler + 'a> {
        match kind {
            TargetKind::Tcp => Box::new(tcp::Tcp),
            TargetKind::Postgres(target) => {
                Box::new(postgres::Postgres::new(&self.postgres, target.clone()))
            }
        }
    }
}
