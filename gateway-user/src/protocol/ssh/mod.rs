//! SSH: terminated on both legs (russh). The agent's OpenSSH client dials the real host and
//! the daemon answers as that host (a certificate from its host CA); the daemon logs in to
//! the host with its own credential; every exec, shell and subsystem request is judged by the
//! target's rules, held for approval when they say so, and recorded with its output.

pub mod agent;
pub mod ca;
pub mod channel;
pub mod config;
mod files;
pub mod forward;
pub mod grants;
pub mod record;
mod relay;
pub mod rules;
pub mod session;
pub mod sftp;
mod unsplit;
pub mod upstream;
pub mod words;

pub use config::{SshFile, SshTarget};
pub use session::{Shared, Ssh};
