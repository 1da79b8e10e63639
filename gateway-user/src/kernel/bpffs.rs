//! Pins need a bpf filesystem. Most hosts mount one at /sys/fs/bpf; some (these CI machines
//! among them) do not, so the daemon mounts it there when its pin directory asks for it.

use std::path::Path;

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
