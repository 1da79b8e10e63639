//! What the daemon's tasks share: the loaded policies, resolved names, the kernel handle and
//! the audit store. Policies are swapped whole on reload; live sessions keep the Arc they had.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64},
};

use serde::Serialize;

use crate::{
    audit::AuditStore,
    cgroup::Hierarchy,
    config::Config,
    kernel::{Governed, Kernel, KernelError, OriginTable},
    policy::{Policy, PolicySet, Resolved},
};

/// A policy set together with the cgroup id each policy is pinned to.
#[derive(Default)]
pub struct Loaded {
    pub set: PolicySet,
    pub by_cgroup: HashMap<u64, Arc<Policy>>,
}

pub struct State {
    pub config: Config,
    pub hierarchy: Hierarchy,
    pub policies: RwLock<Arc<Loaded>>,
    pub resolved: RwLock<Arc<Resolved>>,
    pub kernel: Mutex<Kernel>,
    pub origins: OriginTable,
    pub audit: AuditStore,
    pub last_reload_error: Mutex<Option<String>>,
    pub active_sessions: AtomicU64,
    /// Each protocol's state shared by its sessions.
    pub handlers: crate::protocol::Handlers,
    /// Commands held for a human decision, from every session.
    pub approvals: Arc<crate::approval::Broker>,
}

#[derive(Debug, Serialize)]
pub struct PolicyStatus {
    pub name: String,
    pub file: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub targets: usize,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub listen_port: u16,
    pub pin_dir: String,
    /// Whether BPF LSM programs back the cgroup hooks on this host, and if not, what is
    /// therefore not guaranteed.
    pub lsm: crate::kernel::LsmStatus,
    pub policies: Vec<PolicyStatus>,
    pub last_reload_error: Option<String>,
    pub active_sessions: u64,
    /// Statement events the audit writer could not store since the daemon started.
    pub audit_events_lost: u64,
    /// Why the audit store cannot write now (sessions are refused until it reopens).
    pub audit_broken: Option<String>,
    /// Bytes of the memory budget held by large messages now, and the budget.
    pub memory_in_use: usize,
    pub memory_budget: usize,
}

impl State {
    pub fn policies(&self) -> Arc<Loaded> {
        self.policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn resolved(&self) -> Arc<Resolved> {
        self.resolved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Pins `set` into the kernel and makes it current. On error nothing changes in user space;
    /// the kernel keeps governing at least the cgroups it governed before.
    pub fn apply(&self, set: PolicySet) -> Result<(), KernelError> {
        let mut governed = Vec::with_capacity(set.policies.len());
        let mut by_cgroup = HashMap::new();
        for p in &set.policies {
            let (dir, id) = self
                .hierarchy
                .ensure(&p.cgroup)
                .map_err(|e| KernelError::Io {
                    path: p.file.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
            governed.push(Governed {
                id,
                dir,
                dns_resolvers: p.dns_resolvers.clone(),
            });
            by_cgroup.insert(id, p.clone());
        }
        self.kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .govern(&governed)?;
        self.handlers.prepare(
            set.policies
                .iter()
                .flat_map(|p| &p.targets)
                .map(|t| &t.kind),
        );
        *self.policies.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(Loaded { set, by_cgroup });
        Ok(())
    }

    pub fn status(&self) -> Status {
        let loaded = self.policies();
        let mut policies: Vec<PolicyStatus> = loaded
            .by_cgroup
            .iter()
            .map(|(id, p)| PolicyStatus {
                name: p.name.clone(),
                file: p.file.display().to_string(),
                cgroup: p.cgroup.clone(),
                cgroup_id: *id,
                targets: p.targets.len(),
            })
            .collect();
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            listen_port: self.config.listen_port,
            pin_dir: self.config.pin_dir.display().to_string(),
            lsm: self.kernel.lock().unwrap_or_else(|e| e.into_inner()).lsm(),
            policies,
            last_reload_error: self
                .last_reload_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            active_sessions: self
                .active_sessions
                .load(std::sync::atomic::Ordering::Relaxed),
            audit_events_lost: self.audit.events_lost(),
            audit_broken: self.audit.unavailable(),
            memory_in_use: crate::memory::global().used(),
            memory_budget: crate::memory::global().limit(),
        }
    }
}
