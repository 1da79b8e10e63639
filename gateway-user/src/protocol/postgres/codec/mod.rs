//! The PostgreSQL wire protocol (3.0) as far as the gateway speaks it: framing, the agent's
//! messages, and the server side's. No I/O here; the session owns the sockets.

pub mod backend;
#[cfg(test)]
mod captured;
pub mod frame;
pub mod frontend;

pub use frame::{Frame, FrameError};
