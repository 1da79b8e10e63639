//! The daemon's view of the origin map: who opened a redirected connection and where it was
//! going, looked up by the accepted socket's peer address and consumed on the spot.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Mutex,
};

use aya::maps::{HashMap, MapData};
use gateway_common::{Addr, ConnKey, Origin};

pub struct OriginTable {
    map: Mutex<HashMap<MapData, ConnKey, Origin>>,
}

impl OriginTable {
    pub(super) fn new(map: HashMap<MapData, ConnKey, Origin>) -> Self {
        OriginTable {
            map: Mutex::new(map),
        }
    }

    /// The origin of the connection whose agent end is `peer`, removed from the map so that
    /// a later connection reusing the port can never inherit it.
    pub fn take(&self, peer: SocketAddr) -> Option<Origin> {
        let key = ConnKey {
            addr: to_words(peer.ip()),
            port: u32::from(peer.port()),
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let origin = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(origin)
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
