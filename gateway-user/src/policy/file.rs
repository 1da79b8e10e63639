//! The policy file format. Deserialization does all validation it can (unknown fields,
//! malformed addresses, unknown protocols), so errors carry the file's line and column.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::destination::Destination;
use crate::{
    protocol::{postgres::PostgresFile, ssh::SshFile},
    target::Protocol,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Shown in audits and in the messages an agent gets.
    pub name: String,
    /// The cgroup this policy governs, relative to the cgroup2 root; it covers descendants.
    pub cgroup: String,
    /// What happens to anything no target names. Only `deny` exists: the gateway fails closed.
    #[serde(default)]
    pub default: DefaultAction,
    /// UDP may reach only these resolvers (`IP` for port 53, or `IP:PORT`).
    #[serde(default)]
    pub dns_resolvers: Vec<Resolver>,
    #[serde(default)]
    pub targets: Vec<TargetFile>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub name: String,
    pub address: Destination,
    pub protocol: Protocol,
    /// Each protocol's own table, required for and only for that protocol
    /// ([`crate::protocol::TargetKind::validate`]).
    pub postgres: Option<PostgresFile>,
    pub ssh: Option<SshFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Resolver(pub SocketAddr);

impl TryFrom<String> for Resolver {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Resolver(sa));
        }
        s.parse::<IpAddr>()
            .map(|ip| Resolver(SocketAddr::new(ip, 53)))
            .map_err(|_| format!("invalid DNS resolver {s:?}: expected IP or IP:PORT"))
    }
}
