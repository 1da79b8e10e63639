//! Kernel side of the gateway: cgroup socket hooks attached to every cgroup a policy governs.
//!
//! Each hook is a thin entry point over a `try_` function. The programs only redirect and
//! record; every decision about what an agent may reach is taken by the daemon, except the
//! ones that must be taken before a packet exists (UDP, raw sockets, binds).
//!
//! Every `unsafe` block says why it is sound in a `// SAFETY:` comment (clippy holds us to it).
//! Most are reads of the context the kernel handed to the program, or helper calls with it:
//! valid for the program's run, and checked again by the verifier at load time.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

mod lsm;
mod maps;
mod route;
mod sockaddr;

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sock_addr, sock_ops},
    programs::{SockAddrContext, SockContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use gateway_common::{AF_INET6, Addr, ConnKey, Origin, is_v4_mapped, v4_mapped};

use crate::{
    maps::{
        ACCEPTED, CONN_ORIGINS, GOVERNED_SOCKS, SOCK_ORIGINS, governed_ancestor, listen_port,
        lsm_enforced, resolver_allowed,
    },
    sockaddr::{Family, SockAddr, V4, V6},
};

/// Return values of cgroup socket programs: 1 lets the call proceed, 0 fails it with EPERM.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const TCP_CLOSE: u32 = 7;

const LOOPBACK4: u32 = u32::from_be(0x7f00_0001);
const LOOPBACK6: Addr = [0, 0, 0, u32::from_be(1)];

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, SockAddr::<V4>::new(&ctx)).unwrap_or(REFUSE)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, SockAddr::<V6>::new(&ctx)).unwrap_or(REFUSE)
}

/// Redirects a governed TCP connect to the daemon and records where it was going.
/// UDP connects are judged like UDP sends: only the policy's resolvers.
fn try_connect<F: Family>(ctx: &SockAddrContext, sa: SockAddr<F>) -> Result<i32, i32> {
    let (dst, port) = (sa.addr(), sa.port());
    let governed = governed_ancestor();
    match sa.sock_type() {
        SOCK_STREAM => {}
        SOCK_DGRAM => return Ok(judge_udp(ctx, governed, &dst, port)),
        _ => return Ok(REFUSE),
    }
    // With policies pinned to nested cgroups the program runs once per attachment; the first
    // run already pointed the socket at the daemon and recorded the real destination.
    if port == listen_port() && (dst == v4_mapped(LOOPBACK4) || dst == LOOPBACK6) {
        return Ok(ALLOW);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let origin = Origin {
        dst_addr: dst,
        dst_port: port,
        family: sa.family(),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        _pad: 0,
        // SAFETY: the helper takes no arguments and only reads the current task's cgroup.
        cgroup_id: unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() },
        governed_cgroup_id: governed,
    };
    let cookie = socket_cookie(ctx);
    // No room to remember the origin means the daemon could not judge it: refuse.
    SOCK_ORIGINS.insert(cookie, origin, 0)?;
    if is_v4_mapped(&dst) {
        sa.set_addr(&v4_mapped(LOOPBACK4));
    } else {
        sa.set_addr(&LOOPBACK6);
    }
    sa.set_port(listen_port());
    Ok(ALLOW)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa = SockAddr::<V4>::new(&ctx);
    judge_udp(&ctx, governed_ancestor(), &sa.addr(), sa.port())
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    let sa = SockAddr::<V6>::new(&ctx);
    judge_udp(&ctx, governed_ancestor(), &sa.addr(), sa.port())
}

/// UDP leaves the host only towards the DNS resolvers the policy names: QUIC and other
/// datagram protocols would otherwise slip past inspection.
fn judge_udp(ctx: &SockAddrContext, governed: u64, dst: &Addr, port: u16) -> i32 {
    if resolver_allowed(governed, dst, port) {
        return ALLOW;
    }
    warn!(ctx, "refused udp from cgroup {} to port {}", governed, port);
    REFUSE
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, SockAddr::<V4>::new(&ctx));
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    restore_peer(&ctx, SockAddr::<V6>::new(&ctx));
    ALLOW
}

/// The agent sees the address it dialled, never the daemon's listener.
fn restore_peer<F: Family>(ctx: &SockAddrContext, sa: SockAddr<F>) {
    let cookie = socket_cookie(ctx);
    if let Some(origin) = SOCK_ORIGINS.get_ptr(cookie) {
        // SAFETY: `origin` comes from `get_ptr` in this run.
        let origin = unsafe { read_origin(origin) };
        sa.set_addr(&origin.dst_addr);
        sa.set_port(origin.dst_port);
    }
}

#[cgroup_sock_addr(bind4)]
pub fn bind4(ctx: SockAddrContext) -> i32 {
    judge_bind(&ctx, SockAddr::<V4>::new(&ctx))
}

#[cgroup_sock_addr(bind6)]
pub fn bind6(ctx: SockAddrContext) -> i32 {
    judge_bind(&ctx, SockAddr::<V6>::new(&ctx))
}

/// An agent must never be able to stand in for the gateway on its port.
fn judge_bind<F: Family>(ctx: &SockAddrContext, sa: SockAddr<F>) -> i32 {
    if sa.port() == listen_port() {
        warn!(ctx, "refused bind to the gateway port {}", sa.port());
        return REFUSE;
    }
    ALLOW
}

#[cgroup_sock(sock_create)]
pub fn sock_create(ctx: SockContext) -> i32 {
    // SAFETY: `ctx.sock` is the `bpf_sock` the kernel handed to this run, live until it
    // returns; these are u32 fields the hook may read.
    let (family, ty, protocol) =
        unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    // Only the sockets the other hooks can judge: TCP (redirected to the daemon) and UDP
    // (resolvers only). Raw sockets, ICMP datagrams, SCTP, MPTCP and UDP-Lite would carry
    // data past them. The kernel runs this hook for inet sockets only, so AF_PACKET is closed
    // by capabilities instead (README, threat model).
    match (ty, protocol) {
        (SOCK_STREAM, IPPROTO_TCP) | (SOCK_DGRAM, IPPROTO_UDP) => {
            if !lsm_enforced() {
                return ALLOW;
            }
            // What the LSM hooks accept from governed tasks: sockets these hooks judge.
            let cookie = socket_cookie(&ctx);
            match GOVERNED_SOCKS.insert(cookie, 1, 0) {
                Ok(()) => ALLOW,
                Err(_) => REFUSE,
            }
        }
        _ => {
            warn!(
                &ctx,
                "refused socket family {} type {} protocol {}", family, ty, protocol
            );
            REFUSE
        }
    }
}

#[sock_ops]
pub fn rekey_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_tcp_connect(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB if lsm_enforced() => {
            // A connection a governed listener accepted: its socket is as governed as one
            // made by socket(), which the LSM hooks must know (sock_create never saw it).
            let cookie = socket_cookie(&ctx);
            if GOVERNED_SOCKS.insert(cookie, 1, 0).is_ok() {
                let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => on_tcp_close(&ctx),
        _ => {}
    }
    1
}

/// Runs inside connect(), before the SYN: the entry exists before the daemon can accept.
fn on_tcp_connect(ctx: &SockOpsContext) {
    let cookie = socket_cookie(ctx);
    let Some(origin) = SOCK_ORIGINS.get_ptr(cookie) else {
        return;
    };
    // SAFETY: `origin` comes from `get_ptr` in this run.
    let origin = unsafe { read_origin(origin) };
    // Failure leaves the daemon without an origin, which it refuses: fail closed.
    let _ = CONN_ORIGINS.insert(conn_key(ctx), origin, 0);
    // Ask for state changes so the entries go when the connection does.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

/// The agent's socket is gone: so are its entries. The connection's entry has normally moved
/// to the accepted socket already; if not (the daemon was down and the connect was refused,
/// or it never completed), it must not wait for a later connection from the same address and
/// port to inherit it. Removed only while it is still this socket's (the same origin).
fn on_tcp_close(ctx: &SockOpsContext) {
    let cookie = socket_cookie(ctx);
    let _ = GOVERNED_SOCKS.remove(cookie);
    let Some(mine) = SOCK_ORIGINS.get_ptr(cookie) else {
        return;
    };
    // SAFETY: `mine` comes from `get_ptr` in this run.
    let mine = unsafe { read_origin(mine) };
    let key = conn_key(ctx);
    if let Some(entry) = CONN_ORIGINS.get_ptr(key)
        // SAFETY: `entry` comes from `get_ptr` in this run.
        && unsafe { read_origin(entry) } == mine
    {
        let _ = CONN_ORIGINS.remove(key);
    }
    let _ = SOCK_ORIGINS.remove(cookie);
}

/// Attached to the daemon's own cgroup: its listener's accepted sockets.
#[sock_ops]
pub fn accept_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accepted(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // Closed before the daemon took it (it stopped, or refused the connection).
            let cookie = socket_cookie(&ctx);
            let _ = ACCEPTED.remove(cookie);
        }
        _ => {}
    }
    1
}

/// The handshake on the daemon's listener completed: the origin recorded at the agent's
/// connect() moves to this very socket. The agent's end cannot be reused before this runs
/// (its socket is still connecting), so the entry taken is this connection's.
fn on_accepted(ctx: &SockOpsContext) {
    if ctx.local_port() != u32::from(listen_port()) {
        return;
    }
    let key = peer_key(ctx);
    let Some(origin) = CONN_ORIGINS.get_ptr(key) else {
        return;
    };
    // SAFETY: `origin` comes from `get_ptr` in this run.
    let origin = unsafe { read_origin(origin) };
    let _ = CONN_ORIGINS.remove(key);
    let cookie = socket_cookie(ctx);
    // No room means no origin for this socket, which the daemon refuses: fail closed.
    if ACCEPTED.insert(cookie, origin, 0).is_ok() {
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    }
}

/// The agent's end of an accepted connection, keyed as [`conn_key`] keyed it on the agent's
/// side: IPv4 as mapped IPv6.
fn peer_key(ctx: &SockOpsContext) -> ConnKey {
    let ops = ctx.ops;
    // The big-endian port sits in the upper half (DESIGN.md, kernel facts).
    let port = u32::from(u16::from_be((ctx.remote_port() >> 16) as u16));
    if ctx.family() == AF_INET6 as u32 {
        // SAFETY: `ops` is the `bpf_sock_ops` the kernel handed to this run, live until it
        // returns; `remote_ip6` is a readable `[u32; 4]` field of it.
        let remote = unsafe { sockaddr::read_words(core::ptr::addr_of!((*ops).remote_ip6)) };
        return ConnKey { addr: remote, port };
    }
    ConnKey {
        addr: v4_mapped(ctx.remote_ip4()),
        port,
    }
}

/// The agent's end of the connection, keyed the way the daemon sees its peer: an IPv4 or
/// IPv4-mapped connection as mapped IPv6, a pure IPv6 one (dialled to `::1`) as itself.
fn conn_key(ctx: &SockOpsContext) -> ConnKey {
    let ops = ctx.ops;
    // SAFETY: `ops` is the `bpf_sock_ops` the kernel handed to this run, live until it
    // returns; `local_port`, `local_ip4` and the `[u32; 4]` fields `remote_ip6` and
    // `local_ip6` (read in the blocks below) are readable fields of it.
    let port = unsafe { (*ops).local_port };
    if ctx.family() == AF_INET6 as u32 {
        // SAFETY: as above.
        let remote = unsafe { sockaddr::read_words(core::ptr::addr_of!((*ops).remote_ip6)) };
        if !is_v4_mapped(&remote) && remote != [0; 4] {
            // SAFETY: as above.
            let local = unsafe { sockaddr::read_words(core::ptr::addr_of!((*ops).local_ip6)) };
            return ConnKey { addr: local, port };
        }
    }
    ConnKey {
        // SAFETY: as above.
        addr: v4_mapped(unsafe { (*ops).local_ip4 }),
        port,
    }
}

/// The kernel's cookie of the socket this program runs for.
#[inline(always)]
fn socket_cookie(ctx: &impl EbpfContext) -> u64 {
    // SAFETY: `ctx.as_ptr()` is the context the kernel handed to this run, and the program
    // types that call this (cgroup sock_addr and sock, sock_ops) take their context as the
    // helper's argument, as the verifier checks; the helper only reads the socket.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// Copies an origin out of a map.
///
/// # Safety
///
/// `origin` must come from a lookup (`get_ptr`) in a map of `Origin`s in this run. It then
/// points into the map's preallocated memory, which outlives the run: an element deleted
/// meanwhile stays readable. A concurrent update may be read half old, half new, but
/// `Origin` is plain integers, so every bit pattern is a value.
#[inline(always)]
unsafe fn read_origin(origin: *const Origin) -> Origin {
    // SAFETY: the caller's contract above.
    unsafe { *origin }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// SAFETY: (both attributes) the kernel reads the license from this section by its name, and
// nothing else in the object is named LICENSE.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
