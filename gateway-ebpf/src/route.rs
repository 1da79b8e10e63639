//! Where packets go, beyond the address connect() and sendmsg() judged: socket options that
//! route a packet elsewhere are refused, and a packet-level backstop drops anything from a
//! governed socket that is not headed for the daemon on loopback or for a policy's resolver.
//!
//! An IPv6 routing header (`IPV6_RTHDR`, a segment routing header) makes the kernel send to
//! its first segment, with the judged destination only last in the list; IPv4 source routes
//! (`IP_OPTIONS`) do the same. Interface and mark options steer past the routing table.

use aya_ebpf::{
    helpers::bpf_skb_ancestor_cgroup_id,
    macros::{cgroup_skb, cgroup_sockopt},
    programs::{SkBuffContext, SockoptContext},
};
use aya_log_ebpf::warn;
use gateway_common::{Addr, v4_mapped};

use crate::maps::{governed_ancestor_by, resolver_allowed};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

const SOL_IP: i32 = 0;
const SOL_SOCKET: i32 = 1;
const SOL_IPV6: i32 = 41;

/// Options that choose where a packet goes, or which way out, by level.
const IP_ROUTING: [i32; 5] = [
    3,  // IP_HDRINCL
    4,  // IP_OPTIONS: loose and strict source routes
    8,  // IP_PKTINFO: interface and source of each send
    19, // IP_TRANSPARENT
    50, // IP_UNICAST_IF
];
const SOCKET_ROUTING: [i32; 3] = [
    25, // SO_BINDTODEVICE
    36, // SO_MARK: policy routing by mark
    62, // SO_BINDTOIFINDEX
];
const IPV6_ROUTING: [i32; 13] = [
    1,  // IPV6_ADDRFORM
    2,  // IPV6_2292PKTINFO
    3,  // IPV6_2292HOPOPTS
    4,  // IPV6_2292DSTOPTS
    5,  // IPV6_2292RTHDR
    6,  // IPV6_2292PKTOPTIONS
    9,  // IPV6_NEXTHOP
    50, // IPV6_PKTINFO
    54, // IPV6_HOPOPTS
    55, // IPV6_RTHDRDSTOPTS
    57, // IPV6_RTHDR
    59, // IPV6_DSTOPTS
    76, // IPV6_UNICAST_IF
];

#[cgroup_sockopt(setsockopt)]
pub fn setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: the kernel hands the program a valid bpf_sockopt for the call.
    let (level, optname) = unsafe { ((*ctx.sockopt).level, (*ctx.sockopt).optname) };
    let listed = match level {
        SOL_IP => IP_ROUTING.contains(&optname),
        SOL_SOCKET => SOCKET_ROUTING.contains(&optname),
        SOL_IPV6 => IPV6_ROUTING.contains(&optname),
        _ => false,
    };
    if listed {
        warn!(
            &ctx,
            "refused setsockopt level {} option {}", level, optname
        );
        return REFUSE;
    }
    ALLOW
}

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    try_egress(&ctx).unwrap_or(REFUSE)
}

/// Lets a governed socket's packet out only towards the daemon (loopback, its port) or a
/// resolver of the socket's governed cgroup, with no IP options or extension headers.
fn try_egress(ctx: &SkBuffContext) -> Result<i32, i64> {
    // cgroup_skb data starts at the network header.
    let (dst, proto, dport) = match u32::from(u16::from_be(ctx.skb.protocol() as u16)) {
        ETH_P_IP => {
            let ver_ihl: u8 = ctx.load(0)?;
            // Options (source routes among them) make the header longer than 20 bytes.
            if ver_ihl != 0x45 {
                return Ok(REFUSE);
            }
            let proto: u8 = ctx.load(9)?;
            let daddr: u32 = ctx.load(16)?;
            // 127.0.0.0/8: never leaves the host.
            if u32::from_be(daddr) >> 24 == 127 {
                return Ok(ALLOW);
            }
            let dport: u16 = ctx.load(20 + 2)?;
            (v4_mapped(daddr), proto, u16::from_be(dport))
        }
        ETH_P_IPV6 => {
            // Only TCP or UDP right after the fixed header: any extension header (routing,
            // hop-by-hop, destination options) is refused.
            let next: u8 = ctx.load(6)?;
            let mut dst: Addr = [0; 4];
            for (i, word) in dst.iter_mut().enumerate() {
                *word = ctx.load(24 + 4 * i)?;
            }
            if next != IPPROTO_TCP && next != IPPROTO_UDP {
                return Ok(REFUSE);
            }
            if dst == [0, 0, 0, u32::from_be(1)] {
                return Ok(ALLOW);
            }
            let dport: u16 = ctx.load(40 + 2)?;
            (dst, next, u16::from_be(dport))
        }
        _ => return Ok(REFUSE),
    };
    let governed = skb_governed_ancestor(ctx);
    if proto == IPPROTO_UDP && resolver_allowed(governed, &dst, dport) {
        return Ok(ALLOW);
    }
    warn!(
        ctx,
        "dropped a packet from cgroup {} to port {}", governed, dport
    );
    Ok(REFUSE)
}

/// The socket's nearest governed cgroup (the packet may be sent from softirq, so not the
/// current task's).
#[inline(always)]
fn skb_governed_ancestor(ctx: &SkBuffContext) -> u64 {
    // SAFETY: the helper reads the skb the kernel handed to this program.
    governed_ancestor_by(|level| unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb.cast(), level) })
}
