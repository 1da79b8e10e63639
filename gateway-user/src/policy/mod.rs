//! Policies: files in a directory, validated into typed rules, and the pure verdict.

pub mod destination;
pub mod file;
pub mod verdict;

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use crate::target::Protocol;
pub use destination::{Destination, Host};
pub use verdict::{Denial, Resolved, Verdict, decide};

use crate::{
    cgroup,
    protocol::{TargetKind, TargetTables},
};

/// One validated policy, pinned to one cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub file: PathBuf,
    /// Relative to the cgroup2 root, with a leading '/': `/agents/billing-bot`.
    pub cgroup: String,
    pub dns_resolvers: Vec<SocketAddr>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub destination: Destination,
    pub kind: TargetKind,
}

#[derive(Debug, thiserror::Error)]
#[error("policy {file}: {message}")]
pub struct PolicyError {
    pub file: PathBuf,
    pub message: String,
}

/// Every error found in a policy directory, one per line, so an operator fixes them in one go.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl Policy {
    pub fn parse(file: &Path, text: &str) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError {
            file: file.into(),
            message,
        };
        let raw: file::PolicyFile =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        if raw.name.trim().is_empty() {
            return Err(err("field `name` must not be empty".into()));
        }
        let rel = cgroup::relative(&raw.cgroup).map_err(|e| err(format!("field `cgroup`: {e}")))?;
        let mut names = BTreeSet::new();
        let mut targets = Vec::with_capacity(raw.targets.len());
        for t in raw.targets {
            if t.name.trim().is_empty() {
                return Err(err("a target has an empty `name`".into()));
            }
            if !names.insert(t.name.clone()) {
                return Err(err(format!("two targets are named {:?}", t.name)));
            }
            let tables = TargetTables {
                postgres: t.postgres,
                ssh: t.ssh,
            };
            let kind = TargetKind::validate(t.protocol, tables)
                .map_err(|e| err(format!("target {:?}: {e}", t.name)))?;
            targets.push(Target {
                name: t.name,
                destination: t.address,
                kind,
            });
        }
        Ok(Policy {
            name: raw.name,
            file: file.into(),
            cgroup: format!("/{}", rel.display()),
            dns_resolvers: raw.dns_resolvers.into_iter().map(|r| r.0).collect(),
            targets,
        })
    }

    /// Host names whose addresses the daemon must keep resolved for this policy.
    pub fn hostnames(&self) -> impl Iterator<Item = (&str, u16)> {
        self.targets
            .iter()
            .filter_map(|t| match &t.destination.host {
                Host::Name(n) => Some((n.as_str(), t.destination.port)),
                Host::Net(_) => None,
            })
    }
}

/// All policies of a directory, checked against each other.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: Vec<Arc<Policy>>,
}

impl PolicySet {
    /// Reads every `*.toml` file of `dir`. Any error rejects the whole set: a daemon keeps its
    /// last good set rather than run with a policy missing (which would leave a cgroup open).
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
        let one = |message: String| {
            PolicyErrors(vec![PolicyError {
                file: dir.into(),
                message,
            }])
        };
        let entries =
            std::fs::read_dir(dir).map_err(|e| one(format!("cannot read directory: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        files.sort();
        let mut errors = Vec::new();
        let mut policies = Vec::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => match Policy::parse(&file, &text) {
                    Ok(p) => policies.push(p),
                    Err(e) => errors.push(e),
                },
                Err(e) => errors.push(PolicyError {
                    file,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        errors.extend(cross_check(&policies));
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        Ok(PolicySet {
            policies: policies.into_iter().map(Arc::new).collect(),
        })
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Policy>> {
        self.policies.iter().find(|p| p.name == name)
    }
}

/// Names and cgroups must be unique across files.
fn cross_check(policies: &[Policy]) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    let mut names: HashMap<&str, &Path> = HashMap::new();
    let mut cgroups: HashMap<&str, &Path> = HashMap::new();
    for p in policies {
        if let Some(other) = names.insert(&p.name, &p.file) {
            errors.push(PolicyError {
                file: p.file.clone(),
                message: format!(
                    "policy name {:?} is also used by {}",
                    p.name,
                    other.display()
                ),
            });
        }
        if let Some(other) = cgroups.insert(&p.cgroup, &p.file) {
            errors.push(PolicyError {
                file: p.file.clone(),
                message: format!(
                    "cgroup {} is also governed by {}",
                    p.cgroup,
                    other.display()
                ),
            });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "billing-bot"
cgroup = "/agents/billing-bot"
dns_resolvers = ["127.0.0.53", "127.0.0.54:5353"]

[[targets]]
name = "billing-db"
address = "db.internal:5432"
protocol = "tcp"

[[targets]]
name = "metrics"
address = "127.10.0.0/24:9100"
protocol = "tcp"
"#;

    #[test]
    fn parses_a_good_policy() {
        let p = Policy::parse(Path::new("p.toml"), GOOD).unwrap();
        assert_eq!(p.cgroup, "/agents/billing-bot");
        assert_eq!(
            p.dns_resolvers,
            vec![
                "127.0.0.53:53".parse().unwrap(),
                "127.0.0.54:5353".parse().unwrap()
            ]
        );
        assert_eq!(p.targets.len(), 2);
        assert_eq!(
            p.hostnames().collect::<Vec<_>>(),
            vec![("db.internal", 5432)]
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let cases = [
            (
                GOOD.replace(
                    "protocol = \"tcp\"\n\n[[targets]]",
                    "protocol = \"udp\"\n\n[[targets]]",
                ),
                "line 9",
                "udp",
            ),
            (
                GOOD.replace(
                    "address = \"db.internal:5432\"",
                    "address = \"db.internal\"",
                ),
                "line 8",
                "missing :PORT",
            ),
            (
                GOOD.replace("name = \"metrics\"", "name = \"metrics\"\nport = 1"),
                "line 13",
                "unknown field `port`",
            ),
            (
                GOOD.replace("cgroup = \"/agents/billing-bot\"", "cgroup = \"../etc\""),
                "",
                "field `cgroup`",
            ),
            (
                GOOD.replace("\"127.0.0.53\"", "\"dns.local\""),
                "line 4",
                "invalid DNS resolver",
            ),
            (
                GOOD.replace("name = \"metrics\"", "name = \"billing-db\""),
                "",
                "two targets are named",
            ),
            (
                GOOD.replace(
                    "[[targets]]\nname = \"metrics\"",
                    "default = \"allow\"\n[[targets]]\nname = \"metrics\"",
                ),
                "",
                "default",
            ),
        ];
        for (text, line, needle) in cases {
            let e = Policy::parse(Path::new("/p/bad.toml"), &text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("policy /p/bad.toml: "), "{e}");
            assert!(
                e.contains(line) && e.contains(needle),
                "want {line:?} and {needle:?} in: {e}"
            );
        }
    }

    #[test]
    fn a_directory_is_checked_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            GOOD.replace("billing-bot\"\ncgroup", "other\"\ncgroup"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        let e = PolicySet::load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("b.toml") && e.contains("also governed by") && e.contains("a.toml"),
            "{e}"
        );

        std::fs::write(
            dir.path().join("b.toml"),
            GOOD.replace("billing-bot", "other"),
        )
        .unwrap();
        let set = PolicySet::load_dir(dir.path()).unwrap();
        assert_eq!(set.policies.len(), 2);
        assert!(set.by_name("other").is_some());
    }
}
