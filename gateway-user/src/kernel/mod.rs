//! Everything that touches aya: loading the programs, attaching and pinning them per governed
//! cgroup, and the maps the daemon shares with them.

mod bpffs;
mod link;
mod lsm;
pub mod origins;

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    net::SocketAddr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData},
    programs::{
        CgroupAttachMode, CgroupSkbAttachType, Program,
        links::{FdLink, PinnedLink},
    },
};
use gateway_common::{
    GLOBAL_LISTEN_PORT, MAP_ACCEPTED, MAP_CONN_ORIGINS, MAP_FLAGS, MAP_GOVERNED, MAP_RESOLVERS,
    PROGRAM_ACCEPT, ResolverKey,
};
pub use lsm::LsmStatus;
pub use origins::OriginTable;

/// The eBPF object built from gateway-ebpf by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// Every program, in the order they are attached. Names are the entry points in gateway-ebpf.
const PROGRAMS: [&str; 12] = [
    "egress",
    "setsockopt",
    "sock_create",
    "bind4",
    "bind6",
    "rekey_sockops",
    "getpeername4",
    "getpeername6",
    "sendmsg4",
    "sendmsg6",
    "connect4",
    "connect6",
];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {name}: {message}")]
    Link { name: &'static str, message: String },
    #[error("map {name}: {message}")]
    Map { name: &'static str, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.into(),
        source,
    }
}

/// A cgroup a policy is pinned to, as the kernel side needs it.
#[derive(Debug, Clone)]
pub struct Governed {
    pub id: u64,
    pub dir: PathBuf,
    pub dns_resolvers: Vec<SocketAddr>,
}

/// The loaded programs and the links this daemon made.
pub struct Kernel {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Distinguishes this daemon's link pins (`PROGRAM@GENERATION`; bpffs refuses dots in
    /// names) from those of the instance it replaces.
    generation: String,
    /// Our links, per cgroup id; they stay attached through their pins.
    links: BTreeMap<u64, Vec<PinnedLink>>,
    governed: HashMap<MapData, u64, u32>,
    resolvers: HashMap<MapData, ResolverKey, u32>,
    /// The listener's program on the daemon's own cgroup: attached while this value lives.
    _accept: FdLink,
    lsm: LsmStatus,
}

impl Kernel {
    /// Loads the programs with maps pinned (or adopted) under `pin_dir/maps`, and attaches the
    /// listener's program to `own_cgroup`, the daemon's cgroup, for as long as it runs.
    pub fn load(
        pin_dir: &Path,
        listen_port: u16,
        own_cgroup: &Path,
    ) -> Result<(Kernel, OriginTable), KernelError> {
        bpffs::ensure_mounted(pin_dir)?;
        bpffs::prepare_pin_dir(pin_dir)?;
        let maps_dir = pin_dir.join("maps");
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_LISTEN_PORT, &listen_port, true)
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)?;
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_log_pump(logger),
            Err(e) => tracing::warn!(error = %e, "kernel logs unavailable"),
        }
        for name in PROGRAMS.into_iter().chain([PROGRAM_ACCEPT]) {
            let program = ebpf.program_mut(name).ok_or(KernelError::Link {
                name,
                message: "missing from the object".into(),
            })?;
            let loaded = match program {
                Program::CgroupSockAddr(p) => p.load(),
                Program::SockOps(p) => p.load(),
                Program::CgroupSock(p) => p.load(),
                Program::CgroupSockopt(p) => p.load(),
                Program::CgroupSkb(p) => p.load(),
                other => {
                    return Err(KernelError::Link {
                        name,
                        message: format!("unexpected type {:?}", other.prog_type()),
                    });
                }
            };
            loaded.map_err(|source| KernelError::Program { name, source })?;
        }
        let mut conns = take_map(&mut ebpf, MAP_CONN_ORIGINS)?;
        let cleared = origins::clear(&mut conns);
        if cleared > 0 {
            tracing::info!(entries = cleared, "cleared origins a previous daemon left");
        }
        let origins = OriginTable::new(take_map(&mut ebpf, MAP_ACCEPTED)?);
        // Not pinned: when this daemon goes, so does its listener, and with it anything this
        // program could bind an origin to.
        let own = File::open(own_cgroup).map_err(io(own_cgroup))?;
        let accept = attach_one(&mut ebpf, PROGRAM_ACCEPT, &own)?;
        let governed = take_map(&mut ebpf, MAP_GOVERNED)?;
        let resolvers = take_map(&mut ebpf, MAP_RESOLVERS)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let generation = format!("{}-{}", now.as_nanos(), std::process::id());
        // Beside links/, whose entries are governed cgroups.
        let lsm = lsm::attach(&mut ebpf, &pin_dir.join("lsm"), &generation);
        if lsm == LsmStatus::Enforced {
            // Only now do the cgroup programs mark governed sockets for the LSM programs.
            let map = ebpf.map_mut(MAP_FLAGS).ok_or(KernelError::Map {
                name: MAP_FLAGS,
                message: "missing from the object".into(),
            })?;
            let mut flags =
                aya::maps::Array::<_, u32>::try_from(map).map_err(|e| KernelError::Map {
                    name: MAP_FLAGS,
                    message: e.to_string(),
                })?;
            flags.set(0, 1, 0).map_err(|e| KernelError::Map {
                name: MAP_FLAGS,
                message: e.to_string(),
            })?;
        }
        let kernel = Kernel {
            ebpf,
            pin_dir: pin_dir.into(),
            generation,
            links: BTreeMap::new(),
            governed,
            resolvers,
            _accept: accept,
            lsm,
        };
        Ok((kernel, origins))
    }

    /// Makes the kernel govern exactly `cgroups`: attaches to new ones, replaces links left by
    /// a previous daemon (attach first, then drop theirs, so there is no gap) and detaches
    /// cgroups no policy names any more.
    pub fn govern(&mut self, cgroups: &[Governed]) -> Result<(), KernelError> {
        let wanted: HashSet<u64> = cgroups.iter().map(|c| c.id).collect();
        for c in cgroups {
            self.governed
                .insert(c.id, 1, 0)
                .map_err(|e| KernelError::Map {
                    name: MAP_GOVERNED,
                    message: e.to_string(),
                })?;
        }
        for c in cgroups {
            if !self.links.contains_key(&c.id) {
                let links = self.attach(c)?;
                self.links.insert(c.id, links);
            }
        }
        self.sync_resolvers(cgroups)?;
        // Only now drop what is no longer wanted, and what earlier daemons left behind.
        let links_dir = self.pin_dir.join("links");
        for entry in std::fs::read_dir(&links_dir)
            .map_err(io(&links_dir))?
            .flatten()
        {
            let id = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok());
            match id {
                Some(id) if wanted.contains(&id) => self.remove_stale_pins(&entry.path())?,
                _ => {
                    if let Some(id) = id {
                        self.links.remove(&id);
                    }
                    std::fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
                }
            }
        }
        self.links.retain(|id, _| wanted.contains(id));
        let stale: Vec<u64> = self
            .governed
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !wanted.contains(id))
            .collect();
        for id in stale {
            let _ = self.governed.remove(&id);
        }
        Ok(())
    }

    fn attach(&mut self, c: &Governed) -> Result<Vec<PinnedLink>, KernelError> {
        let dir = self.pin_dir.join("links").join(c.id.to_string());
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let cgroup = File::open(&c.dir).map_err(io(&c.dir))?;
        let mut pinned = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            let path = dir.join(format!("{name}@{}", self.generation));
            let pin_err = |e: String| KernelError::Link {
                name,
                message: format!("pin {}: {e}", path.display()),
            };
            let link = match self.ebpf.program(name) {
                Some(Program::CgroupSockopt(p)) => {
                    let prog = p
                        .fd()
                        .map_err(|source| KernelError::Program { name, source })?;
                    link::create_pinned(
                        prog.as_fd(),
                        cgroup.as_fd(),
                        link::BPF_CGROUP_SETSOCKOPT,
                        &path,
                    )
                    .map_err(|e| pin_err(e.to_string()))?
                }
                _ => attach_one(&mut self.ebpf, name, &cgroup)?
                    .pin(&path)
                    .map_err(|e| pin_err(e.to_string()))?,
            };
            pinned.push(link);
        }
        tracing::info!(cgroup.id = c.id, cgroup.dir = %c.dir.display(), "programs attached");
        Ok(pinned)
    }

    /// Removes link pins of earlier generations for one cgroup; removing the last reference
    /// to a link detaches it.
    fn remove_stale_pins(&self, dir: &Path) -> Result<(), KernelError> {
        for pin in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let name = pin.file_name();
            let ours = name
                .to_str()
                .is_some_and(|n| n.ends_with(&format!("@{}", self.generation)));
            if !ours {
                std::fs::remove_file(pin.path()).map_err(io(&pin.path()))?;
            }
        }
        Ok(())
    }

    fn sync_resolvers(&mut self, cgroups: &[Governed]) -> Result<(), KernelError> {
        let wanted: HashSet<ResolverKey> = cgroups
            .iter()
            .flat_map(|c| c.dns_resolvers.iter().map(move |r| resolver_key(c.id, *r)))
            .collect();
        for key in &wanted {
            self.resolvers
                .insert(key, 1, 0)
                .map_err(|e| KernelError::Map {
                    name: MAP_RESOLVERS,
                    message: e.to_string(),
                })?;
        }
        let stale: Vec<ResolverKey> = self
            .resolvers
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            let _ = self.resolvers.remove(&key);
        }
        Ok(())
    }

    pub fn lsm(&self) -> LsmStatus {
        self.lsm.clone()
    }

    pub fn governed_ids(&self) -> Vec<u64> {
        self.links.keys().copied().collect()
    }
}

fn attach_one(ebpf: &mut Ebpf, name: &'static str, cgroup: &File) -> Result<FdLink, KernelError> {
    let link_err = |message: String| KernelError::Link { name, message };
    let prog_err = |source| KernelError::Program { name, source };
    // Cgroup links are always multi-attach; `Single` is the mode bpf_link_create accepts.
    let mode = CgroupAttachMode::Single;
    match ebpf.program_mut(name) {
        Some(Program::CgroupSockAddr(p)) => {
            let id = p.attach(cgroup, mode).map_err(prog_err)?;
            let link = p.take_link(id).map_err(prog_err)?;
            FdLink::try_from(link).map_err(|e| link_err(e.to_string()))
        }
        Some(Program::SockOps(p)) => {
            let id = p.attach(cgroup, mode).map_err(prog_err)?;
            let link = p.take_link(id).map_err(prog_err)?;
            FdLink::try_from(link).map_err(|e| link_err(e.to_string()))
        }
        Some(Program::CgroupSock(p)) => {
            let id = p.attach(cgroup, mode).map_err(prog_err)?;
            let link = p.take_link(id).map_err(prog_err)?;
            FdLink::try_from(link).map_err(|e| link_err(e.to_string()))
        }
        Some(Program::CgroupSkb(p)) => {
            let id = p
                .attach(cgroup, CgroupSkbAttachType::Egress, mode)
                .map_err(prog_err)?;
            let link = p.take_link(id).map_err(prog_err)?;
            FdLink::try_from(link).map_err(|e| link_err(e.to_string()))
        }
        _ => Err(link_err("not a cgroup program".into())),
    }
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, KernelError> {
    let map = ebpf.take_map(name).ok_or(KernelError::Map {
        name,
        message: "missing from the object".into(),
    })?;
    HashMap::try_from(map).map_err(|e| KernelError::Map {
        name,
        message: e.to_string(),
    })
}

fn resolver_key(governed: u64, r: SocketAddr) -> ResolverKey {
    ResolverKey {
        governed_cgroup_id: governed,
        addr: origins::to_words(r.ip()),
        port: u32::from(r.port()),
        _pad: 0,
    }
}

/// Forwards aya-log records from the kernel into tracing (through the `log` bridge).
fn spawn_log_pump(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd and keeps it open and unchanged for as long
    // as it lives, which is as long as the AsyncFd that wraps it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        return;
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Detaches and removes everything a daemon pinned under `pin_dir`. Governed agents are then
/// no longer redirected: this is the explicit way out, never something a crash does.
pub fn uninstall(pin_dir: &Path) -> Result<bool, KernelError> {
    bpffs::ensure_mounted(pin_dir)?;
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(KernelError::Io {
            path: pin_dir.into(),
            source,
        }),
    }
}
