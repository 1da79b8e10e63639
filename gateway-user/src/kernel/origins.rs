//! The daemon's view of the origins: who opened a redirected connection and where it was
//! going. The kernel binds each origin to the socket the listener accepted (its cookie) at
//! the handshake, so the daemon reads it by the socket it holds, never by an address and port
//! that another connection may have used before or since.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::Mutex,
};

use aya::maps::{HashMap, MapData};
use gateway_common::{Addr, ConnKey, Origin};

pub struct OriginTable {
    accepted: Mutex<HashMap<MapData, u64, Origin>>,
}

impl OriginTable {
    pub(super) fn new(accepted: HashMap<MapData, u64, Origin>) -> Self {
        OriginTable {
            accepted: Mutex::new(accepted),
        }
    }

    /// The origin of the connection `socket` (one the listener accepted), removed from the map
    /// as it is read.
    pub fn take(&self, socket: &impl AsRawFd) -> Option<Origin> {
        let cookie = socket_cookie(socket).ok()?;
        let mut map = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        let origin = map.get(&cookie, 0).ok()?;
        let _ = map.remove(&cookie);
        Some(origin)
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
