//! PostgreSQL: the wire protocol terminated on both legs, every statement judged by the
//! target's rules, results masked, the upstream reached with the daemon's own credential.

pub mod cancel;
pub mod codec;
pub mod config;
pub mod judge;
pub mod mask;
pub(crate) mod names;
pub mod relay;
pub mod rules;
pub mod session;
pub mod shape;
pub mod sql;
pub mod tls;
pub mod upstream;

pub use cancel::CancelRegistry;
pub use config::{PostgresFile, PostgresTarget};
pub use session::{Postgres, Shared};
