//! cgroup v2 discovery: where the hierarchy is mounted, cgroup ids, and a process's cgroup.
//!
//! The mount is read from /proc/self/mountinfo, never assumed: hybrid hosts mount cgroup2 at
//! `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`.

use std::{
    io,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cgroup path {0:?} must be relative to the cgroup2 root and must not contain '..'")]
    BadPath(String),
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The cgroup2 hierarchy of this host.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    root: PathBuf,
}

impl Hierarchy {
    pub fn discover() -> Result<Self, CgroupError> {
        let info =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| CgroupError::Io {
                path: "/proc/self/mountinfo".into(),
                source,
            })?;
        cgroup2_mount(&info)
            .map(|root| Hierarchy { root })
            .ok_or(CgroupError::NoCgroup2)
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Hierarchy { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a cgroup named relative to the root (`agents/bot`, `/system.slice/x`).
    pub fn dir(&self, cgroup: &str) -> Result<PathBuf, CgroupError> {
        Ok(self.root.join(relative(cgroup)?))
    }

    /// Creates the cgroup if it does not exist yet and returns its id (the directory's inode,
    /// which is what bpf_get_current_cgroup_id reports).
    pub fn ensure(&self, cgroup: &str) -> Result<(PathBuf, u64), CgroupError> {
        let dir = self.dir(cgroup)?;
        std::fs::create_dir_all(&dir).map_err(|source| CgroupError::Io {
            path: dir.clone(),
            source,
        })?;
        let id = cgroup_id(&dir)?;
        Ok((dir, id))
    }
}

impl Hierarchy {
    /// The cgroups from `cgroup` itself up to (not including) the root that someone other than
    /// root may write, nearest first. Missing ones are skipped: the daemon creates them, as root.
    pub(crate) fn delegated(&self, cgroup: &str) -> Result<Vec<Delegated>, CgroupError> {
        let rel = relative(cgroup)?;
        let mut found = Vec::new();
        for level in rel.ancestors().take_while(|p| !p.as_os_str().is_empty()) {
            let dir = self.root.join(level);
            let Some(owner) = Ownership::of(&dir)? else {
                continue;
            };
            let procs = Ownership::of(&dir.join("cgroup.procs"))?;
            if writable_by_others(owner, procs) {
                found.push(Delegated {
                    cgroup: format!("/{}", level.display()),
                    dir,
                    owner,
                    procs,
                });
            }
        }
        Ok(found)
    }
}

/// A file's owner and permission bits, as stat reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ownership {
    pub(crate) uid: u32,
    pub(crate) mode: u32,
}

impl Ownership {
    fn of(path: &Path) -> Result<Option<Ownership>, CgroupError> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(Ownership {
                uid: m.uid(),
                mode: m.mode() & 0o7777,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CgroupError::Io {
                path: path.into(),
                source,
            }),
        }
    }

    /// Someone other than root may write it: the owner is not root, or group or other may.
    fn open_to_others(self) -> bool {
        self.uid != 0 || self.mode & 0o022 != 0
    }
}

/// Whether a cgroup directory with these facts lets a non-root user make cgroups in it or
/// move processes through it (its `cgroup.procs` is how processes move).
fn writable_by_others(dir: Ownership, procs: Option<Ownership>) -> bool {
    dir.open_to_others() || procs.is_some_and(Ownership::open_to_others)
}

/// A cgroup a non-root user may create cgroups in or move processes through (systemd's
/// `Delegate=`, user@.service): a process of that user anywhere below it can make a sibling of
/// its own cgroup and move there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delegated {
    /// Relative to the root, as policies name cgroups: `/user.slice/user-1000.slice/...`.
    pub(crate) cgroup: String,
    pub(crate) dir: PathBuf,
    pub(crate) owner: Ownership,
    pub(crate) procs: Option<Ownership>,
}

impl Delegated {
    /// The non-root uid that holds it, if a uid does (a mode-only opening has none).
    pub(crate) fn uid(&self) -> Option<u32> {
        [Some(self.owner), self.procs]
            .into_iter()
            .flatten()
            .map(|o| o.uid)
            .find(|uid| *uid != 0)
    }
}

impl std::fmt::Display for Delegated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (owner uid {}, mode {:04o}",
            self.dir.display(),
            self.owner.uid,
            self.owner.mode
        )?;
        if let Some(p) = self.procs {
            write!(f, "; cgroup.procs owner uid {}, mode {:04o}", p.uid, p.mode)?;
        }
        f.write_str(")")
    }
}

/// Whether `cgroup` is `ancestor` or lies below it (both as policies name them).
pub(crate) fn is_within(cgroup: &str, ancestor: &str) -> bool {
    cgroup == ancestor
        || cgroup
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

pub fn cgroup_id(dir: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Io {
            path: dir.into(),
            source,
        })
}

/// Normalises a policy's cgroup name: leading slashes dropped, `..` refused.
pub fn relative(cgroup: &str) -> Result<PathBuf, CgroupError> {
    let path = Path::new(cgroup.trim_start_matches('/'));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(CgroupError::BadPath(cgroup.into())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(CgroupError::BadPath(cgroup.into()));
    }
    Ok(out)
}

/// The mount point of the cgroup2 filesystem in a mountinfo listing.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mountpoint options [optional...] - fstype source opts
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| pre.split_whitespace().nth(4).map(unescape))?
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> PathBuf {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    PathBuf::from(out)
}

/// The cgroup2 path of a process (`/agents/bot`), from /proc/PID/cgroup.
pub fn of_process(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "\
25 30 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        assert_eq!(
            cgroup2_mount(HYBRID).unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
        assert_eq!(cgroup2_mount(UNIFIED).unwrap(), Path::new("/sys/fs/cgroup"));
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        let info = "41 31 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(info).unwrap(), Path::new("/mnt/cg two"));
    }

    #[test]
    fn writable_means_a_non_root_owner_or_group_other_write() {
        let facts = |uid, mode| Ownership { uid, mode };
        let cases = [
            (facts(0, 0o755), None, false),
            (facts(0, 0o1755), Some(facts(0, 0o644)), false),
            (facts(65534, 0o755), Some(facts(65534, 0o644)), true),
            (facts(65534, 0o755), Some(facts(0, 0o644)), true),
            (facts(0, 0o775), Some(facts(0, 0o644)), true),
            (facts(0, 0o757), Some(facts(0, 0o644)), true),
            (facts(0, 0o755), Some(facts(1000, 0o644)), true),
            (facts(0, 0o755), Some(facts(0, 0o666)), true),
        ];
        for (dir, procs, writable) in cases {
            assert_eq!(
                writable_by_others(dir, procs),
                writable,
                "{dir:?} {procs:?}"
            );
        }
        let d = Delegated {
            cgroup: "/u".into(),
            dir: "/sys/fs/cgroup/u".into(),
            owner: facts(0, 0o755),
            procs: Some(facts(1000, 0o644)),
        };
        assert_eq!(d.uid(), Some(1000));
        assert_eq!(
            d.to_string(),
            "/sys/fs/cgroup/u (owner uid 0, mode 0755; cgroup.procs owner uid 1000, mode 0644)"
        );
    }

    #[test]
    fn delegated_levels_are_found_nearest_first_and_missing_ones_skipped() {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy::at(root.path());
        std::fs::create_dir_all(root.path().join("a/b/c")).unwrap();
        for dir in ["a", "a/b", "a/b/c"] {
            std::fs::write(root.path().join(dir).join("cgroup.procs"), "").unwrap();
            let mode = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(root.path().join(dir), mode).unwrap();
            let mode = std::fs::Permissions::from_mode(0o644);
            std::fs::set_permissions(root.path().join(dir).join("cgroup.procs"), mode).unwrap();
        }
        std::os::unix::fs::chown(root.path().join("a/b/c"), Some(1000), None).unwrap();
        let mode = std::fs::Permissions::from_mode(0o666);
        std::fs::set_permissions(root.path().join("a/cgroup.procs"), mode).unwrap();
        let found = h.delegated("/a/b/c/not-yet").unwrap();
        let names: Vec<&str> = found.iter().map(|d| d.cgroup.as_str()).collect();
        assert_eq!(names, ["/a/b/c", "/a"]);
        assert_eq!(found[0].uid(), Some(1000));
        assert_eq!(found[1].uid(), None, "writable by mode only");
    }

    #[test]
    fn relative_paths_are_normalised_and_escapes_refused() {
        assert_eq!(
            relative("/system.slice/agent.service").unwrap(),
            Path::new("system.slice/agent.service")
        );
        assert_eq!(relative("agents/./bot").unwrap(), Path::new("agents/bot"));
        for bad in ["", "/", "agents/../etc", ".."] {
            assert!(relative(bad).is_err(), "{bad}");
        }
    }
}
