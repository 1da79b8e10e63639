//! The BPF LSM programs (gateway-ebpf/src/lsm.rs): loaded against the kernel's BTF, attached
//! host-wide and pinned like the cgroup links, so that they hold while the daemon restarts.
//! Where the kernel has no BPF LSM (not built in, or `bpf` missing from the active list), the
//! daemon runs with the cgroup hooks alone and says which guarantees it cannot give.

use std::path::Path;

use aya::{
    Btf, Ebpf,
    programs::{Program, links::FdLink},
};
use serde::Serialize;

/// The hooks, named as their programs are.
const HOOKS: [&str; 3] = ["socket_connect", "socket_sendmsg", "ptrace_access_check"];

const ACTIVE_LSMS: &str = "/sys/kernel/security/lsm";

/// What this host's kernel enforces beyond the cgroup hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum LsmStatus {
    /// Governed tasks cannot use sockets made outside governed cgroups, nor attach to other
    /// processes.
    Enforced,
    /// Why not, and what is therefore not guaranteed.
    Unavailable(String),
}

/// What is open without the LSM programs, for the log and `gatewayctl status`.
const NOT_GUARANTEED: &str = "without BPF LSM a governed agent can use a socket created \
    outside governed cgroups (made before it was moved in, or passed in over SCM_RIGHTS or \
    pidfd_getfd) and can ptrace a process of its uid outside them";

/// Loads, attaches and pins the LSM programs under `dir`, replacing a previous daemon's.
pub(super) fn attach(ebpf: &mut Ebpf, dir: &Path, generation: &str) -> LsmStatus {
    match try_attach(ebpf, dir, generation) {
        Ok(()) => {
            tracing::info!(hooks = ?HOOKS, "BPF LSM programs attached");
            LsmStatus::Enforced
        }
        Err(why) => {
            let detail = format!("{why}: {NOT_GUARANTEED}");
            tracing::warn!(lsm = %detail, "running with the cgroup hooks alone");
            LsmStatus::Unavailable(detail)
        }
    }
}

fn try_attach(ebpf: &mut Ebpf, dir: &Path, generation: &str) -> Result<(), String> {
    active()?;
    let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
    // Root's alone, like the rest of the pin tree: whoever can unlink these pins can detach
    // the programs once the daemon stops.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for hook in HOOKS {
        let Some(Program::Lsm(p)) = ebpf.program_mut(hook) else {
            return Err(format!("program {hook} missing from the object"));
        };
        p.load(hook, &btf)
            .map_err(|e| format!("loading {hook}: {e}"))?;
        let id = p.attach().map_err(|e| format!("attaching {hook}: {e}"))?;
        let link: FdLink = p
            .take_link(id)
            .map_err(|e| format!("attaching {hook}: {e}"))?
            .into();
        let pin = dir.join(format!("{hook}@{generation}"));
        link.pin(&pin)
            .map_err(|e| format!("pinning {}: {e}", pin.display()))?;
    }
    // Ours hold now: the previous daemon's links can go.
    let suffix = format!("@{generation}");
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())?.flatten() {
        if !entry.file_name().to_string_lossy().ends_with(&suffix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Whether `bpf` is among the kernel's active LSMs (securityfs mounted if it is not yet).
fn active() -> Result<(), String> {
    if !Path::new(ACTIVE_LSMS).exists() {
        nix::mount::mount(
            Some("securityfs"),
            "/sys/kernel/security",
            Some("securityfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("mounting securityfs: {e}"))?;
    }
    let list = std::fs::read_to_string(ACTIVE_LSMS).map_err(|e| format!("{ACTIVE_LSMS}: {e}"))?;
    if list.trim().split(',').any(|l| l == "bpf") {
        Ok(())
    } else {
        Err(format!(
            "bpf is not an active LSM ({ACTIVE_LSMS}: {}; add it to lsm= on the kernel command line)",
            list.trim()
        ))
    }
}
