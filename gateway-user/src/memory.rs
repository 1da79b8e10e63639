//! One memory budget for the large messages of every session.
//!
//! Each session reads its messages whole before judging or masking them, so what it buffers is
//! bounded per message by its protocol's limits (a Bind of 16 MiB, a DataRow the upstream
//! chose to send). Those bounds alone would let a few hundred agents that each start a large
//! message hold gigabytes. So a message over [`FREE_MESSAGE`] must first take its declared
//! length from one budget shared by the whole daemon; when the budget is spent, the session
//! asking is ended with its protocol's out-of-memory error and every other session goes on.
//! Memory is taken as the header declares it, before the bytes arrive, so the budget can never
//! be exceeded by a message still arriving.

use std::sync::{
    OnceLock,
    atomic::{AtomicUsize, Ordering},
};

/// Messages up to this size need no lease: a session's small change.
pub const FREE_MESSAGE: usize = 256 * 1024;

/// The default budget, when the daemon sets none (tests, tools).
const DEFAULT_BUDGET: usize = 1 << 30;

#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the gateway's memory budget is spent: a message of {wanted} bytes does not fit \
     ({used} of {limit} bytes in use by large messages)"
)]
pub struct Exhausted {
    pub wanted: usize,
    pub used: usize,
    pub limit: usize,
}

/// Bytes taken from a budget, given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: &'static Budget,
    bytes: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

static GLOBAL: OnceLock<Budget> = OnceLock::new();

/// Sets the daemon's budget; only the first call counts (it is made at start).
pub fn init(limit: usize) {
    let _ = GLOBAL.set(Budget::new(limit));
}

pub fn global() -> &'static Budget {
    GLOBAL.get_or_init(|| Budget::new(DEFAULT_BUDGET))
}

impl Budget {
    pub const fn new(limit: usize) -> Budget {
        Budget {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes `bytes`, or nothing if they do not fit.
    pub fn take(&'static self, bytes: usize) -> Result<Lease, Exhausted> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&n| n <= self.limit)
            })
            .map(|_| Lease {
                budget: self,
                bytes,
            })
            .map_err(|used| Exhausted {
                wanted: bytes,
                used,
                limit: self.limit,
            })
    }
}

/// One direction of a session: the lease for the message it is receiving, if that is large.
#[derive(Debug, Default)]
pub struct MessageLease(Option<Lease>);

impl MessageLease {
    /// Whether a large message holds part of the budget now.
    pub fn held(&self) -> bool {
        self.0.is_some()
    }

    /// Covers a message of `declared` bytes (`None`: no message under way): a large one takes
    /// its size from the global budget before its bytes are read, a small one or none gives
    /// back what the previous message held.
    pub fn cover(&mut self, declared: Option<usize>) -> Result<(), Exhausted> {
        match declared.filter(|&n| n > FREE_MESSAGE) {
            None => self.0 = None,
            Some(n) if self.0.as_ref().is_some_and(|l| l.bytes >= n) => {}
            Some(n) => {
                // The old lease goes first, so a session never holds two.
                self.0 = None;
                self.0 = Some(global().take(n)?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SMALL: Budget = Budget::new(10 << 20);

    #[test]
    fn leases_take_and_give_back_and_refuse_past_the_limit() {
        let a = SMALL.take(6 << 20).unwrap();
        let e = SMALL.take(6 << 20).unwrap_err();
        assert_eq!((e.wanted, e.used, e.limit), (6 << 20, 6 << 20, 10 << 20));
        let b = SMALL.take(4 << 20).unwrap();
        assert_eq!(SMALL.used(), 10 << 20);
        drop(a);
        assert_eq!(SMALL.used(), 4 << 20);
        drop(b);
        assert_eq!(SMALL.used(), 0);
        assert!(SMALL.take(usize::MAX).is_err(), "no overflow");
        assert_eq!(SMALL.used(), 0);
    }

    #[test]
    fn a_message_lease_follows_the_message_under_way() {
        let mut lease = MessageLease::default();
        lease.cover(Some(1000)).unwrap();
        assert!(lease.0.is_none(), "small messages are free");
        lease.cover(Some(2 << 20)).unwrap();
        assert_eq!(lease.0.as_ref().unwrap().bytes, 2 << 20);
        lease.cover(Some(1 << 20)).unwrap();
        assert_eq!(
            lease.0.as_ref().unwrap().bytes,
            2 << 20,
            "kept while it covers"
        );
        lease.cover(None).unwrap();
        assert!(lease.0.is_none());
    }
}
