//! Types the eBPF programs and the daemon share. Every map key and value is `#[repr(C)]` with
//! explicit padding: the kernel hashes keys byte by byte, so no byte may be left undefined.
#![no_std]

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Deepest cgroup level searched for a governed ancestor. cgroup trees on real hosts are
/// shallow (`system.slice/x.service` is level 2); the bound keeps the loop verifiable.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Entries in the per-connection maps. LRU, so a connection the daemon never accepted
/// cannot pin memory forever.
pub const MAX_CONNECTIONS: u32 = 65_536;
pub const MAX_GOVERNED_CGROUPS: u32 = 1_024;
pub const MAX_RESOLVERS: u32 = 4_096;

/// Names of the pinned maps (the daemon opens them by these names under its pin directory).
pub const MAP_SOCK_ORIGINS: &str = "GW_SOCK_ORIGINS";
pub const MAP_CONN_ORIGINS: &str = "GW_CONN_ORIGINS";
pub const MAP_GOVERNED: &str = "GW_GOVERNED";
pub const MAP_RESOLVERS: &str = "GW_RESOLVERS";
/// Not pinned: each daemon's own flags for its programs (index 0: BPF LSM attached).
pub const MAP_FLAGS: &str = "GW_FLAGS";
/// Not pinned: each daemon's own, filled by its listener's sock_ops program.
pub const MAP_ACCEPTED: &str = "GW_ACCEPTED";

/// The program attached to the daemon's own cgroup, which binds each origin to the socket the
/// daemon accepts.
pub const PROGRAM_ACCEPT: &str = "accept_sockops";

/// Name of the read-only global holding the daemon's listener port (host order).
pub const GLOBAL_LISTEN_PORT: &str = "GW_LISTEN_PORT";

/// An address as the kernel hands it over: IPv6 words in network byte order. IPv4 is kept
/// as IPv4-mapped IPv6 (`::ffff:a.b.c.d`) so one key type serves both families.
pub type Addr = [u32; 4];

/// `::ffff:0:0/96` prefix word, in network byte order.
pub const V4_MAPPED_PREFIX: u32 = u32::from_be(0x0000_ffff);

#[inline(always)]
pub const fn v4_mapped(ip4_be: u32) -> Addr {
    [0, 0, V4_MAPPED_PREFIX, ip4_be]
}

#[inline(always)]
pub const fn is_v4_mapped(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_PREFIX
}

/// Where a governed socket meant to go and who opened it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Original destination (IPv4 as mapped IPv6).
    pub dst_addr: Addr,
    /// Original destination port, host order.
    pub dst_port: u16,
    /// Address family of the agent's socket (`AF_INET` or `AF_INET6`).
    pub family: u16,
    /// Process id (tgid) and thread id of the caller of connect().
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
    /// cgroup (inode number) the caller ran in.
    pub cgroup_id: u64,
    /// The nearest ancestor (or itself) that a policy is pinned to; 0 when none was found,
    /// which the daemon refuses.
    pub governed_cgroup_id: u64,
}

/// The agent's end of a redirected connection: what the daemon sees as the peer address.
/// Unique among live redirected connections, which all share the listener as destination; a
/// later connection may reuse it, which is why the origin moves to the accepted socket's own
/// entry (keyed by its cookie) at the handshake.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub addr: Addr,
    /// Host order.
    pub port: u32,
}

/// A DNS resolver a governed cgroup may send UDP to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResolverKey {
    pub governed_cgroup_id: u64,
    pub addr: Addr,
    /// Host order.
    pub port: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data, repr(C), explicit padding, no pointers.
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ResolverKey {}
}
