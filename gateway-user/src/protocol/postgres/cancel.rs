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

#[derive(Default, Clone)]
pub struct CancelRegistry {
    keys: Arc<Mutex<HashMap<(i32, i32), Entry>>>,
}

/// A key handed to an agent; dropping it (at session end) retires the key.
pub struct Registered {
    pub process_id: i32,
    pub secret_key: i32,
    /// Notified (to current waiters only) when the agent sends a valid CancelRequest.
    pub cancelled: Arc<Notify>,
    keys: Arc<Mutex<HashMap<(i32, i32), Entry>>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(self.process_id, self.secret_key));
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
        let cancelled = Arc::new(Notify::new());
        let entry = Entry {
            upstream,
            process_id,
            secret_key,
            governed_cgroup_id,
            cancelled: cancelled.clone(),
        };
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let (pid, key) = random_key();
            if let std::collections::hash_map::Entry::Vacant(v) = keys.entry((pid, key)) {
                v.insert(entry);
                return Registered {
                    process_id: pid,
                    secret_key: key,
                    cancelled,
                    keys: self.keys.clone(),
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

/// Keys an agent cannot guess: 64 bits from the kernel's CSPRNG.
fn random_key() -> (i32, i32) {
    let mut b = [0u8; 8];
    let mut filled = 0;
    while filled < b.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `b`.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
    // PostgreSQL's process ids are positive; keep ours so for clients that assume it.
    let pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]) & i32::MAX;
    (pid.max(1), i32::from_be_bytes([b[4], b[5], b[6], b[7]]))
}
