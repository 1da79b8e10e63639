//! The chain: written as sessions run, checked by verify, kept verifiable by pruning, and
//! broken visibly by every kind of tampering.

use std::{path::Path, time::Duration};

use serde_json::json;

use super::{tamper, *};

fn opening(id: u64, started_at_ms: u64) -> SessionRecord {
    SessionRecord {
        id,
        started_at_ms,
        ended_at_ms: None,
        agent: None,
        peer: "127.0.0.1:40000".into(),
        policy: Some("billing".into()),
        destination: Some("127.10.0.5:5432".into()),
        target: Some("billing-db".into()),
        protocol: Some(crate::target::Protocol::Postgres),
        verdict: VerdictKind::Allow,
        rule: "targets.billing-db".into(),
        bytes_up: 0,
        bytes_down: 0,
        end: None,
        token: None,
    }
}

fn ended(mut r: SessionRecord, at: u64) -> SessionRecord {
    r.ended_at_ms = Some(at);
    r.end = Some(SessionEnd::Closed);
    r.bytes_up = 100;
    r.bytes_down = 200;
    r
}

pub(super) fn event(session_id: u64, seq: u64) -> Event {
    Event {
        session_id,
        seq,
        at_ms: 1_000 + seq,
        verdict: crate::rules::Action::Allow,
        rule: "app".into(),
        duration_us: 10,
        masked: 0,
        error: None,
        approval: None,
        detail: super::Detail::Sql(super::SqlDetail {
            step: super::SqlStep::Query,
            kind: crate::sql::StatementKind::Select.into(),
            sql: format!("SELECT {seq}"),
            rows: Some(1),
        }),
    }
}

/// A session with `events` statements, ended unless `open`; its id.
async fn session(store: &AuditStore, started: u64, events: u64, open: bool) -> u64 {
    let id = store.next_id().unwrap();
    store.put_durable(&opening(id, started)).await.unwrap();
    for seq in 1..=events {
        store.append(event(id, seq)).unwrap();
    }
    if !open {
        // No settle first: the seal waits for the writer itself.
        store
            .put_durable(&ended(opening(id, started), started + 10))
            .await
            .unwrap();
    } else {
        store.settle(false).await.unwrap();
    }
    id
}

/// Five events sealed (a), refused at once (b), two events and still open (c).
async fn three(store: &AuditStore) -> [u64; 3] {
    let a = session(store, 1_000, 5, false).await;
    let b = store.next_id().unwrap();
    let mut refused = ended(opening(b, 2_000), 2_000);
    refused.end = Some(SessionEnd::Refused);
    store.put_durable(&refused).await.unwrap();
    let c = session(store, 3_000, 2, true).await;
    [a, b, c]
}

fn reopen(dir: &Path) -> AuditStore {
    (0..100)
        .find_map(|_| {
            AuditStore::open(dir).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(20));
                None
            })
        })
        .expect("reopen")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_events_chain_and_the_chain_goes_on_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = {
        let store = AuditStore::open(dir.path()).unwrap();
        let ids = three(&store).await;
        let r = store.verify().unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!((r.sessions, r.sealed, r.events), (3, 2, 7), "{r}");
        assert_eq!(r.open, vec![ids[2]]);
        assert_eq!(r.head.map(|h| h.id), Some(ids[2]));
        // Readers that know nothing of the chain read records and events as before.
        assert_eq!(
            store.events(ids[0]).unwrap(),
            (1..=5).map(|s| event(ids[0], s)).collect::<Vec<_>>()
        );
        assert_eq!(
            store.get(ids[0]).unwrap().unwrap(),
            ended(opening(ids[0], 1_000), 1_010)
        );
        store.flush().unwrap();
        ids
    };
    let store = reopen(dir.path());
    let chain = |id| tamper::stored_record(&store, id).unwrap().unwrap()["chain"].clone();
    assert_eq!(chain(a)["prev_id"], json!(null));
    assert_eq!(chain(a)["seal"]["events"], 5);
    assert_eq!(chain(b)["prev_id"], a);
    assert_eq!(
        chain(b)["seal"]["last"],
        chain(b)["open"],
        "no events: the seal is the opening"
    );
    assert_eq!(chain(c)["prev_id"], b);
    assert!(chain(c).get("seal").is_none());
    let d = session(&store, 4_000, 1, false).await;
    assert_eq!(
        chain(d)["prev_id"],
        c,
        "a restarted store chains from the last session"
    );
    assert_eq!(chain(d)["prev"], chain(c)["open"]);
    let r = store.verify().unwrap();
    assert!(r.ok(), "{r}");
    assert_eq!(
        r.open,
        vec![c],
        "cut off by the restart: open, not tampered"
    );
    let export = store.export(a).unwrap().unwrap();
    assert_eq!(export.len(), 6);
    for w in export[1..].windows(2) {
        let next: serde_json::Value = serde_json::from_str(&w[1]).unwrap();
        assert_eq!(next["prev"], chain::hex(&chain::sha256(w[0].as_bytes())));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sessions_each_keep_their_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { session(&store, 1_000 + i, 25, false).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let r = store.verify().unwrap();
    assert!(r.ok(), "{r}");
    assert_eq!((r.sessions, r.sealed, r.events), (40, 40, 1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_cut_into_several_values_chains_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let id = store.next_id().unwrap();
    store.put_durable(&opening(id, 1_000)).await.unwrap();
    let long = |seq| {
        let mut e = event(id, seq);
        let super::Detail::Sql(d) = &mut e.detail else {
            unreachable!("an SQL event")
        };
        d.sql = format!("SELECT {seq}, '{}'", "x".repeat(1_000));
        e
    };
    for seq in 1..=1_000 {
        store.append(long(seq)).unwrap();
    }
    store
        .put_durable(&ended(opening(id, 1_000), 2_000))
        .await
        .unwrap();
    assert!(
        store
            .h()
            .unwrap()
            .events
            .scan_prefix(id.to_be_bytes())
            .count()
            >= 10,
        "not cut"
    );
    assert!(
        store
            .h()
            .unwrap()
            .events
            .iter()
            .values()
            .all(|v| v.unwrap().len() < 100 * 1024)
    );
    assert_eq!(
        store.events(id).unwrap(),
        (1..=1_000).map(long).collect::<Vec<_>>()
    );
    let r = store.verify().unwrap();
    assert!(r.ok() && r.events == 1_000 && r.sealed == 1, "{r}");
    tamper::swap_events(&store, id, 500, 501).unwrap();
    expect(&store.verify().unwrap().problems, id, Some(500), "moved");
}

/// Builds the three sessions, tampers, and returns what verify found first.
async fn tampered(f: impl FnOnce(&AuditStore, [u64; 3])) -> (Vec<Problem>, [u64; 3]) {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let ids = three(&store).await;
    f(&store, ids);
    let r = store.verify().unwrap();
    assert!(!r.ok(), "tampering went unseen: {r}");
    (r.problems, ids)
}

fn expect(problems: &[Problem], session: u64, seq: Option<u64>, says: &str) {
    let p = &problems[0];
    assert!(
        p.session == Some(session) && p.seq == seq && p.what.contains(says),
        "want session {session} seq {seq:?} '{says}', got {problems:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_each_kind_of_tampering() {
    let (p, [a, ..]) =
        tampered(|s, [a, ..]| tamper::edit_event(s, a, 3, "verdict", json!("deny")).unwrap()).await;
    expect(&p, a, Some(3), "edited");
    let (p, [a, ..]) =
        tampered(|s, [a, ..]| tamper::edit_event(s, a, 5, "rows", json!(0)).unwrap()).await;
    expect(&p, a, Some(5), "does not hash to the seal");
    let (p, [a, ..]) = tampered(|s, [a, ..]| tamper::remove_event(s, a, 2).unwrap()).await;
    expect(&p, a, Some(2), "missing");
    let (p, [a, ..]) = tampered(|s, [a, ..]| tamper::swap_events(s, a, 3, 4).unwrap()).await;
    expect(&p, a, Some(3), "moved");
    let (p, [a, ..]) = tampered(|s, [a, ..]| tamper::truncate_events(s, a, 3).unwrap()).await;
    expect(&p, a, Some(4), "sealed with 5 events, 3 stored");
    let (p, [_, b, c]) = tampered(|s, [_, b, _]| tamper::remove_session(s, b).unwrap()).await;
    expect(
        &p,
        c,
        None,
        &format!("chains from session {b}, which is missing"),
    );
    let (p, [.., c]) = tampered(|s, [.., c]| tamper::remove_session(s, c).unwrap()).await;
    expect(&p, c, None, "newest session");
    let (p, [a, ..]) =
        tampered(|s, [a, ..]| tamper::edit_record(s, a, "bytes_up", json!(1)).unwrap()).await;
    expect(&p, a, None, "does not hash to its seal");
    assert_eq!(p.len(), 1, "one edit, one report: {p:#?}");
    let (p, [.., c]) =
        tampered(|s, [.., c]| tamper::edit_record(s, c, "peer", json!("10.0.0.9:1")).unwrap())
            .await;
    expect(&p, c, None, "opening fields");
    let (p, [a, ..]) = tampered(|s, [a, ..]| {
        s.h().unwrap().sessions.remove(a.to_be_bytes()).unwrap();
    })
    .await;
    expect(&p, a, None, "no record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_cut_short_is_open_not_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let [.., c] = three(&store).await;
    tamper::truncate_events(&store, c, 1).unwrap();
    let r = store.verify().unwrap();
    assert!(r.ok() && r.open == vec![c], "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_the_oldest_whole_sessions_and_keeps_the_chain_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let now = now_ms();
    let day = 86_400_000;
    let mut ids = Vec::new();
    for i in 0..6 {
        // Four sessions ten days old, two from today.
        let at = if i < 4 {
            now - 10 * day + i
        } else {
            now - 1_000 + i
        };
        ids.push(session(&store, at, 3, false).await);
    }
    let open = session(&store, now - 20 * day, 2, true).await;
    let r = store
        .prune(Some(Duration::from_secs(86_400)), None)
        .unwrap();
    assert_eq!((r.sessions, r.events, r.kept_sessions), (4, 12, 3), "{r:?}");
    for id in &ids[..4] {
        assert!(store.get(*id).unwrap().is_none() && store.events(*id).unwrap().is_empty());
    }
    assert!(store.get(open).unwrap().is_some(), "open sessions stay");
    let v = store.verify().unwrap();
    assert!(v.ok(), "{v}");
    assert_eq!(v.sessions, 3);

    // By size: everything but the head and what is open goes.
    let r = store.prune(None, Some(1)).unwrap();
    assert_eq!(r.sessions, 2, "{r:?}");
    assert!(store.get(ids[5]).unwrap().is_none());
    let v = store.verify().unwrap();
    assert!(v.ok() && v.sessions == 1, "{v}");
    session(&store, now, 1, false).await;
    let v = store.verify().unwrap();
    assert!(v.ok() && v.sessions == 2, "{v}");

    // Pruning does not launder a removal it did not make: s2 chains from a removed s1, and
    // pruning the old s3 after them leaves that link dangling.
    let s1 = session(&store, now, 1, false).await;
    let s2 = session(&store, now, 1, false).await;
    let s3 = session(&store, now - 10 * day, 1, false).await;
    session(&store, now, 1, false).await;
    tamper::remove_session(&store, s1).unwrap();
    let r = store
        .prune(Some(Duration::from_secs(86_400)), None)
        .unwrap();
    assert_eq!(r.sessions, 1);
    assert!(store.get(s3).unwrap().is_none());
    let v = store.verify().unwrap();
    assert_eq!(v.problems.len(), 1, "{v}");
    expect(
        &v.problems,
        s2,
        None,
        &format!("chains from session {s1}, which is missing"),
    );
}
