//! The daemon's configuration: a built-in default that a file and flags override field by field.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::approval::webhook::WebhookConfig;

/// The default configuration, compiled in so that `gatewayd --policies DIR` needs nothing else.
pub const DEFAULT_CONFIG: &str = include_str!("../gatewayd.toml");

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub policies: PathBuf,
    pub listen_port: u16,
    pub pin_dir: PathBuf,
    pub store: PathBuf,
    pub ssh_host_ca: PathBuf,
    pub store_reserve_bytes: u64,
    pub memory_budget_bytes: usize,
    pub admin_socket: PathBuf,
    pub resolve_interval_secs: u64,
    pub upstream_connect_timeout_ms: u64,
    pub approvers: Principals,
    pub auditors: Principals,
    pub webhook: Option<WebhookConfig>,
    pub retention: Option<Retention>,
}

/// How much audit the store keeps: whole sessions, oldest first, are pruned past either bound
/// (the hash chains stay verifiable).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Sessions that ended longer ago than this (`90d`, `12h`).
    #[serde(default, with = "humantime_serde_opt")]
    pub max_age: Option<Duration>,
    /// Records and events beyond this many bytes.
    pub max_bytes: Option<u64>,
    /// How often to prune (default 10 minutes).
    #[serde(default, with = "humantime_serde_opt")]
    pub every: Option<Duration>,
}

/// `Option<Duration>` from a humantime string such as `"30d"`.
/// `"30s"`, `"15m"`: an optional duration as people write it (policies use it too).
pub(crate) mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The same fields, each optional: what a config file may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    policies: Option<PathBuf>,
    listen_port: Option<u16>,
    pin_dir: Option<PathBuf>,
    store: Option<PathBuf>,
    ssh_host_ca: Option<PathBuf>,
    store_reserve_bytes: Option<u64>,
    memory_budget_bytes: Option<usize>,
    admin_socket: Option<PathBuf>,
    resolve_interval_secs: Option<u64>,
    upstream_connect_timeout_ms: Option<u64>,
    approvers: Option<Principals>,
    auditors: Option<Principals>,
    webhook: Option<WebhookConfig>,
    retention: Option<Retention>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error(
        "config: listen_port must be between 1 and 1023 so that only root can hold it, got {0}"
    )]
    ListenPort(u16),
    #[error("config: {0}")]
    Webhook(String),
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str(DEFAULT_CONFIG).expect("the built-in config parses")
    }
}

impl Config {
    /// The built-in default, overridden by `file` when one is given.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.into(),
                source,
            })?;
            let o: Overrides = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.into(),
                source: Box::new(e),
            })?;
            config.apply(o);
        }
        Ok(config)
    }

    fn apply(&mut self, o: Overrides) {
        let Overrides {
            policies,
            listen_port,
            pin_dir,
            store,
            ssh_host_ca,
            store_reserve_bytes,
            memory_budget_bytes,
            admin_socket,
            resolve_interval_secs,
            upstream_connect_timeout_ms,
            approvers,
            auditors,
            webhook,
            retention,
        } = o;
        set(&mut self.policies, policies);
        set(&mut self.listen_port, listen_port);
        set(&mut self.pin_dir, pin_dir);
        set(&mut self.store, store);
        set(&mut self.ssh_host_ca, ssh_host_ca);
        set(&mut self.store_reserve_bytes, store_reserve_bytes);
        set(&mut self.memory_budget_bytes, memory_budget_bytes);
        set(&mut self.admin_socket, admin_socket);
        set(&mut self.resolve_interval_secs, resolve_interval_secs);
        set(
            &mut self.upstream_connect_timeout_ms,
            upstream_connect_timeout_ms,
        );
        set(&mut self.approvers, approvers);
        set(&mut self.auditors, auditors);
        if webhook.is_some() {
            self.webhook = webhook;
        }
        if retention.is_some() {
            self.retention = retention;
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen_port == 0 || self.listen_port >= 1024 {
            return Err(ConfigError::ListenPort(self.listen_port));
        }
        if let Some(w) = &self.webhook {
            w.validate().map_err(ConfigError::Webhook)?;
        }
        Ok(())
    }

    pub fn resolve_interval(&self) -> Duration {
        Duration::from_secs(self.resolve_interval_secs.max(1))
    }

    pub fn upstream_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_connect_timeout_ms)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// Users and groups, by name (the admin socket's approvers and auditors).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principals {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_default_is_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen_port, 915);
        assert_eq!(c.pin_dir, Path::new("/sys/fs/bpf/gatewayd"));
    }

    #[test]
    fn file_overrides_only_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listen_port = 916\nstore = \"/tmp/x\"\n").unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(c.listen_port, 916);
        assert_eq!(c.store, Path::new("/tmp/x"));
        assert_eq!(c.pin_dir, Config::default().pin_dir);
    }

    #[test]
    fn unknown_field_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listen_port = 916\nlisten_prot = 1\n").unwrap();
        let e = Config::load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("listen_prot"), "{e}");
    }

    #[test]
    fn retention_reads_durations() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "retention = { max_age = \"30d\", max_bytes = 1000 }\n").unwrap();
        let r = Config::load(Some(&f)).unwrap().retention.unwrap();
        assert_eq!(r.max_age, Some(Duration::from_secs(30 * 86400)));
        assert_eq!((r.max_bytes, r.every), (Some(1000), None));
        std::fs::write(&f, "retention = { max_age = \"soon\" }\n").unwrap();
        assert!(Config::load(Some(&f)).is_err());
    }

    #[test]
    fn unprivileged_port_is_rejected() {
        let c = Config {
            listen_port: 8080,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::ListenPort(8080))));
    }
}
