//! Query cancellation. The agent gets a process id and secret key made up by the gateway;
//! a CancelRequest carrying them is mapped to the upstream backend's own key, and only when
//! it comes from the cgroup the key was handed to: an agent cancels its own queries and
//! nobody else's.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::BytesMut;
use ring::{
    error::Unspecified,
    rand::{SecureRandom as _, SystemRandom},
};
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::Notify};

#[derive(Debug, Clone)]
struct Entry {
    upstream: SocketAddr,
    process_id: i32,
    secret_key: i32,
    governed_cgroup_id: u64,
    /// Told of each cancel, for a statement the gateway itself holds (waiting for approval).
    cancelled: Arc<Notify>,
}

/// The live keys, by the process id and secret key the agent was handed.
type Keys = Arc<Mutex<HashMap<(i32, i32), Entry>>>;

#[derive(Default, Clone)]
pub struct CancelRegistry {
    keys: Keys,
}

/// A key handed to an agent; dropping it (at session end) retires the key.
///
/// When no random key could be made, the agent is handed process id and key 0, which are
/// registered nowhere (a registered process id is never 0): its cancel requests are ignored,
/// and nobody else's can reach its queries.
pub struct Registered {
    pub process_id: i32,
    pub secret_key: i32,
    /// Notified (to current waiters only) when the agent sends a valid CancelRequest.
    pub cancelled: Arc<Notify>,
    /// The registry holding the key; `None` when there is no key to retire.
    keys: Option<Keys>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(keys) = &self.keys {
            keys.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(self.process_id, self.secret_key));
        }
    }
}

impl CancelRegistry {
    pub fn register(
        &self,
        upstream: SocketAddr,
        process_id: i32,
        secret_key: i32,
        governed_cgroup_id: u64,
    ) -> Registered {
        self.register_keyed(
            upstream,
            process_id,
            secret_key,
            governed_cgroup_id,
            random_key,
        )
    }

    /// [`Self::register`] with the agent's keys drawn from `draw`.
    fn register_keyed(
        &self,
        upstream: SocketAddr,
        process_id: i32,
        secret_key: i32,
        governed_cgroup_id: u64,
        mut draw: impl FnMut() -> Result<(i32, i32), Unspecified>,
    ) -> Registered {
        let cancelled = Arc::new(Notify::new());
        let entry = Entry {
            upstream,
            process_id,
            secret_key,
            governed_cgroup_id,
            cancelled: cancelled.clone(),
        };
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        // Drawn again only when the key is taken, which 64 random bits make all but impossible.
        loop {
            let Ok((pid, key)) = draw() else {
                tracing::error!(
                    "no random cancel key (the kernel's random source failed): \
                     this session's queries cannot be cancelled"
                );
                return Registered {
                    process_id: 0,
                    secret_key: 0,
                    cancelled,
                    keys: None,
                };
            };
            if let std::collections::hash_map::Entry::Vacant(v) = keys.entry((pid, key)) {
                v.insert(entry);
                return Registered {
                    process_id: pid,
                    secret_key: key,
                    cancelled,
                    keys: Some(self.keys.clone()),
                };
            }
        }
    }

    /// Forwards a cancel on `upstream` (a fresh connection to the target the agent dialled),
    /// if the key is live, was handed out for that same upstream, and the caller is in the
    /// cgroup it was handed to. Like PostgreSQL, it says nothing either way.
    pub async fn cancel(
        &self,
        process_id: i32,
        secret_key: i32,
        governed_cgroup_id: u64,
        upstream: &mut TcpStream,
    ) {
        let entry = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(process_id, secret_key))
            .cloned();
        let peer = upstream.peer_addr().ok();
        let Some(entry) = entry
            .filter(|e| e.governed_cgroup_id == governed_cgroup_id && Some(e.upstream) == peer)
        else {
            tracing::warn!(
                cgroup.id = governed_cgroup_id,
                "cancel request with an unknown key, or from another cgroup or target; ignored"
            );
            return;
        };
        entry.cancelled.notify_waiters();
        let mut msg = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(
            entry.process_id,
            entry.secret_key,
            &mut msg,
        );
        if let Err(e) = upstream.write_all(&msg).await {
            tracing::warn!(error = %e, "cancel: upstream write failed");
        }
    }
}

/// Keys an agent cannot guess: 64 bits from the kernel's CSPRNG, or an error if it fails
/// (never a weaker key).
fn random_key() -> Result<(i32, i32), Unspecified> {
    let mut b = [0u8; 8];
    SystemRandom::new().fill(&mut b)?;
    // PostgreSQL's process ids are positive; keep ours so for clients that assume it.
    let pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]) & i32::MAX;
    Ok((pid.max(1), i32::from_be_bytes([b[4], b[5], b[6], b[7]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: ([u8; 4], u16) = ([127, 0, 0, 1], 5432);

    fn live(reg: &CancelRegistry) -> Vec<(i32, i32)> {
        let keys = reg.keys.lock().unwrap();
        let mut live: Vec<_> = keys.keys().copied().collect();
        live.sort();
        live
    }

    #[test]
    fn random_keys_are_positive_pids() {
        for _ in 0..64 {
            let (pid, _) = random_key().unwrap();
            assert!(pid > 0);
        }
    }

    #[test]
    fn a_taken_key_is_drawn_again_and_retired_on_drop() {
        let reg = CancelRegistry::default();
        let mut draws = [(5, 5), (5, 5), (6, 6)].into_iter();
        let mut next = || Ok(draws.next().unwrap());
        let a = reg.register_keyed(UPSTREAM.into(), 10, 11, 1, &mut next);
        let b = reg.register_keyed(UPSTREAM.into(), 20, 21, 1, &mut next);
        assert_eq!((a.process_id, a.secret_key), (5, 5));
        assert_eq!((b.process_id, b.secret_key), (6, 6));
        assert_eq!(live(&reg), [(5, 5), (6, 6)]);
        drop(a);
        assert_eq!(live(&reg), [(6, 6)]);
    }

    #[test]
    fn no_random_key_registers_nothing() {
        let reg = CancelRegistry::default();
        let kept = reg.register_keyed(UPSTREAM.into(), 10, 11, 1, || Ok((7, 7)));
        let failed = reg.register_keyed(UPSTREAM.into(), 20, 21, 1, || Err(Unspecified));
        assert_eq!((failed.process_id, failed.secret_key), (0, 0));
        assert_eq!(
            live(&reg),
            [(7, 7)],
            "the agent's key 0/0 maps to no backend"
        );
        drop(failed);
        assert_eq!(live(&reg), [(7, 7)], "and retiring it touches no other key");
        drop(kept);
    }
}
