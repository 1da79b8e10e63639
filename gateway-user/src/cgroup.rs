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
