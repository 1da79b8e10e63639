//! The daemon: load policies, pin the kernel side, accept redirected connections, reload on
//! SIGHUP, stop on SIGTERM. Stopping leaves the programs pinned: agents are refused until a
//! daemon serves again.

mod containment;
pub mod resolve;
mod session;
pub mod state;

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
};

use tokio::{
    net::{TcpListener, TcpSocket},
    signal::unix::{SignalKind, signal},
};

use crate::{
    audit::AuditStore,
    cgroup::{self, Hierarchy},
    config::Config,
    kernel::Kernel,
    policy::PolicySet,
};
use state::{Loaded, State};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("policies rejected:\n{0}")]
    Policy(#[from] crate::policy::PolicyErrors),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin socket {path}: {source}")]
    Admin {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "gatewayd runs in cgroup {0}, which a policy governs: its own connections would be redirected to itself"
    )]
    SelfGoverned(String),
    #[error("policies govern cgroups their agents could leave:\n{0}")]
    Escapable(String),
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    config.validate()?;
    let hierarchy = Hierarchy::discover()?;
    let set = PolicySet::load_dir(&config.policies)?;
    refuse_self_governance(&set)?;
    containment::refuse_escapable(&hierarchy, &set)?;
    // The CPU pool's threads start now: a host that cannot spawn them fails here, not in the
    // first session that needs one.
    crate::offload::cpu();
    crate::memory::init(config.memory_budget_bytes);
    let audit = AuditStore::open(&config.store)?;
    audit.set_reserve(config.store_reserve_bytes);
    // Before any session opens: what a crash left open is sealed, so verify names it.
    audit.seal_leftovers()?;
    // The daemon's own cgroup, where its listener's sockets are (a socket stays in the cgroup
    // it was made in): the program that binds origins to accepted sockets is attached there.
    let own_cgroup = own_cgroup(&hierarchy);
    // Listen before the programs attach, so redirected agents find a listener at once.
    let listeners = [
        listen(SocketAddr::from((Ipv4Addr::LOCALHOST, config.listen_port)))?,
        listen(SocketAddr::from((Ipv6Addr::LOCALHOST, config.listen_port)))?,
    ];
    let (kernel, origins) = Kernel::load(&config.pin_dir, config.listen_port, &own_cgroup)?;
    let admin = crate::admin::bind(&config.admin_socket).map_err(|source| DaemonError::Admin {
        path: config.admin_socket.display().to_string(),
        source,
    })?;
    let resolved = resolve::resolve_all(&set, &Default::default()).await;
    let handlers = crate::protocol::Handlers::new(&config.ssh_host_ca);
    let state = Arc::new(State {
        config,
        hierarchy,
        policies: RwLock::new(Arc::new(Loaded::default())),
        resolved: RwLock::new(Arc::new(resolved)),
        kernel: Mutex::new(kernel),
        origins,
        audit,
        last_reload_error: Mutex::new(None),
        active_sessions: Default::default(),
        handlers,
        approvals: Default::default(),
    });
    state.apply(set)?;
    log_policies(&state);

    let accepting: Vec<_> = listeners
        .into_iter()
        .map(|listener| tokio::spawn(accept_loop(listener, state.clone())))
        .collect();
    tokio::spawn(crate::admin::serve(admin, state.clone()));
    tokio::spawn(resolve::run(state.clone()));
    state.audit.spawn_recovery();
    if let Some(r) = &state.config.retention {
        let every = r.every.unwrap_or(std::time::Duration::from_secs(600));
        state.audit.spawn_pruning(every, r.max_age, r.max_bytes);
    }
    if let Some(hook) = state.config.webhook.clone() {
        tokio::spawn(crate::approval::webhook::run(
            hook,
            state.approvals.subscribe(),
        ));
    }
    tracing::info!(port = state.config.listen_port, admin = %state.config.admin_socket.display(), "gatewayd serving");

    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&state).await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!(
        "stopping; programs stay pinned, governed agents are refused until a daemon serves again"
    );
    // No new sessions; the live ones get a bounded time to finish and write their records,
    // then everything appended is flushed.
    for task in &accepting {
        task.abort();
    }
    let deadline = tokio::time::Instant::now() + DRAIN;
    while state
        .active_sessions
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let left = state
        .active_sessions
        .load(std::sync::atomic::Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "stopping with sessions still live: they stay open in the audit"
        );
    }
    state.audit.settle(true).await?;
    let _ = std::fs::remove_file(&state.config.admin_socket);
    Ok(())
}

/// How long a stopping daemon waits for live sessions to end (systemd's TimeoutStopSec is 90 s
/// by default): their records are written before it exits.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Re-reads the policy directory. A set with any error is rejected whole and the last good
/// one stays in force; live sessions are never dropped.
pub async fn reload(state: &State) {
    let result = PolicySet::load_dir(&state.config.policies)
        .map_err(|e| e.to_string())
        .and_then(|set| {
            refuse_self_governance(&set)
                .and_then(|()| containment::refuse_escapable(&state.hierarchy, &set))
                .map(|()| set)
                .map_err(|e| e.to_string())
        });
    let result = match result {
        Ok(set) => {
            let applied = state.apply(set).map_err(|e| e.to_string());
            if applied.is_ok() {
                resolve::refresh(state).await;
            }
            applied
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            *state
                .last_reload_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
            tracing::info!("policies reloaded");
            log_policies(state);
        }
        Err(e) => {
            tracing::error!(error = %e, "policy reload rejected; keeping the last good set");
            *state
                .last_reload_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    }
}

fn log_policies(state: &State) {
    for p in state.status().policies {
        tracing::info!(policy.name = %p.name, policy.cgroup = %p.cgroup, cgroup.id = p.cgroup_id, targets = p.targets, "policy in force");
    }
}

fn refuse_self_governance(set: &PolicySet) -> Result<(), DaemonError> {
    let Some(own) = cgroup::of_process(std::process::id()) else {
        return Ok(());
    };
    let inside = |governed: &str| own == governed || own.starts_with(&format!("{governed}/"));
    match set.policies.iter().find(|p| inside(&p.cgroup)) {
        Some(_) => Err(DaemonError::SelfGoverned(own)),
        None => Ok(()),
    }
}

/// The cgroup the daemon runs in. In the root cgroup (started by hand, not by systemd, which
/// gives it gatewayd.service), it first moves into a `gatewayd` cgroup of its own: the
/// listener's program runs for every socket of the cgroup it is attached to, and in the root
/// that would be every process on the host that is in no other cgroup.
fn own_cgroup(hierarchy: &Hierarchy) -> std::path::PathBuf {
    match crate::cgroup::of_process(std::process::id()) {
        Some(c) if c != "/" => {
            if let Ok(dir) = hierarchy.dir(&c) {
                return dir;
            }
        }
        _ => {}
    }
    let own = hierarchy.root().join("gatewayd");
    let moved = std::fs::create_dir_all(&own)
        .and_then(|()| std::fs::write(own.join("cgroup.procs"), std::process::id().to_string()));
    match moved {
        Ok(()) => own,
        Err(e) => {
            tracing::warn!(error = %e, cgroup = %own.display(), "staying in the root cgroup");
            hierarchy.root().to_owned()
        }
    }
}

fn listen(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    let err = |source| DaemonError::Listen { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    if addr.is_ipv6() {
        // `::ffff:127.0.0.1` redirects land on the IPv4 listener.
        socket2::SockRef::from(&socket)
            .set_only_v6(true)
            .map_err(err)?;
    }
    socket.bind(addr).map_err(err)?;
    socket.listen(4096).map_err(err)
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                let state = state.clone();
                tokio::spawn(async move { session::handle(&state, conn, peer).await });
            }
            Err(e) => {
                // Out of fds and the like: back off instead of spinning, keep serving.
                tracing::warn!(error = %e, "accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
