//! Keeps the addresses of host names in policies fresh. A lookup that fails keeps the last
//! addresses it had: a DNS hiccup must not cut live agents off, nor widen what they reach.

use std::{collections::BTreeSet, net::IpAddr, sync::Arc};

use crate::policy::{PolicySet, Resolved};

use super::state::State;

pub async fn resolve_all(set: &PolicySet, previous: &Resolved) -> Resolved {
    let names: BTreeSet<(String, u16)> = set
        .policies
        .iter()
        .flat_map(|p| p.hostnames().map(|(n, port)| (n.to_owned(), port)))
        .collect();
    let mut out = Resolved::new();
    for (name, port) in names {
        if out.contains_key(&name) {
            continue;
        }
        let lookup = tokio::net::lookup_host((name.clone(), port)).await;
        match lookup {
            Ok(addrs) => {
                let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                ips.sort();
                ips.dedup();
                out.insert(name, ips);
            }
            Err(e) => {
                tracing::warn!(host = %name, error = %e, "cannot resolve target host; keeping last addresses");
                if let Some(old) = previous.get(&name) {
                    out.insert(name, old.clone());
                }
            }
        }
    }
    out
}

pub async fn refresh(state: &State) {
    let set = state.policies().set.clone();
    let fresh = resolve_all(&set, &state.resolved()).await;
    *state.resolved.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
}

pub async fn run(state: Arc<State>) {
    let mut tick = tokio::time::interval(state.config.resolve_interval());
    tick.tick().await;
    loop {
        tick.tick().await;
        refresh(&state).await;
    }
}
