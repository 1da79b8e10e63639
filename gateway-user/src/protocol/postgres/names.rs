//! The server's two namespaces, prepared statements and portals, as the gateway may know them:
//! never ahead of the server.
//!
//! The agent side runs ahead of PostgreSQL: it forwards a Parse long before the server answers
//! it, and a pipelining agent sends whole batches before the first answer. What a name holds
//! is decided by the server, in its own order, and a message it rejects (or skips, after an
//! earlier error in the batch) changes nothing. So the agent side records each change as a
//! pending [`Effect`] when it forwards the message carrying it, and the upstream side applies
//! or drops that effect when the server answers ([`Names::confirm`], [`Names::fail`],
//! [`Names::skipped`]).
//!
//! A lookup answers from what the server confirmed plus the pending effects of the batch being
//! sent (the messages since the last Sync): the server runs a message of a batch only if every
//! earlier one succeeded (after an error it skips to Sync), so a Bind may rely on the Parse
//! before it in its batch. An effect still pending from an earlier batch may yet fail, so a
//! lookup it decides is [`Lookup::Wait`]: the gateway does not guess.
//!
//! What [`Lookup::Known`] promises: if the server has the name when the message runs, it holds
//! what that judgement judged. The server also drops names without a message the gateway
//! models (a transaction that ends in a batch the lookup ran ahead of, ROLLBACK TO SAVEPOINT
//! dropping a cursor, a simple Query dropping the unnamed statement and portal in
//! exec_simple_query); a use of a name the server no longer has fails there, so the promise
//! holds. [`Lookup::Unknown`] means the gateway has no judgement for the name (the server may
//! still have one it made out of the gateway's sight, such as a cursor a function opened): the
//! relay refuses to use it.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    sync::{Mutex, MutexGuard},
};

use tokio::sync::Notify;

/// Named entries per space. The unnamed statement and portal (one each at most) do not count.
pub(crate) const MAX_NAMES: usize = 10_000;
/// Effects forwarded and not answered yet.
pub(crate) const MAX_PENDING: usize = 100_000;
/// Bytes of names held, committed and pending: a protocol-level name is not truncated to
/// NAMEDATALEN and may be as long as a message.
pub(crate) const MAX_NAME_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// Prepared statements: the prepared_queries hash (Parse, SQL PREPARE) and the unnamed
    /// statement beside it.
    Statement,
    /// Portals: the PortalHashTable (Bind, SQL DECLARE), the unnamed portal included.
    Portal,
}

impl Space {
    const BOTH: [Space; 2] = [Space::Statement, Space::Portal];

    fn at(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Space {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Space::Statement => "prepared statement",
            Space::Portal => "portal",
        })
    }
}

/// A change to a namespace that a forwarded message makes if the server accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect<J> {
    /// Parse or SQL PREPARE (a statement); Bind or SQL DECLARE (a portal; `holdable` is
    /// DECLARE ... WITH HOLD, and means nothing for a statement). A named one fails on the
    /// server if the name is in use; the unnamed one replaces its predecessor.
    Define {
        space: Space,
        name: String,
        value: J,
        holdable: bool,
    },
    /// Close, DEALLOCATE name, CLOSE name. An ErrorResponse saying there is no such name
    /// (26000 invalid_sql_statement_name, 34000 invalid_cursor_name) leaves the server without
    /// it as surely as success does: confirming that heals a model that kept a name the server
    /// dropped out of its sight.
    Remove { space: Space, name: String },
    /// DEALLOCATE ALL, CLOSE ALL.
    RemoveAll { space: Space },
    /// DISCARD ALL: DEALLOCATE ALL and CLOSE ALL at once.
    DiscardAll,
}

impl<J> Effect<J> {
    /// Whether this effect, run, changes what `name` holds in `space`.
    fn touches(&self, space: Space, name: &str) -> bool {
        match self.named() {
            Some((s, n)) => s == space && n == name,
            None => self.sweeps(space) && swept(space, name),
        }
    }

    /// Whether this is a RemoveAll or DiscardAll reaching `space`.
    fn sweeps(&self, space: Space) -> bool {
        match self {
            Effect::RemoveAll { space: s } => *s == space,
            Effect::DiscardAll => true,
            Effect::Define { .. } | Effect::Remove { .. } => false,
        }
    }

    /// The one name this effect is about, if it is about one.
    fn named(&self) -> Option<(Space, &str)> {
        match self {
            Effect::Define { space, name, .. } | Effect::Remove { space, name } => {
                Some((*space, name))
            }
            Effect::RemoveAll { .. } | Effect::DiscardAll => None,
        }
    }
}

/// Whether DEALLOCATE ALL / CLOSE ALL drop `name`. DropAllPreparedStatements empties the
/// prepared_queries hash, and the unnamed statement is not in it (postgres.c keeps it apart,
/// unnamed_stmt_psrc); PortalHashTableDeleteAll drops every portal, the unnamed one too.
fn swept(space: Space, name: &str) -> bool {
    space == Space::Portal || !name.is_empty()
}

/// A pending effect, resolved once by the upstream side ([`Names::confirm`], [`Names::fail`],
/// [`Names::skipped`]), in the order the effects were pushed.
#[must_use = "the server's answer to the message resolves it"]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup<J> {
    /// If the server has the name when the message runs, this judged what it holds.
    Known(J),
    /// No judgement: the relay refuses a use of the name.
    Unknown,
    /// An earlier batch, not answered yet, decides: ask again once the upstream side resolved
    /// more (after flushing what was forwarded, or the answer never comes).
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Overflow {
    #[error("more than {MAX_NAMES} named {0}s")]
    Names(Space),
    #[error("more than {MAX_PENDING} statement and portal changes awaiting the server's answer")]
    Pending,
    #[error("more than {MAX_NAME_BYTES} bytes of statement and portal names")]
    Bytes,
}

struct Entry<J> {
    value: J,
    holdable: bool,
    /// The transaction (see [`Names::transaction`]) the server created it in.
    born: u64,
}

struct Pending<J> {
    ticket: u64,
    batch: u64,
    effect: Effect<J>,
}

/// The server's namespaces as confirmed, and the changes on their way.
pub(crate) struct Names<J> {
    committed: [HashMap<String, Entry<J>>; 2],
    /// Oldest first; tickets ascend.
    pending: VecDeque<Pending<J>>,
    /// Per space and name, the tickets of pending effects about that name, oldest first: a
    /// lookup finds the latest without scanning a long pipeline.
    by_name: [HashMap<String, VecDeque<u64>>; 2],
    /// Per space, the tickets of pending effects that reach every name (RemoveAll,
    /// DiscardAll), oldest first.
    by_all: [VecDeque<u64>; 2],
    /// Per space, pending Defines of named entries: each may add one.
    defining: [usize; 2],
    /// Bytes of the names in `committed` and `pending`.
    bytes: usize,
    next_ticket: u64,
    /// The batch being sent; [`Names::sync`] closes it.
    batch: u64,
    /// Transactions ended so far.
    transaction: u64,
}

impl<J> Default for Names<J> {
    fn default() -> Self {
        Names {
            committed: [HashMap::new(), HashMap::new()],
            pending: VecDeque::new(),
            by_name: [HashMap::new(), HashMap::new()],
            by_all: [VecDeque::new(), VecDeque::new()],
            defining: [0; 2],
            bytes: 0,
            next_ticket: 0,
            batch: 0,
            transaction: 0,
        }
    }
}

impl<J: Clone> Names<J> {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Agent side: `effect` goes upstream now, in the batch being sent. An error ends the
    /// session: an agent holding that many names, or that far ahead of the server, is hostile
    /// or broken.
    pub(crate) fn push(&mut self, effect: Effect<J>) -> Result<Ticket, Overflow> {
        if self.pending.len() >= MAX_PENDING {
            return Err(Overflow::Pending);
        }
        let named = effect.named();
        let defines = matches!(&effect, Effect::Define { name, .. } if !name.is_empty());
        if let Some((space, _)) = named
            && defines
            && self.committed[space.at()].len() + self.defining[space.at()] >= MAX_NAMES
        {
            return Err(Overflow::Names(space));
        }
        let len = named.map_or(0, |(_, name)| name.len());
        if self.bytes + len > MAX_NAME_BYTES {
            return Err(Overflow::Bytes);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.bytes += len;
        match named {
            Some((space, name)) => {
                self.defining[space.at()] += usize::from(defines);
                let index = &mut self.by_name[space.at()];
                match index.get_mut(name) {
                    Some(tickets) => tickets.push_back(ticket),
                    None => {
                        index.insert(name.to_owned(), VecDeque::from([ticket]));
                    }
                }
            }
            None => {
                for space in Space::BOTH.into_iter().filter(|&s| effect.sweeps(s)) {
                    self.by_all[space.at()].push_back(ticket);
                }
            }
        }
        self.pending.push_back(Pending {
            ticket,
            batch: self.batch,
            effect,
        });
        Ok(Ticket(ticket))
    }

    /// Agent side: a Sync (or a simple Query, a batch of its own) went upstream; what follows
    /// runs whatever became of the batch it closes.
    pub(crate) fn sync(&mut self) {
        self.batch += 1;
    }

    /// Agent side: what `name` holds for a message sent now.
    pub(crate) fn lookup(&self, space: Space, name: &str) -> Lookup<J> {
        match self.find(space, name) {
            Lookup::Known(value) => Lookup::Known(value.clone()),
            Lookup::Unknown => Lookup::Unknown,
            Lookup::Wait => Lookup::Wait,
        }
    }

    /// Agent side: whether the server will reject a Define of `name` sent now (exec_parse_message
    /// → StorePreparedStatement, "prepared statement already exists"; CreatePortal, "cursor
    /// already exists"). Never for an unnamed one, which replaces; not while an earlier batch
    /// decides. Refusing such a Define up front is optional: forwarded, it fails on the server
    /// and the rest of its batch is skipped, and the model follows. For a portal the answer may
    /// be stale (dropped by ROLLBACK TO SAVEPOINT), so forwarding is the better course there.
    #[cfg(test)]
    pub(crate) fn would_conflict(&self, space: Space, name: &str) -> bool {
        !name.is_empty() && matches!(self.find(space, name), Lookup::Known(_))
    }

    /// Upstream side: the server accepted the message (ParseComplete, BindComplete,
    /// CloseComplete, or the CommandComplete of the SQL statement).
    pub(crate) fn confirm(&mut self, ticket: Ticket) {
        let Some(effect) = self.take(ticket) else {
            return;
        };
        match effect {
            Effect::Define {
                space: Space::Statement,
                name,
                ..
            } if !name.is_empty() && self.committed[Space::Statement.at()].contains_key(&name) => {
                // The server rejects a name in use, and statements change only by what the
                // gateway models (dynamic SQL preparing one is the judge's to refuse): answers
                // were matched to the wrong messages. Trust neither judgement.
                debug_assert!(
                    false,
                    "the server accepted prepared statement {name:?} twice"
                );
                self.remove(Space::Statement, &name);
            }
            // A named portal in use fails too, but the server drops portals the model keeps
            // (ROLLBACK TO SAVEPOINT: AtSubCleanup_Portals), so its acceptance wins.
            Effect::Define {
                space,
                name,
                value,
                holdable,
            } => {
                let entry = Entry {
                    value,
                    holdable,
                    born: self.transaction,
                };
                let len = name.len();
                if self.committed[space.at()].insert(name, entry).is_none() {
                    self.bytes += len;
                }
            }
            Effect::Remove { space, name } => self.remove(space, &name),
            Effect::RemoveAll { space } => self.remove_all(space),
            Effect::DiscardAll => {
                self.remove_all(Space::Statement);
                self.remove_all(Space::Portal);
            }
        }
    }

    /// Upstream side: the server answered the message with an ErrorResponse.
    pub(crate) fn fail(&mut self, ticket: Ticket) {
        if let Some(Effect::Define {
            space: Space::Statement,
            name,
            ..
        }) = self.take(ticket)
            && name.is_empty()
        {
            // exec_parse_message drops the old unnamed statement (drop_unnamed_stmt) before it
            // parses the new one: a rejected unnamed Parse leaves none.
            self.remove(Space::Statement, "");
        }
    }

    /// Upstream side: the server never ran the message (it skipped to Sync after an earlier
    /// error in the batch, or to the end of a simple Query).
    pub(crate) fn skipped(&mut self, ticket: Ticket) {
        let _ = self.take(ticket);
    }

    /// Upstream side: ReadyForQuery 'I' after a transaction that committed. PreCommit_Portals
    /// drops every portal but the holdable ones, which are held over for later transactions.
    pub(crate) fn transaction_ended(&mut self) {
        self.end_transaction(false);
    }

    /// Upstream side: ReadyForQuery 'I' after a transaction that rolled back (an ErrorResponse
    /// or a ROLLBACK since the last ReadyForQuery, or status 'E' before). AtAbort_Portals and
    /// AtCleanup_Portals drop a holdable portal created in that transaction too; only those
    /// held over from a committed one survive. Which of the two to call is the relay's best
    /// knowledge; erring either way keeps [`Lookup::Known`]'s promise.
    pub(crate) fn transaction_aborted(&mut self) {
        self.end_transaction(true);
    }

    /// Effects forwarded and not resolved yet.
    #[cfg(test)]
    pub(crate) fn unresolved(&self) -> usize {
        self.pending.len()
    }

    fn end_transaction(&mut self, aborted: bool) {
        let current = self.transaction;
        self.retain(Space::Portal, |_, e| {
            e.holdable && !(aborted && e.born == current)
        });
        self.transaction += 1;
    }

    fn find(&self, space: Space, name: &str) -> Lookup<&J> {
        let about_name = self.by_name[space.at()].get(name).and_then(VecDeque::back);
        let about_all = self.by_all[space.at()]
            .back()
            .filter(|_| swept(space, name));
        let Some(&latest) = about_name.max(about_all) else {
            return match self.committed[space.at()].get(name) {
                Some(entry) => Lookup::Known(&entry.value),
                None => Lookup::Unknown,
            };
        };
        let Ok(at) = self.pending.binary_search_by_key(&latest, |p| p.ticket) else {
            debug_assert!(false, "ticket {latest} indexed but not pending");
            return Lookup::Unknown;
        };
        let pending = &self.pending[at];
        debug_assert!(pending.effect.touches(space, name));
        match &pending.effect {
            _ if pending.batch != self.batch => Lookup::Wait,
            Effect::Define { value, .. } => Lookup::Known(value),
            _ => Lookup::Unknown,
        }
    }

    /// Removes a resolved effect from `pending` and its indexes.
    fn take(&mut self, ticket: Ticket) -> Option<Effect<J>> {
        let at = self.pending.binary_search_by_key(&ticket.0, |p| p.ticket);
        debug_assert_eq!(at, Ok(0), "tickets are resolved once, in the order pushed");
        let pending = self.pending.remove(at.ok()?)?;
        let forget = |tickets: &mut VecDeque<u64>| {
            // The oldest, unless the caller broke the order.
            if let Some(i) = tickets.iter().position(|&t| t == ticket.0) {
                tickets.remove(i);
            }
        };
        match pending.effect.named() {
            Some((space, name)) => {
                self.bytes -= name.len();
                if matches!(pending.effect, Effect::Define { .. }) && !name.is_empty() {
                    self.defining[space.at()] -= 1;
                }
                let index = &mut self.by_name[space.at()];
                if let Some(tickets) = index.get_mut(name) {
                    forget(tickets);
                    if tickets.is_empty() {
                        index.remove(name);
                    }
                }
            }
            None => {
                for space in Space::BOTH
                    .into_iter()
                    .filter(|&s| pending.effect.sweeps(s))
                {
                    forget(&mut self.by_all[space.at()]);
                }
            }
        }
        Some(pending.effect)
    }

    fn remove(&mut self, space: Space, name: &str) {
        if let Some((name, _)) = self.committed[space.at()].remove_entry(name) {
            self.bytes -= name.len();
        }
    }

    fn remove_all(&mut self, space: Space) {
        self.retain(space, |name, _| !swept(space, name));
    }

    fn retain(&mut self, space: Space, mut keep: impl FnMut(&str, &Entry<J>) -> bool) {
        let mut freed = 0;
        self.committed[space.at()].retain(|name, entry| {
            let kept = keep(name, entry);
            if !kept {
                freed += name.len();
            }
            kept
        });
        self.bytes -= freed;
    }
}

/// [`Names`] shared by the relay's two sides: the agent side pushes and looks up, waiting
/// while an earlier batch decides; the upstream side resolves and wakes it.
pub(crate) struct SharedNames<J> {
    inner: Mutex<Names<J>>,
    changed: Notify,
}

impl<J> Default for SharedNames<J> {
    fn default() -> Self {
        SharedNames {
            inner: Mutex::new(Names::default()),
            changed: Notify::new(),
        }
    }
}

impl<J: Clone> SharedNames<J> {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Never panics: a panic elsewhere while the lock was held (each mutation leaves the model
    /// whole before anything that can panic) must not become one here, on a Drop path perhaps.
    fn names(&self) -> MutexGuard<'_, Names<J>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies an answer and wakes the lookups waiting for one.
    fn resolve(&self, change: impl FnOnce(&mut Names<J>)) {
        change(&mut self.names());
        self.changed.notify_waiters();
    }

    pub(crate) fn push(&self, effect: Effect<J>) -> Result<Ticket, Overflow> {
        self.names().push(effect)
    }

    pub(crate) fn sync(&self) {
        self.names().sync();
    }

    #[cfg(test)]
    pub(crate) fn would_conflict(&self, space: Space, name: &str) -> bool {
        self.names().would_conflict(space, name)
    }

    /// [`Names::lookup`] without waiting: on [`Lookup::Wait`] the relay flushes what it
    /// forwarded, then waits in [`SharedNames::lookup`].
    pub(crate) fn peek(&self, space: Space, name: &str) -> Lookup<J> {
        self.names().lookup(space, name)
    }

    /// [`Names::lookup`], waiting out [`Lookup::Wait`]; `None` is [`Lookup::Unknown`]. What was
    /// forwarded must be flushed upstream first, or the answers waited for never come.
    /// Cancel-safe.
    pub(crate) async fn lookup(&self, space: Space, name: &str) -> Option<J> {
        loop {
            // Made before the look: notify_waiters reaches a Notified from its creation on, so
            // an answer resolved between the look and the await still wakes it.
            let changed = self.changed.notified();
            let found = self.names().lookup(space, name);
            match found {
                Lookup::Known(value) => return Some(value),
                Lookup::Unknown => return None,
                Lookup::Wait => changed.await,
            }
        }
    }

    pub(crate) fn confirm(&self, ticket: Ticket) {
        self.resolve(|names| names.confirm(ticket));
    }

    pub(crate) fn fail(&self, ticket: Ticket) {
        self.resolve(|names| names.fail(ticket));
    }

    pub(crate) fn skipped(&self, ticket: Ticket) {
        self.resolve(|names| names.skipped(ticket));
    }

    pub(crate) fn transaction_ended(&self) {
        self.resolve(Names::transaction_ended);
    }

    pub(crate) fn transaction_aborted(&self) {
        self.resolve(Names::transaction_aborted);
    }

    #[cfg(test)]
    pub(crate) fn unresolved(&self) -> usize {
        self.names().unresolved()
    }
}

#[cfg(test)]
mod tests;
