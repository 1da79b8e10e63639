//! Protocol handlers, one folder each. A handler terminates its protocol on the agent side
//! and speaks it to the upstream; plain `tcp` relays bytes.

pub mod postgres;
pub mod tcp;
