//! gatewayd and gatewayctl: the host gateway that decides what AI agents may do.
//!
//! `kernel` is the only module that touches aya; `policy` holds the connection verdicts and
//! `rules` the command verdicts; `audit` owns the store; `session` is the core every protocol
//! handler under `protocol` plugs into; `daemon` wires them to sockets.

pub mod admin;
pub mod approval;
pub mod audit;
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod identity;
pub mod kernel;
pub mod memory;
pub mod offload;
pub mod policy;
pub mod protocol;
pub mod rules;
pub mod session;
pub mod sql;
pub mod target;
