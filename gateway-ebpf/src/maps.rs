//! Maps shared with the daemon, all pinned by name so a restarted daemon adopts them, and the
//! lookups the hooks make in them.

use aya_ebpf::{
    helpers::bpf_get_current_ancestor_cgroup_id,
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use gateway_common::{
    Addr, ConnKey, MAX_CGROUP_DEPTH, MAX_CONNECTIONS, MAX_GOVERNED_CGROUPS, MAX_RESOLVERS, Origin,
    ResolverKey,
};

/// Set by the daemon at load time (read-only data): the port of its listener.
// SAFETY: the daemon finds the global by this name; nothing else in the object has it.
#[unsafe(no_mangle)]
static GW_LISTEN_PORT: u16 = 0;

#[inline(always)]
pub fn listen_port() -> u16 {
    // SAFETY: a reference to a static is valid and aligned. Volatile because the loader
    // writes the value into the object's read-only data before the program runs, where the
    // compiler would otherwise fold in the 0 it was compiled with.
    unsafe { core::ptr::read_volatile(&GW_LISTEN_PORT) }
}

/// Per-CPU LRU lists: connect() inserts on every governed connection, and the common list's
/// lock is what such inserts contend on.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// connect() records by socket cookie; getpeername reads it back for the socket's lifetime.
#[map(name = "GW_SOCK_ORIGINS")]
pub static SOCK_ORIGINS: LruHashMap<u64, Origin> =
    LruHashMap::pinned(MAX_CONNECTIONS, BPF_F_NO_COMMON_LRU);

/// sock_ops re-keys by the agent's end of the connection at connect(); the listener's
/// sock_ops takes it at the handshake into `ACCEPTED`. Removed when the agent's socket closes,
/// so no entry outlives its connection.
#[map(name = "GW_CONN_ORIGINS")]
pub static CONN_ORIGINS: LruHashMap<ConnKey, Origin> =
    LruHashMap::pinned(MAX_CONNECTIONS, BPF_F_NO_COMMON_LRU);

/// The origin of each connection the daemon's listener completed, keyed by the accepted
/// socket's cookie (unique for the boot, never reused); the daemon takes it by the cookie of
/// the socket accept() gave it. Not pinned: it belongs to the daemon that loaded it.
#[map(name = "GW_ACCEPTED")]
pub static ACCEPTED: LruHashMap<u64, Origin> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, BPF_F_NO_COMMON_LRU);

/// Sockets created in governed cgroups (by cookie; value unused), which the LSM hooks let
/// governed tasks use. Pinned, so that a restart keeps them; a TCP socket's entry goes when it
/// closes, a UDP socket's when the LRU needs the room.
#[map(name = "GW_GOVERNED_SOCKS")]
pub static GOVERNED_SOCKS: LruHashMap<u64, u8> =
    LruHashMap::pinned(MAX_CONNECTIONS * 4, BPF_F_NO_COMMON_LRU);

/// Set by the daemon: index 0 is 1 when its BPF LSM programs are attached. Sockets are marked
/// in `GOVERNED_SOCKS` only then: without those programs nobody reads the marks.
#[map(name = "GW_FLAGS")]
pub static FLAGS: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn lsm_enforced() -> bool {
    FLAGS.get(0).is_some_and(|v| *v == 1)
}

/// cgroup ids that a policy is pinned to (value unused).
#[map(name = "GW_GOVERNED")]
pub static GOVERNED: HashMap<u64, u32> = HashMap::pinned(MAX_GOVERNED_CGROUPS, 0);

/// DNS resolvers each governed cgroup may reach over UDP (value unused).
#[map(name = "GW_RESOLVERS")]
pub static RESOLVERS: HashMap<ResolverKey, u32> = HashMap::pinned(MAX_RESOLVERS, 0);

/// The nearest ancestor of the current cgroup (or itself) that a policy governs; 0 if none.
#[inline(always)]
pub fn governed_ancestor() -> u64 {
    // SAFETY: the helper only reads the current task's cgroup.
    governed_ancestor_by(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level) })
}

/// The nearest governed ancestor, with `ancestor(level)` giving the cgroup id at each level
/// from the root (0 past the deepest).
#[inline(always)]
pub fn governed_ancestor_by(ancestor: impl Fn(i32) -> u64) -> u64 {
    let mut found = 0;
    for level in 0..MAX_CGROUP_DEPTH {
        let id = ancestor(level);
        if id == 0 {
            break;
        }
        if GOVERNED.get_ptr(id).is_some() {
            found = id;
        }
    }
    found
}

#[inline(always)]
pub fn resolver_allowed(governed: u64, addr: &Addr, port: u16) -> bool {
    let key = ResolverKey {
        governed_cgroup_id: governed,
        addr: *addr,
        port: u32::from(port),
        _pad: 0,
    };
    RESOLVERS.get_ptr(key).is_some()
}
