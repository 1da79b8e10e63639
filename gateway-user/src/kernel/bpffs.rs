//! Pins need a bpf filesystem. Most hosts mount one at /sys/fs/bpf; some (these CI machines
//! among them) do not, so the daemon mounts it there when its pin directory asks for it.
//!
//! The pin directory must be root's alone: /sys/fs/bpf is often world-writable (mode 1777),
//! and whoever owns the pin directory can unpin the links, which detaches the programs and
//! sets the agents free the next time the daemon stops.

use std::{
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use super::KernelError;

const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

pub fn ensure_mounted(pin_dir: &Path) -> Result<(), KernelError> {
    if is_bpffs(nearest_existing(pin_dir)) {
        return Ok(());
    }
    let default = Path::new(DEFAULT_BPFFS);
    if !pin_dir.starts_with(default) {
        return Err(KernelError::Bpffs(format!(
            "{} is not on a bpf filesystem; mount one (mount -t bpf bpf DIR) or pin under {DEFAULT_BPFFS}",
            pin_dir.display()
        )));
    }
    std::fs::create_dir_all(default)
        .map_err(|e| KernelError::Bpffs(format!("{DEFAULT_BPFFS}: {e}")))?;
    mount(
        Some("bpf"),
        default,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| KernelError::Bpffs(format!("mount -t bpf bpf {DEFAULT_BPFFS}: {e}")))?;
    tracing::info!(path = DEFAULT_BPFFS, "mounted bpffs");
    Ok(())
}

/// Creates the pin tree (`pin_dir`, `maps/`, `links/`) owned by root with mode 0700, or adopts
/// the one a previous daemon left. Refuses it, and every directory between the bpffs mount
/// point and it, when another user could have made or could write it: a squatter may already
/// hold pins of ours, so the daemon does not start at all.
pub(crate) fn prepare_pin_dir(pin_dir: &Path) -> Result<(), KernelError> {
    let root = mount_root(pin_dir)?;
    // The mount point itself is not ours to judge: a world-writable /sys/fs/bpf with the sticky
    // bit is normal, and the sticky bit keeps others from removing what root makes in it.
    // Unless it is the pin directory (a bpffs mounted for the daemon alone).
    let mut below: Vec<&Path> = pin_dir.ancestors().take_while(|p| *p != root).collect();
    if below.is_empty() {
        below.push(pin_dir);
    }
    below.reverse();
    let (maps, links) = (pin_dir.join("maps"), pin_dir.join("links"));
    for dir in below.into_iter().chain([maps.as_path(), links.as_path()]) {
        // mkdir first and judge after, so nobody can slip a directory in between the two.
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(KernelError::Bpffs(format!("{}: {e}", dir.display()))),
        }
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| KernelError::Bpffs(format!("{}: {e}", dir.display())))?;
        check_owner(dir, meta.uid(), meta.mode())?;
    }
    // Only root can have made these (checked above); older daemons made them 0755.
    for dir in [pin_dir, &maps, &links] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| KernelError::Bpffs(format!("chmod 0700 {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// The verdict on one directory of the pin path, from its lstat facts: a directory (never a
/// symlink, which could point anywhere) owned by root and writable by nobody else.
fn check_owner(path: &Path, uid: u32, mode: u32) -> Result<(), KernelError> {
    let is_dir = mode & libc::S_IFMT == libc::S_IFDIR;
    if is_dir && uid == 0 && mode & 0o022 == 0 {
        return Ok(());
    }
    let what = if is_dir {
        "directory"
    } else {
        "not a directory"
    };
    Err(KernelError::Bpffs(format!(
        "{} ({what}, owner uid {uid}, mode {:04o}) must be a directory owned by root and not \
         writable by group or other: whoever controls it can unpin the daemon's links and free \
         the governed agents. Remove it if nobody trustworthy made it",
        path.display(),
        mode & 0o7777
    )))
}

/// The directory the bpf filesystem holding `pin_dir` is mounted on.
fn mount_root(pin_dir: &Path) -> Result<&Path, KernelError> {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
    let mut root = nearest_existing(pin_dir);
    let ours = dev(root).map_err(|e| KernelError::Bpffs(format!("{}: {e}", root.display())))?;
    while let Some(parent) = root.parent() {
        if parent.as_os_str().is_empty() || dev(parent).ok() != Some(ours) {
            break;
        }
        root = parent;
    }
    Ok(root)
}

fn nearest_existing(mut p: &Path) -> &Path {
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    p
}

fn is_bpffs(p: &Path) -> bool {
    statfs(p).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: u32 = libc::S_IFDIR;

    #[test]
    fn only_root_owned_directories_closed_to_others_are_accepted() {
        let cases: [(u32, u32, Option<&str>); 9] = [
            (0, DIR | 0o700, None),
            (0, DIR | 0o755, None),
            (0, DIR | 0o1700, None),
            (65534, DIR | 0o700, Some("owner uid 65534, mode 0700")),
            (1000, DIR | 0o755, Some("owner uid 1000")),
            (0, DIR | 0o777, Some("owner uid 0, mode 0777")),
            (0, DIR | 0o1777, Some("mode 1777")),
            (0, DIR | 0o770, Some("mode 0770")),
            (0, libc::S_IFLNK | 0o777, Some("not a directory")),
        ];
        for (uid, mode, refused) in cases {
            let path = Path::new("/sys/fs/bpf/gatewayd");
            match (check_owner(path, uid, mode), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(needle)) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("/sys/fs/bpf/gatewayd") && e.contains(needle),
                        "{uid} {mode:o}: want {needle:?} in {e}"
                    );
                }
                (got, want) => panic!("{uid} {mode:o}: got {got:?}, want refusal {want:?}"),
            }
        }
    }
}
