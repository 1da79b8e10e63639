//! The daemon's view of the origins: who opened a redirected connection and where it was
//! going. The kernel binds each origin to the socket the listener accepted (its cookie) at
//! the handshake, so the daemon reads it by the socket it holds, never by an address and port
//! that another connection may have used before or since.

use std::{
    mem::MaybeUninit,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::{AsFd as _, AsRawFd, BorrowedFd},
};

use aya::maps::{HashMap, IterableMap as _, MapData};
use gateway_common::{Addr, ConnKey, Origin};

pub struct OriginTable {
    accepted: HashMap<MapData, u64, Origin>,
}

impl OriginTable {
    pub(super) fn new(accepted: HashMap<MapData, u64, Origin>) -> Self {
        OriginTable { accepted }
    }

    /// The origin of the connection `socket` (one the listener accepted), removed from the map
    /// as it is read.
    pub fn take(&self, socket: &impl AsRawFd) -> Option<Origin> {
        self.take_cookie(socket_cookie(socket).ok()?)
    }

    /// One `BPF_MAP_LOOKUP_AND_DELETE_ELEM`: the kernel reads and removes the entry at once, so
    /// concurrent takes need no lock around a lookup and a delete.
    fn take_cookie(&self, cookie: u64) -> Option<Origin> {
        match lookup_and_delete(self.accepted.map().fd().as_fd(), &cookie) {
            Ok(origin) => origin,
            Err(e) => {
                // Kernels before 5.14 refuse the command on hash maps: no origin, so the
                // connection is refused (fail closed), and the log says why.
                tracing::warn!(error = %e, "taking a connection's origin from the kernel");
                None
            }
        }
    }
}

/// `enum bpf_cmd` (linux/bpf.h).
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

/// The part of `union bpf_attr` the map element commands read; the kernel takes the rest as
/// zero.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// aya 0.14 offers lookup-and-delete for queues and stacks only, so the command is issued
/// here; `None` when the key is not in the map.
fn lookup_and_delete(map: BorrowedFd<'_>, key: &u64) -> std::io::Result<Option<Origin>> {
    let mut value = MaybeUninit::<Origin>::uninit();
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: (&raw const *key) as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a live bpf_attr prefix of the size passed, naming a map fd borrowed for
    // the call, a readable u64 key and a writable `Origin`. The map's key and value sizes are
    // those of u64 and Origin (aya checked them when it made the `HashMap`), so the kernel
    // reads and writes within them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            (&raw const attr).cast::<libc::c_void>(),
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        // SAFETY: on success the kernel copied the whole value, and `Origin` is plain integers.
        return Ok(Some(unsafe { value.assume_init() }));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(e),
    }
}

/// Removes every entry a previous daemon's programs left keyed by address and port: none may
/// be taken for a connection made after this start.
pub(super) fn clear(conns: &mut HashMap<MapData, ConnKey, Origin>) -> usize {
    let keys: Vec<ConnKey> = conns.keys().filter_map(Result::ok).collect();
    keys.iter().filter(|k| conns.remove(k).is_ok()).count()
}

/// The kernel's cookie of a socket: what `bpf_get_socket_cookie` returns for it.
fn socket_cookie(socket: &impl AsRawFd) -> std::io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is a live socket borrowed for the call; the kernel writes at most `len`
    // bytes into `cookie`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An address as the kernel writes it: IPv6 words in network order, IPv4 mapped.
pub fn to_words(ip: IpAddr) -> Addr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// The inverse of [`to_words`]; mapped addresses come back as IPv4.
pub fn from_words(words: &Addr) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The destination the agent dialled.
pub fn destination(origin: &Origin) -> SocketAddr {
    SocketAddr::new(from_words(&origin.dst_addr), origin.dst_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(port: u16) -> Origin {
        Origin {
            dst_addr: to_words(IpAddr::from([10, 0, 0, 1])),
            dst_port: port,
            family: gateway_common::AF_INET,
            pid: 1,
            tid: 2,
            uid: 3,
            gid: 4,
            _pad: 0,
            cgroup_id: 5,
            governed_cgroup_id: 6,
        }
    }

    /// Needs a kernel and the privilege to make a BPF map (root here); says so and passes where
    /// it has neither.
    #[test]
    fn take_reads_and_removes_at_once() {
        let mut map = match HashMap::<MapData, u64, Origin>::create(8, 0) {
            Ok(map) => map,
            Err(e) => {
                eprintln!("skipped: cannot make a BPF map here: {e}");
                return;
            }
        };
        map.insert(7, origin(5432), 0).unwrap();
        map.insert(8, origin(443), 0).unwrap();
        let table = OriginTable::new(map);
        assert_eq!(table.take_cookie(7), Some(origin(5432)));
        assert_eq!(table.take_cookie(7), None, "taken once");
        assert_eq!(table.take_cookie(9), None, "never there");
        assert_eq!(table.take_cookie(8), Some(origin(443)), "others stay");
        assert_eq!(table.accepted.keys().count(), 0);
    }

    #[test]
    fn words_match_the_kernel_layout() {
        // The kernel stores 127.10.0.5 in user_ip4 as the bytes 7f 0a 00 05.
        let w = to_words(IpAddr::from([127, 10, 0, 5]));
        assert_eq!(
            w,
            gateway_common::v4_mapped(u32::from_ne_bytes([127, 10, 0, 5]))
        );
        assert_eq!(from_words(&w), IpAddr::from([127, 10, 0, 5]));
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(from_words(&to_words(v6)), v6);
        assert_eq!(
            to_words("::1".parse().unwrap())[3],
            u32::from_ne_bytes([0, 0, 0, 1])
        );
    }
}
