//! Protocol handlers, one folder each, over the session core ([`crate::session`]). A handler
//! terminates its protocol on the agent side and speaks it to the upstream; plain `tcp`
//! relays bytes. [`TargetKind`] is what a policy target's protocol and settings validate
//! into; [`Handlers`] holds each protocol's state shared across sessions.

pub mod postgres;
pub mod ssh;
pub mod tcp;

use std::sync::Arc;

use crate::{session::Handler, target::Protocol};

/// A validated target's protocol with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetKind {
    Tcp,
    Postgres(Arc<postgres::PostgresTarget>),
    Ssh(Arc<ssh::SshTarget>),
}

/// A target's protocol-specific tables as the policy file has them (`[targets.postgres]`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetTables {
    pub postgres: Option<postgres::PostgresFile>,
    pub ssh: Option<ssh::SshFile>,
}

impl TargetKind {
    /// Checks that the tables given are the ones `protocol` needs, and validates them.
    pub fn validate(protocol: Protocol, tables: TargetTables) -> Result<TargetKind, String> {
        let table = |p: Protocol| format!("[targets.{}]", p.as_str());
        let given = [
            (Protocol::Postgres, tables.postgres.is_some()),
            (Protocol::Ssh, tables.ssh.is_some()),
        ];
        if let Some((other, _)) = given.iter().find(|(p, set)| *set && *p != protocol) {
            return Err(format!(
                "a {} table needs protocol \"{}\"",
                table(*other),
                other.as_str()
            ));
        }
        let missing = || {
            format!(
                "protocol \"{}\" needs a {} table",
                protocol.as_str(),
                table(protocol)
            )
        };
        Ok(match protocol {
            Protocol::Tcp => TargetKind::Tcp,
            Protocol::Postgres => TargetKind::Postgres(Arc::new(
                postgres::PostgresTarget::validate(tables.postgres.ok_or_else(missing)?)?,
            )),
            Protocol::Ssh => TargetKind::Ssh(Arc::new(ssh::SshTarget::validate(
                tables.ssh.ok_or_else(missing)?,
            )?)),
        })
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            TargetKind::Tcp => Protocol::Tcp,
            TargetKind::Postgres(_) => Protocol::Postgres,
            TargetKind::Ssh(_) => Protocol::Ssh,
        }
    }
}

/// Each protocol's state shared by its sessions (PostgreSQL's cancel keys, SSH's host CA).
pub struct Handlers {
    postgres: postgres::Shared,
    ssh: ssh::Shared,
}

impl Handlers {
    /// `ssh_host_ca`: where the SSH host CA's key is kept (made on first start).
    pub fn new(ssh_host_ca: &std::path::Path) -> Handlers {
        Handlers {
            postgres: postgres::Shared::default(),
            ssh: ssh::Shared::new(ssh_host_ca),
        }
    }

    /// Loads what the targets of `kinds` need before their first session (the SSH host CA,
    /// made on first use), so that `gatewayctl ssh known-hosts` works from the start.
    pub fn prepare<'k>(&self, mut kinds: impl Iterator<Item = &'k TargetKind>) {
        if kinds.any(|k| matches!(k, TargetKind::Ssh(_))) {
            let _ = self.ssh.ca();
        }
    }

    /// The handler that serves one session of a target of this kind.
    pub fn for_target<'a>(&'a self, kind: &TargetKind) -> Box<dyn Handler + 'a> {
        match kind {
            TargetKind::Tcp => Box::new(tcp::Tcp),
            TargetKind::Postgres(target) => {
                Box::new(postgres::Postgres::new(&self.postgres, target.clone()))
            }
            TargetKind::Ssh(target) => Box::new(ssh::Ssh::new(&self.ssh, target.clone())),
        }
    }
}
