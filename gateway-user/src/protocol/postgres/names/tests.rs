use std::{collections::HashMap, sync::Arc};

use super::*;

use Lookup::{Known, Unknown, Wait};

const S: Space = Space::Statement;
const P: Space = Space::Portal;

type E = Effect<&'static str>;

fn define(space: Space, name: &str, value: &'static str) -> E {
    Effect::Define {
        space,
        name: name.into(),
        value,
        holdable: false,
    }
}

/// DECLARE ... WITH HOLD.
fn held(name: &str, value: &'static str) -> E {
    Effect::Define {
        space: P,
        name: name.into(),
        value,
        holdable: true,
    }
}

fn remove(space: Space, name: &str) -> E {
    Effect::Remove {
        space,
        name: name.into(),
    }
}

fn all(space: Space) -> E {
    Effect::RemoveAll { space }
}

/// One step of a script; tickets go by label.
enum Step {
    Push(&'static str, E),
    Sync,
    Confirm(&'static str),
    Fail(&'static str),
    Skip(&'static str),
    /// ReadyForQuery 'I' after a commit.
    Commit,
    /// ReadyForQuery 'I' after a rollback.
    Abort,
    Is(Space, &'static str, Lookup<&'static str>),
    Conflict(Space, &'static str, bool),
    Unresolved(usize),
}

use Step::*;

/// The bookkeeping the indexes keep, recomputed from scratch.
fn check_invariants<J: Clone>(names: &Names<J>, at: &str) {
    let mut bytes = 0;
    let mut defining = [0; 2];
    let mut by_name: [HashMap<&str, Vec<u64>>; 2] = Default::default();
    let mut by_all: [Vec<u64>; 2] = Default::default();
    for space in [S, P] {
        bytes += names.committed[space.at()]
            .keys()
            .map(String::len)
            .sum::<usize>();
    }
    for p in &names.pending {
        match p.effect.named() {
            Some((space, name)) => {
                bytes += name.len();
                if matches!(p.effect, Effect::Define { .. }) && !name.is_empty() {
                    defining[space.at()] += 1;
                }
                by_name[space.at()].entry(name).or_default().push(p.ticket);
            }
            None => {
                for space in Space::BOTH.into_iter().filter(|&s| p.effect.sweeps(s)) {
                    by_all[space.at()].push(p.ticket);
                }
            }
        }
    }
    assert_eq!(names.bytes, bytes, "{at}: bytes");
    assert_eq!(names.defining, defining, "{at}: defining");
    for space in [S, P] {
        let index: HashMap<&str, Vec<u64>> = names.by_name[space.at()]
            .iter()
            .map(|(name, t)| (name.as_str(), t.iter().copied().collect()))
            .collect();
        assert_eq!(index, by_name[space.at()], "{at}: by_name");
        let wide: Vec<u64> = names.by_all[space.at()].iter().copied().collect();
        assert_eq!(wide, by_all[space.at()], "{at}: by_all");
        assert!(names.committed[space.at()].len() <= MAX_NAMES + 1, "{at}");
    }
    assert!(
        names
            .pending
            .iter()
            .zip(names.pending.iter().skip(1))
            .all(|(a, b)| a.ticket < b.ticket)
    );
}

/// Lookup by scanning every pending effect: what the indexes must agree with.
fn naive<J: Clone>(names: &Names<J>, space: Space, name: &str) -> Lookup<J> {
    match names
        .pending
        .iter()
        .rev()
        .find(|p| p.effect.touches(space, name))
    {
        Some(p) if p.batch != names.batch => Wait,
        Some(Pending {
            effect: Effect::Define { value, .. },
            ..
        }) => Known(value.clone()),
        Some(_) => Unknown,
        None => match names.committed[space.at()].get(name) {
            Some(e) => Known(e.value.clone()),
            None => Unknown,
        },
    }
}

fn run(case: &str, steps: Vec<Step>) {
    let mut names = Names::new();
    let mut tickets = HashMap::new();
    for (i, step) in steps.into_iter().enumerate() {
        let at = format!("{case}, step {i}");
        let mut ticket = |label| {
            tickets
                .remove(label)
                .unwrap_or_else(|| panic!("{at}: {label}"))
        };
        match step {
            Push(label, effect) => {
                let t = names.push(effect).unwrap_or_else(|e| panic!("{at}: {e}"));
                assert!(tickets.insert(label, t).is_none(), "{at}: {label} twice");
            }
            Sync => names.sync(),
            Confirm(label) => names.confirm(ticket(label)),
            Fail(label) => names.fail(ticket(label)),
            Skip(label) => names.skipped(ticket(label)),
            Commit => names.transaction_ended(),
            Abort => names.transaction_aborted(),
            Is(space, name, want) => {
                let got = names.lookup(space, name);
                assert_eq!(got, want, "{at}: {space} {name:?}");
                assert_eq!(naive(&names, space, name), want, "{at}: naive");
            }
            Conflict(space, name, want) => {
                assert_eq!(
                    names.would_conflict(space, name),
                    want,
                    "{at}: {space} {name:?}"
                );
            }
            Unresolved(n) => assert_eq!(names.unresolved(), n, "{at}"),
        }
        check_invariants(&names, &at);
    }
}

#[test]
fn scripts() {
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<Step>)> = vec![
        ("a Bind relies on the Parse before it in its batch", vec![
            Push("parse", define(S, "s", "a")),
            Is(S, "s", Known("a")),
            Push("bind", define(P, "", "a")),
            Is(P, "", Known("a")),
            Unresolved(2),
            Sync,
            Is(S, "s", Wait), Is(P, "", Wait),
            Confirm("parse"),
            Is(S, "s", Known("a")), Is(P, "", Wait),
            Confirm("bind"),
            Is(P, "", Known("a")),
            Unresolved(0),
        ]),
        ("an unanswered batch decides its names for the next, no others", vec![
            Push("parse", define(S, "s", "a")),
            Sync,
            Is(S, "s", Wait), Is(S, "t", Unknown), Is(P, "s", Unknown), Is(S, "", Unknown),
            Fail("parse"),
            Is(S, "s", Unknown),
        ]),
        ("the batch being sent outranks an unanswered one", vec![
            Push("parse", define(S, "s", "a")),
            Sync,
            Push("close", remove(S, "s")),
            Is(S, "s", Unknown),
            Push("reparse", define(S, "s", "b")),
            Is(S, "s", Known("b")),
            Sync,
            Is(S, "s", Wait),
            Confirm("parse"), Is(S, "s", Wait),
            Confirm("close"), Is(S, "s", Wait),
            Confirm("reparse"), Is(S, "s", Known("b")),
        ]),
        ("a Parse of a name in use is rejected and leaves the statement", vec![
            Push("parse", define(S, "s", "a")),
            Sync,
            Confirm("parse"),
            Conflict(S, "s", true),
            Push("again", define(S, "s", "b")),
            // What follows it in the batch runs only if it succeeded.
            Is(S, "s", Known("b")),
            Conflict(S, "s", true),
            Sync,
            Is(S, "s", Wait),
            Fail("again"),
            Is(S, "s", Known("a")),
        ]),
        ("a rejected Parse of a new name leaves nothing", vec![
            Push("parse", define(S, "s", "a")),
            Sync,
            Fail("parse"),
            Is(S, "s", Unknown), Conflict(S, "s", false),
        ]),
        ("an unnamed Parse replaces the unnamed statement", vec![
            Push("first", define(S, "", "a")),
            Sync,
            Confirm("first"),
            Conflict(S, "", false),
            Push("second", define(S, "", "b")),
            Sync,
            Confirm("second"),
            Is(S, "", Known("b")),
        ]),
        ("a rejected unnamed Parse leaves no unnamed statement (drop_unnamed_stmt)", vec![
            Push("first", define(S, "", "a")),
            Sync,
            Confirm("first"),
            Push("second", define(S, "", "b")),
            Sync,
            Fail("second"),
            Is(S, "", Unknown),
        ]),
        ("a skipped unnamed Parse leaves the unnamed statement", vec![
            Push("first", define(S, "", "a")),
            Sync,
            Confirm("first"),
            Push("bad", define(S, "t", "x")),
            Push("second", define(S, "", "b")),
            Sync,
            Fail("bad"),
            Skip("second"),
            Is(S, "", Known("a")), Is(S, "t", Unknown),
        ]),
        ("a Close removes once the server confirms it", vec![
            Push("parse", define(S, "s", "a")),
            Sync,
            Confirm("parse"),
            Push("skipped", remove(S, "s")),
            Is(S, "s", Unknown), Conflict(S, "s", false),
            Sync,
            Is(S, "s", Wait), Conflict(S, "s", false),
            Skip("skipped"),
            Is(S, "s", Known("a")),
            Push("close", remove(S, "s")),
            Sync,
            Confirm("close"),
            Is(S, "s", Unknown),
        ]),
        ("statements and portals of one name are apart", vec![
            Push("parse", define(S, "x", "stmt")),
            Push("bind", define(P, "x", "portal")),
            Sync,
            Confirm("parse"), Confirm("bind"),
            Push("close", remove(S, "x")),
            Is(P, "x", Known("portal")),
            Sync,
            Is(P, "x", Known("portal")),
            Confirm("close"),
            Is(S, "x", Unknown), Is(P, "x", Known("portal")),
        ]),
        ("DEALLOCATE ALL drops the named statements, not the unnamed one", vec![
            Push("named", define(S, "s", "a")),
            Push("unnamed", define(S, "", "u")),
            Push("portal", define(P, "p", "a")),
            Sync,
            Confirm("named"), Confirm("unnamed"), Confirm("portal"),
            Push("deallocate", all(S)),
            Is(S, "s", Unknown), Is(S, "", Known("u")), Conflict(S, "s", false),
            Sync,
            Is(S, "s", Wait), Is(S, "never", Wait), Is(S, "", Known("u")),
            Is(P, "p", Known("a")),
            Confirm("deallocate"),
            Is(S, "s", Unknown), Is(S, "", Known("u")), Is(P, "p", Known("a")),
        ]),
        ("a rejected DEALLOCATE ALL changes nothing", vec![
            Push("named", define(S, "s", "a")),
            Sync,
            Confirm("named"),
            Push("deallocate", all(S)),
            Sync,
            Fail("deallocate"),
            Is(S, "s", Known("a")),
        ]),
        ("CLOSE ALL drops every portal, unnamed and held ones too", vec![
            Push("unnamed", define(P, "", "u")),
            Push("named", define(P, "p", "a")),
            Push("cursor", held("c", "c")),
            Push("stmt", define(S, "s", "s")),
            Sync,
            Confirm("unnamed"), Confirm("named"), Confirm("cursor"), Confirm("stmt"),
            Push("close", all(P)),
            Is(P, "", Unknown), Is(P, "c", Unknown),
            Sync,
            Is(P, "", Wait), Is(S, "s", Known("s")),
            Confirm("close"),
            Is(P, "", Unknown), Is(P, "p", Unknown), Is(P, "c", Unknown), Is(S, "s", Known("s")),
        ]),
        ("DISCARD ALL drops both spaces but the unnamed statement", vec![
            Push("unnamed", define(S, "", "u")),
            Push("named", define(S, "s", "a")),
            Push("cursor", held("c", "c")),
            Sync,
            Confirm("unnamed"), Confirm("named"), Confirm("cursor"),
            Push("discard", Effect::DiscardAll),
            Is(S, "s", Unknown), Is(P, "c", Unknown), Is(S, "", Known("u")),
            Sync,
            Is(S, "s", Wait), Is(P, "c", Wait), Is(P, "", Wait), Is(S, "", Known("u")),
            Confirm("discard"),
            Is(S, "s", Unknown), Is(P, "c", Unknown), Is(S, "", Known("u")),
        ]),
        ("a Define after a wide removal in the same batch counts", vec![
            Push("discard", Effect::DiscardAll),
            Push("parse", define(S, "s", "a")),
            Is(S, "s", Known("a")),
            Push("close", all(P)),
            Push("bind", define(P, "", "a")),
            Is(P, "", Known("a")), Is(P, "other", Unknown),
            Sync,
            Confirm("discard"), Confirm("parse"),
            Is(S, "s", Known("a")), Is(P, "", Wait),
            Confirm("close"), Confirm("bind"),
            Is(P, "", Known("a")),
        ]),
        ("a committed transaction drops its portals, not held cursors nor statements", vec![
            Push("unnamed", define(P, "", "u")),
            Push("named", define(P, "p", "a")),
            Push("cursor", held("c", "c")),
            Push("stmt", define(S, "s", "s")),
            Sync,
            Confirm("unnamed"), Confirm("named"), Confirm("cursor"), Confirm("stmt"),
            Commit,
            Is(P, "", Unknown), Is(P, "p", Unknown), Conflict(P, "p", false),
            Is(P, "c", Known("c")), Conflict(P, "c", true),
            Is(S, "s", Known("s")),
        ]),
        ("a rolled-back transaction drops the cursors it declared WITH HOLD", vec![
            Push("old", held("old", "o")),
            Sync,
            Confirm("old"),
            Commit,
            Push("new", held("new", "n")),
            Push("stmt", define(S, "s", "s")),
            Sync,
            Confirm("new"), Confirm("stmt"),
            Abort,
            Is(P, "old", Known("o")), Is(P, "new", Unknown),
            // Prepared statements are not transactional.
            Is(S, "s", Known("s")),
            Abort,
            Is(P, "old", Known("o")),
        ]),
        ("a transaction's end leaves later batches' effects pending", vec![
            Push("first", define(P, "p", "a")),
            Sync,
            Push("second", define(P, "q", "b")),
            Sync,
            Confirm("first"),
            Commit,
            Is(P, "p", Unknown), Is(P, "q", Wait),
            Confirm("second"),
            Is(P, "q", Known("b")),
            Commit,
            Is(P, "q", Unknown),
        ]),
        ("a failed Bind leaves the old unnamed portal until the transaction ends", vec![
            Push("bind", define(P, "", "a")),
            Sync,
            Confirm("bind"),
            Push("rebind", define(P, "", "b")),
            Sync,
            Fail("rebind"),
            // Unusable on the server: the transaction is aborted.
            Is(P, "", Known("a")),
            Abort,
            Is(P, "", Unknown),
        ]),
        ("a portal's name is free again after its transaction", vec![
            Push("bind", define(P, "p", "a")),
            Conflict(P, "p", true),
            Sync,
            Confirm("bind"),
            Conflict(P, "p", true),
            Commit,
            Conflict(P, "p", false),
            Push("rebind", define(P, "p", "b")),
            Sync,
            Confirm("rebind"),
            Is(P, "p", Known("b")),
        ]),
        ("a confirmed Bind over a portal dropped out of sight replaces it", vec![
            Push("declare", define(P, "c", "a")),
            Sync,
            Confirm("declare"),
            // ROLLBACK TO SAVEPOINT dropped it on the server; the relay forwarded anyway.
            Push("again", define(P, "c", "b")),
            Sync,
            Confirm("again"),
            Is(P, "c", Known("b")),
        ]),
        ("would_conflict never for unnamed, never while an earlier batch decides", vec![
            Conflict(S, "", false), Conflict(P, "", false), Conflict(S, "s", false),
            Push("unnamed", define(S, "", "a")),
            Conflict(S, "", false),
            Push("parse", define(S, "s", "a")),
            Conflict(S, "s", true),
            Sync,
            Conflict(S, "s", false),
            Confirm("unnamed"), Confirm("parse"),
            Conflict(S, "s", true), Conflict(S, "", false), Conflict(P, "s", false),
        ]),
        ("a Remove of a name never defined", vec![
            Push("close", remove(P, "nothing")),
            Is(P, "nothing", Unknown),
            Sync,
            Is(P, "nothing", Wait),
            Confirm("close"),
            Is(P, "nothing", Unknown),
        ]),
    ];
    for (case, steps) in cases {
        run(case, steps);
    }
}

/// The server accepting a named statement the gateway holds means answers were matched to the
/// wrong messages: loud in tests, and in release the name is forgotten (judged by neither).
#[test]
#[cfg_attr(
    debug_assertions,
    should_panic(expected = "accepted prepared statement")
)]
fn confirming_a_statement_twice_forgets_it() {
    let mut names = Names::new();
    let first = names.push(define(S, "s", "a")).unwrap();
    names.sync();
    names.confirm(first);
    let second = names.push(define(S, "s", "b")).unwrap();
    names.sync();
    names.confirm(second);
    assert_eq!(names.lookup(S, "s"), Unknown);
}

#[test]
fn pending_is_bounded() {
    let mut names = Names::<u32>::new();
    let mut tickets = VecDeque::new();
    for _ in 0..MAX_PENDING {
        tickets.push_back(
            names
                .push(Effect::Remove {
                    space: P,
                    name: String::new(),
                })
                .unwrap(),
        );
    }
    assert_eq!(names.unresolved(), MAX_PENDING);
    assert_eq!(names.push(Effect::DiscardAll), Err(Overflow::Pending));
    names.confirm(tickets.pop_front().unwrap());
    let _ = names.push(Effect::DiscardAll).unwrap();
}

#[test]
fn named_entries_are_bounded_per_space() {
    let mut names = Names::<u32>::new();
    let def = |space, i: usize| Effect::Define {
        space,
        name: format!("n{i}"),
        value: 0,
        holdable: false,
    };
    let mut tickets = VecDeque::new();
    // Half confirmed, half still pending: both count.
    for i in 0..MAX_NAMES {
        tickets.push_back(names.push(def(S, i)).unwrap());
        if i % 2 == 0 {
            names.confirm(tickets.pop_front().unwrap());
        }
    }
    assert_eq!(names.push(def(S, MAX_NAMES)), Err(Overflow::Names(S)));
    // The other space, the unnamed statement and removals are not held back.
    let _ = names.push(def(P, 0)).unwrap();
    let _ = names.push(define_u32(S, "")).unwrap();
    let close = names
        .push(Effect::Remove {
            space: S,
            name: "n0".into(),
        })
        .unwrap();
    // A failed Define gives its place back, a confirmed removal too.
    names.fail(tickets.pop_front().unwrap());
    let _ = names.push(def(S, MAX_NAMES)).unwrap();
    assert_eq!(names.push(def(S, MAX_NAMES + 1)), Err(Overflow::Names(S)));
    while let Some(t) = tickets.pop_front() {
        names.confirm(t);
    }
    assert_eq!(
        Overflow::Names(S).to_string(),
        format!("more than {MAX_NAMES} named prepared statements")
    );
    drop(close);
}

fn define_u32(space: Space, name: &str) -> Effect<u32> {
    Effect::Define {
        space,
        name: name.into(),
        value: 0,
        holdable: false,
    }
}

#[test]
fn name_bytes_are_bounded() {
    let mut names = Names::<u32>::new();
    let long = "x".repeat(MAX_NAME_BYTES - 1);
    let first = names.push(define_u32(S, &long)).unwrap();
    assert_eq!(names.push(define_u32(P, "ab")), Err(Overflow::Bytes));
    let one = names.push(define_u32(P, "a")).unwrap();
    let _ = names.push(define_u32(P, "")).unwrap();
    names.confirm(first);
    names.confirm(one);
    assert_eq!(names.push(define_u32(S, "b")), Err(Overflow::Bytes));
    let close = names
        .push(Effect::Remove {
            space: S,
            name: long.clone(),
        })
        .unwrap_err();
    assert_eq!(close, Overflow::Bytes, "a removal copies its name too");
    let _ = names.push(Effect::RemoveAll { space: S }).unwrap();
    names.sync();
    let unnamed = names
        .pending
        .iter()
        .find(|p| matches!(p.effect, Effect::Define { .. }))
        .unwrap()
        .ticket;
    names.confirm(Ticket(unnamed));
    let deallocate = names.pending.front().unwrap().ticket;
    names.confirm(Ticket(deallocate));
    assert_eq!(names.bytes, 1);
    let _ = names.push(define_u32(S, &long)).unwrap();
}

/// A tiny PostgreSQL: runs batches the way the server does (skipping to Sync after an error,
/// rejecting a name in use, dropping the unnamed statement before a Parse, ending the implicit
/// transaction at Sync) and checks what the gateway's lookups promised against what it has.
mod server {
    use super::*;

    /// xorshift64*: deterministic, no dependency.
    pub(super) struct Rng(u64);

    impl Rng {
        pub(super) fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub(super) fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
        pub(super) fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    pub(super) enum Msg {
        /// An effect-carrying message; `conflict` is whether would_conflict said the server
        /// rejects it; `fails` whether it fails on the server for another reason.
        Effect {
            ticket: Ticket,
            effect: Effect<u32>,
            conflict: bool,
            fails: bool,
        },
        /// A message that uses a name (Bind of a statement, Execute of a portal), and what the
        /// gateway looked up for it.
        Use {
            space: Space,
            name: String,
            found: Option<u32>,
        },
    }

    #[derive(Default)]
    pub(super) struct Server {
        statements: HashMap<String, u32>,
        /// value, holdable, created in the current transaction
        portals: HashMap<String, (u32, bool, bool)>,
        /// Batches sent and not run yet.
        pub(super) queue: VecDeque<Vec<Msg>>,
        pub(super) checked: usize,
    }

    impl Server {
        fn has(&self, space: Space, name: &str) -> Option<u32> {
            match space {
                Space::Statement => self.statements.get(name).copied(),
                Space::Portal => self.portals.get(name).map(|p| p.0),
            }
        }

        /// Runs the oldest batch sent, answering to `names`.
        pub(super) fn run_batch(&mut self, names: &mut Names<u32>) -> bool {
            let Some(batch) = self.queue.pop_front() else {
                return false;
            };
            let mut failed = false;
            for msg in batch {
                match msg {
                    Msg::Effect { ticket, .. } if failed => names.skipped(ticket),
                    Msg::Use { .. } if failed => {}
                    Msg::Use { space, name, found } => {
                        let has = self.has(space, &name);
                        match found {
                            Some(j) => assert!(has.is_none_or(|h| h == j), "{space} {name:?}"),
                            None => assert_eq!(has, None, "{space} {name:?}"),
                        }
                        if space == Space::Statement {
                            assert_eq!(has, found, "statements are exact");
                        }
                        self.checked += 1;
                        // Bind of a missing statement, Execute of a missing portal: an error.
                        failed = has.is_none();
                    }
                    Msg::Effect {
                        ticket,
                        effect,
                        conflict,
                        fails,
                    } => {
                        let ok = self.apply(&effect, fails);
                        if conflict {
                            assert!(!ok, "would_conflict, yet {effect:?} succeeded");
                        }
                        if ok {
                            names.confirm(ticket);
                        } else {
                            names.fail(ticket);
                            failed = true;
                        }
                    }
                }
            }
            // ReadyForQuery 'I': the implicit transaction ends with the batch.
            self.portals.retain(|_, p| p.1 && !(failed && p.2));
            for p in self.portals.values_mut() {
                p.2 = false;
            }
            if failed {
                names.transaction_aborted();
            } else {
                names.transaction_ended();
            }
            true
        }

        fn apply(&mut self, effect: &Effect<u32>, fails: bool) -> bool {
            match effect {
                Effect::Define {
                    space: Space::Statement,
                    name,
                    value,
                    ..
                } => {
                    if name.is_empty() {
                        self.statements.remove("");
                    } else if self.statements.contains_key(name) {
                        return false;
                    }
                    if !fails {
                        self.statements.insert(name.clone(), *value);
                    }
                    !fails
                }
                Effect::Define {
                    space: Space::Portal,
                    name,
                    value,
                    holdable,
                } => {
                    if fails || (!name.is_empty() && self.portals.contains_key(name)) {
                        return false;
                    }
                    self.portals.insert(name.clone(), (*value, *holdable, true));
                    true
                }
                // DEALLOCATE of a missing name fails; Close of one does not: either way.
                Effect::Remove { space, name } => {
                    if fails {
                        return false;
                    }
                    match space {
                        Space::Statement => self.statements.remove(name).is_some(),
                        Space::Portal => self.portals.remove(name).is_some(),
                    };
                    true
                }
                Effect::RemoveAll { .. } | Effect::DiscardAll if fails => false,
                Effect::RemoveAll {
                    space: Space::Statement,
                } => {
                    self.statements.retain(|name, _| name.is_empty());
                    true
                }
                Effect::RemoveAll {
                    space: Space::Portal,
                } => {
                    self.portals.clear();
                    true
                }
                Effect::DiscardAll => {
                    self.statements.retain(|name, _| name.is_empty());
                    self.portals.clear();
                    true
                }
            }
        }
    }
}

/// Random pipelined sessions against the tiny server: every lookup the gateway answered is
/// checked when the server runs the message, and the indexed lookup against a full scan.
#[test]
fn random_sessions_never_run_ahead_of_the_server() {
    use server::{Msg, Rng, Server};
    const NAMES: [&str; 3] = ["", "a", "b"];
    let mut checked = 0;
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let mut names = Names::<u32>::new();
        let mut server = Server::default();
        let mut value = 0;
        for _ in 0..40 {
            let mut batch = Vec::new();
            for _ in 0..1 + rng.below(6) {
                let space = if rng.chance(50) { S } else { P };
                let name = NAMES[rng.below(3) as usize];
                for s in [S, P] {
                    for n in NAMES {
                        assert_eq!(names.lookup(s, n), naive(&names, s, n), "seed {seed}");
                    }
                }
                if rng.chance(35) {
                    // Wait: let the server catch up on what was sent, as the relay would.
                    let found = loop {
                        match names.lookup(space, name) {
                            Known(j) => break Some(j),
                            Unknown => break None,
                            Wait => assert!(server.run_batch(&mut names), "waits on nothing"),
                        }
                    };
                    batch.push(Msg::Use {
                        space,
                        name: name.into(),
                        found,
                    });
                    continue;
                }
                value += 1;
                let effect = match rng.below(10) {
                    0..=4 => Effect::Define {
                        space,
                        name: name.into(),
                        value,
                        holdable: space == P && rng.chance(30),
                    },
                    5..=7 => Effect::Remove {
                        space,
                        name: name.into(),
                    },
                    8 => Effect::RemoveAll { space },
                    _ => Effect::DiscardAll,
                };
                let conflict =
                    matches!(effect, Effect::Define { .. }) && names.would_conflict(space, name);
                let ticket = names.push(effect.clone()).unwrap();
                let fails = rng.chance(15);
                batch.push(Msg::Effect {
                    ticket,
                    effect,
                    conflict,
                    fails,
                });
                check_invariants(&names, &format!("seed {seed}"));
            }
            names.sync();
            server.queue.push_back(batch);
            while rng.chance(40) && server.run_batch(&mut names) {}
            check_invariants(&names, &format!("seed {seed}"));
        }
        while server.run_batch(&mut names) {}
        assert_eq!(names.unresolved(), 0);
        check_invariants(&names, &format!("seed {seed}"));
        checked += server.checked;
    }
    assert!(checked > 5_000, "only {checked} lookups checked");
}

#[tokio::test]
async fn shared_lookup_waits_for_the_answer() {
    let names = Arc::new(SharedNames::new());
    let parse = names.push(define(S, "s", "a")).unwrap();
    assert_eq!(names.peek(S, "s"), Known("a"));
    names.sync();
    assert_eq!(names.peek(S, "s"), Wait);
    let waiter = tokio::spawn({
        let names = names.clone();
        async move { names.lookup(S, "s").await }
    });
    settle().await;
    assert!(!waiter.is_finished());
    names.confirm(parse);
    assert_eq!(waiter.await.unwrap(), Some("a"));
    assert_eq!(names.unresolved(), 0);
}

#[tokio::test]
async fn shared_lookup_waits_through_answers_that_do_not_decide() {
    let names = Arc::new(SharedNames::new());
    let first = names.push(define(S, "s", "a")).unwrap();
    let second = names.push(define(S, "t", "b")).unwrap();
    names.sync();
    let waiter = tokio::spawn({
        let names = names.clone();
        async move { names.lookup(S, "t").await }
    });
    settle().await;
    names.confirm(first);
    settle().await;
    assert!(!waiter.is_finished(), "woken, looked again, waits on");
    names.fail(second);
    assert_eq!(waiter.await.unwrap(), None);
}

#[tokio::test]
async fn shared_lookup_answers_at_once_when_it_can() {
    let names = SharedNames::new();
    let parse = names.push(define(S, "s", "a")).unwrap();
    assert_eq!(names.lookup(S, "s").await, Some("a"));
    assert!(names.would_conflict(S, "s"));
    assert_eq!(names.lookup(S, "t").await, None);
    names.sync();
    names.skipped(parse);
    assert_eq!(names.lookup(S, "s").await, None);
    let declare = names.push(held("c", "c")).unwrap();
    names.sync();
    names.confirm(declare);
    names.transaction_aborted();
    assert_eq!(names.lookup(P, "c").await, None);
    names.transaction_ended();
}

/// An answer resolved after the look but before the await still wakes the waiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_lookup_loses_no_wakeup() {
    for _ in 0..200 {
        let names = Arc::new(SharedNames::new());
        let parse = names.push(define(P, "p", "a")).unwrap();
        names.sync();
        let waiter = tokio::spawn({
            let names = names.clone();
            async move { names.lookup(P, "p").await }
        });
        tokio::task::yield_now().await;
        names.confirm(parse);
        let found = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await;
        assert_eq!(found.expect("woken").unwrap(), Some("a"));
    }
}

#[test]
fn shared_names_survive_a_poisoned_lock() {
    let names = SharedNames::new();
    let parse = names.push(define(S, "s", "a")).unwrap();
    let _ = std::panic::catch_unwind(|| {
        let _held = names.inner.lock().unwrap();
        panic!("poisoning the lock on purpose");
    });
    assert!(names.inner.is_poisoned());
    names.sync();
    names.confirm(parse);
    assert!(names.would_conflict(S, "s"));
    assert_eq!(names.unresolved(), 0);
}

/// Lets spawned tasks on the current-thread runtime run until they wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}
