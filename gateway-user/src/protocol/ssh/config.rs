//! An `ssh` target's settings in a policy file: how the daemon logs in upstream, how it knows
//! the real host, how much of a session it records, and the per-request rules. Validated here,
//! so the session never meets a bad combination.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;

use serde::Deserialize;

use super::rules::SshRule;
use crate::{
    identity::token::{JwtFile, JwtVerifier},
    session::{
        credential::Credential,
        hold::{HoldRequest, HoldTerms},
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshFile {
    /// The login user on the host; the agent's own user name is ignored.
    pub user: String,
    /// The daemon's private key for that user (OpenSSH format), read at each session.
    pub key_file: Option<PathBuf>,
    /// Or a user CA key the host trusts (`TrustedUserCAKeys`): the daemon signs a certificate
    /// for `user`, valid for `certificate_lifetime`, for each session.
    pub user_ca_file: Option<PathBuf>,
    #[serde(default, with = "crate::config::humantime_serde_opt")]
    pub certificate_lifetime: Option<Duration>,
    /// Or a password: a file only the daemon reads, or a variable of its environment.
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// How the real host is known: a known_hosts file, or pinned key fingerprints
    /// (`SHA256:...`, as `ssh-keygen -lf` prints them). An unknown or changed key refuses.
    pub known_hosts: Option<PathBuf>,
    #[serde(default)]
    pub host_keys: Vec<String>,
    /// Bytes of channel data recorded per session (default 64 MiB); past it the data is
    /// counted, not kept, and the recording says where it stopped (requests and commands are
    /// audited whatever the bound).
    pub record_limit_bytes: Option<u64>,
    /// Let an agent present a JWT as its password (or keyboard-interactive answer); its subject
    /// and groups feed the rules. Without it, any authentication is accepted: who the agent
    /// is comes from the kernel.
    pub agent_jwt: Option<JwtFile>,
    /// Addresses on the host itself (its loopback, link-local...) that a rule may let a
    /// `direct_tcpip` forward reach: `127.0.0.1:5432`, `[::1]:8080`, `127.0.0.0/8:9090`. The
    /// agent's connection policy speaks of the agent's own machine, so it cannot admit them.
    #[serde(default)]
    pub host_forwards: Vec<String>,
    #[serde(default)]
    pub rules: Vec<SshRule>,
}

/// How the daemon proves itself to the host.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamAuth {
    Key(PathBuf),
    UserCa { ca: PathBuf, lifetime: Duration },
    Password(Credential),
}

/// How the daemon knows the host is the real one.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTrust {
    KnownHosts(PathBuf),
    Fingerprints(Vec<String>),
}

/// A validated `ssh` target.
#[derive(Debug, Clone, PartialEq)]
pub struct SshTarget {
    pub user: String,
    pub auth: UpstreamAuth,
    pub trust: HostTrust,
    pub record_limit: u64,
    pub jwt: Option<JwtVerifier>,
    pub host_forwards: Vec<(IpNet, u16)>,
    pub rules: Vec<SshRule>,
}

pub const DEFAULT_RECORD_LIMIT: u64 = 64 << 20;
const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(5 * 60);

impl SshTarget {
    pub fn validate(raw: SshFile) -> Result<SshTarget, String> {
        if raw.user.is_empty() || raw.user.contains(['\0', '\n']) {
            return Err("`user` must be a user name".into());
        }
        let password = Credential::from_settings(raw.password_file, raw.password_env)?;
        let auth = match (raw.key_file, raw.user_ca_file, password.is_configured()) {
            (Some(k), None, false) => UpstreamAuth::Key(k),
            (None, Some(ca), false) => UpstreamAuth::UserCa {
                ca,
                lifetime: raw.certificate_lifetime.unwrap_or(DEFAULT_CERT_LIFETIME),
            },
            (None, None, true) => UpstreamAuth::Password(password),
            _ => {
                return Err("set exactly one of `key_file`, `user_ca_file` and a password".into());
            }
        };
        if raw.certificate_lifetime.is_some() && !matches!(auth, UpstreamAuth::UserCa { .. }) {
            return Err("`certificate_lifetime` is only used with `user_ca_file`".into());
        }
        let trust = match (raw.known_hosts, raw.host_keys.is_empty()) {
            (Some(f), true) => HostTrust::KnownHosts(f),
            (None, false) => {
                for k in &raw.host_keys {
                    if !k.starts_with("SHA256:") || k.len() < 20 {
                        return Err(format!(
                            "host key {k:?}: give its SHA256 fingerprint (`ssh-keygen -lf`)"
                        ));
                    }
                }
                HostTrust::Fingerprints(raw.host_keys)
            }
            _ => return Err("set exactly one of `known_hosts` and `host_keys`".into()),
        };
        let mut names = std::collections::BTreeSet::new();
        for r in &raw.rules {
            r.validate()?;
            if !names.insert(r.name.as_str()) {
                return Err(format!("two rules are named {:?}", r.name));
            }
        }
        Ok(SshTarget {
            user: raw.user,
            auth,
            trust,
            record_limit: raw.record_limit_bytes.unwrap_or(DEFAULT_RECORD_LIMIT),
            jwt: raw
                .agent_jwt
                .map(JwtVerifier::load)
                .transpose()
                .map_err(|e| e.to_string())?,
            host_forwards: raw
                .host_forwards
                .iter()
                .map(|d| host_forward(d))
                .collect::<Result<_, _>>()?,
            rules: raw.rules,
        })
    }
}

impl SshTarget {
    /// What an approver is asked for a request held by `rule`: `command` as shown, with the
    /// rule's timeout and approval scope.
    pub fn hold_request(&self, rule: &str, command: String) -> HoldRequest {
        let r = self.rules.iter().find(|r| r.name == rule);
        HoldRequest {
            command_redacted: command.clone(),
            command,
            rule: rule.to_owned(),
            terms: HoldTerms::of_rule(r.and_then(|r| r.timeout_secs), r.and_then(|r| r.approval)),
        }
    }
}

/// `ADDRESS:PORT`, `NET/LEN:PORT`, `[V6]:PORT` or `[V6NET/LEN]:PORT`.
fn host_forward(d: &str) -> Result<(IpNet, u16), String> {
    let bad = || {
        format!(
            "host_forwards entry {d:?}: expected ADDRESS:PORT (127.0.0.1:5432, [::1]:8080, 127.0.0.0/8:9090)"
        )
    };
    let (host, port) = match d.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").ok_or_else(bad)?,
        None => d.rsplit_once(':').ok_or_else(bad)?,
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    let net = match host.parse::<IpNet>() {
        Ok(net) => net.trunc(),
        Err(_) => IpNet::from(host.parse::<IpAddr>().map_err(|_| bad())?.to_canonical()),
    };
    Ok((net, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<SshTarget, String> {
        let text = format!("user = \"deploy\"\n{extra}");
        SshTarget::validate(toml::from_str(&text).map_err(|e| e.to_string())?)
    }

    #[test]
    fn one_credential_and_one_trust() {
        let t = parse("key_file = \"/k\"\nknown_hosts = \"/kh\"").unwrap();
        assert_eq!(t.auth, UpstreamAuth::Key("/k".into()));
        assert_eq!(t.trust, HostTrust::KnownHosts("/kh".into()));
        assert_eq!(t.record_limit, DEFAULT_RECORD_LIMIT);
        let t = parse("key_file = \"/k\"\nknown_hosts = \"/kh\"\nhost_forwards = [\"127.0.0.1:5432\", \"[::1]:80\", \"127.0.0.0/8:9090\"]").unwrap();
        let nets: Vec<String> = t
            .host_forwards
            .iter()
            .map(|(n, p)| format!("{n}:{p}"))
            .collect();
        assert_eq!(
            nets,
            ["127.0.0.1/32:5432", "::1/128:80", "127.0.0.0/8:9090"]
        );
        let t = parse("user_ca_file = \"/ca\"\ncertificate_lifetime = \"2m\"\nhost_keys = [\"SHA256:abcdefghijklmnopqrstu\"]").unwrap();
        assert_eq!(
            t.auth,
            UpstreamAuth::UserCa {
                ca: "/ca".into(),
                lifetime: Duration::from_secs(120)
            }
        );
        for (bad, why) in [
            ("known_hosts = \"/kh\"", "exactly one of `key_file`"),
            (
                "key_file = \"/k\"\npassword_env = \"P\"\nknown_hosts = \"/kh\"",
                "exactly one",
            ),
            ("key_file = \"/k\"", "`known_hosts` and `host_keys`"),
            ("key_file = \"/k\"\nhost_keys = [\"MD5:aa\"]", "SHA256"),
            (
                "key_file = \"/k\"\nknown_hosts = \"/kh\"\nhost_forwards = [\"localhost:5432\"]",
                "host_forwards entry",
            ),
            (
                "key_file = \"/k\"\nknown_hosts = \"/kh\"\nhost_forwards = [\"127.0.0.1:0\"]",
                "host_forwards entry",
            ),
            (
                "key_file = \"/k\"\nknown_hosts = \"/kh\"\ncertificate_lifetime = \"1m\"",
                "only used",
            ),
            (
                "key_file = \"/k\"\nknown_hosts = \"/kh\"\nport = 22",
                "unknown field",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
