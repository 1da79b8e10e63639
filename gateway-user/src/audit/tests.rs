//! The store: records, events, batching and group commit.

use super::*;

fn rec(id: u64, verdict: VerdictKind) -> SessionRecord {
    SessionRecord {
        id,
        started_at_ms: id * 10,
        ended_at_ms: Some(id * 10 + 5),
        agent: None,
        peer: "127.0.0.1:1".into(),
        policy: None,
        destination: Some("127.10.0.5:80".into()),
        target: None,
        protocol: None,
        verdict,
        rule: "no-origin".into(),
        bytes_up: 1,
        bytes_down: 2,
        end: Some(SessionEnd::Refused),
        token: None,
    }
}

#[test]
fn records_round_trip_and_list_in_order_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = AuditStore::open(dir.path()).unwrap();
        let ids: Vec<u64> = (0..5).map(|_| store.next_id().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > 0);
        for (i, id) in ids.iter().enumerate() {
            let v = if i % 2 == 0 {
                VerdictKind::Allow
            } else {
                VerdictKind::Deny
            };
            store.put(&rec(*id, v)).unwrap();
        }
        store.flush().unwrap();
    }
    let store = reopen(dir.path());
    let all = store.list(&SessionFilter::default(), 100).unwrap();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(store.get(all[1].id).unwrap().unwrap(), all[1]);
    let denied = store
        .list(
            &SessionFilter {
                verdict: Some(VerdictKind::Deny),
                ..Default::default()
            },
            100,
        )
        .unwrap();
    assert_eq!(denied.len(), 2);
    let newest = store.list(&SessionFilter::default(), 2).unwrap();
    assert_eq!(
        newest.iter().map(|r| r.id).collect::<Vec<_>>(),
        all[3..].iter().map(|r| r.id).collect::<Vec<_>>()
    );
    assert!(
        store.next_id().unwrap() > all[4].id,
        "ids keep growing after a reopen"
    );
}

/// sled's background flusher may hold the file lock a moment after the drop.
fn reopen(dir: &Path) -> AuditStore {
    (0..100)
        .find_map(|_| {
            AuditStore::open(dir).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            })
        })
        .expect("reopen")
}

fn event(session_id: u64, seq: u64) -> Event {
    Event {
        at_ms: seq,
        duration_us: 1,
        ..super::integrity_tests::event(session_id, seq)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_events_come_back_in_order_batched_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = AuditStore::open(dir.path()).unwrap();
        // Interleaved, as concurrent sessions hand them over.
        for seq in 1..=500 {
            for session in [7, 8, 9] {
                store.append(event(session, seq)).unwrap();
            }
            if seq == 250 {
                store.settle(false).await.unwrap();
            }
        }
        store.settle(true).await.unwrap();
        for session in [7, 8, 9] {
            let got = store.events(session).unwrap();
            assert_eq!(
                got,
                (1..=500).map(|s| event(session, s)).collect::<Vec<_>>()
            );
        }
        assert!(
            store.h().unwrap().events.len() < 3 * 500 / 10,
            "{} sled values for 1500 events: not batched",
            store.h().unwrap().events.len()
        );
        assert!(store.events(6).unwrap().is_empty());
    }
    let store = reopen(dir.path());
    assert_eq!(store.events(8).unwrap().len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_durable_writes_share_flushes_and_all_return() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let writers: Vec<_> = (0..600)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = store.next_id().unwrap();
                store
                    .put_durable(&rec(id, VerdictKind::Allow))
                    .await
                    .unwrap();
                id
            })
        })
        .collect();
    let deadline = std::time::Duration::from_secs(30);
    for w in writers {
        let id = tokio::time::timeout(deadline, w)
            .await
            .expect("a durable write hung")
            .unwrap();
        assert!(store.get(id).unwrap().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_a_crash_left_open_are_sealed_at_the_next_start_and_verify_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let (open_id, closed_id) = {
        let store = AuditStore::open(dir.path()).unwrap();
        let open_id = store.next_id().unwrap();
        let mut live = rec(open_id, VerdictKind::Allow);
        live.end = None;
        live.ended_at_ms = None;
        store.put_durable(&live).await.unwrap();
        for seq in 1..=3 {
            store.append(event(open_id, seq)).unwrap();
        }
        let closed_id = store.next_id().unwrap();
        store
            .put_durable(&rec(closed_id, VerdictKind::Allow))
            .await
            .unwrap();
        store.settle(true).await.unwrap();
        // Dropped without the seal, as a kill -9 leaves it.
        (open_id, closed_id)
    };
    let store = reopen(dir.path());
    assert_eq!(store.verify().unwrap().open, vec![open_id]);
    assert_eq!(store.seal_leftovers().unwrap(), vec![open_id]);
    let sealed = store.get(open_id).unwrap().unwrap();
    assert_eq!(sealed.end, Some(SessionEnd::Interrupted));
    assert_eq!(sealed.ended_at_ms, Some(3), "the last stored event's time");
    let report = store.verify().unwrap();
    assert!(report.ok(), "{report}");
    assert!(report.open.is_empty(), "{report}");
    assert_eq!(report.interrupted, vec![open_id]);
    assert!(report.to_string().contains("interrupted"), "{report}");
    assert_eq!(
        store.get(closed_id).unwrap().unwrap().end,
        Some(SessionEnd::Refused)
    );
    // Nothing left to seal the second time.
    assert!(store.seal_leftovers().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_store_stops_open_sessions_refuses_writes_and_recovers_by_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let id = store.next_id().unwrap();
    let mut live = rec(id, VerdictKind::Allow);
    live.end = None;
    store.put_durable(&live).await.unwrap();
    store.append(event(id, 1)).unwrap();
    store.settle(true).await.unwrap();
    assert!(!store.session_lost_events(id));

    store.failed(&AuditError::Store(sled::Error::Io(std::io::Error::other(
        "No space left on device",
    ))));
    assert!(store.unavailable().unwrap().contains("No space"));
    assert!(store.session_lost_events(id), "an open session must stop");
    // The slot lets go of the old opening and opens anew; clones see the new one.
    let other = store.clone();
    assert!(store.recover().unwrap());
    assert!(store.unavailable().is_none());
    let next = other.next_id().unwrap();
    other
        .put_durable(&rec(next, VerdictKind::Deny))
        .await
        .unwrap();
    assert!(other.get(id).unwrap().is_some(), "what was durable stayed");
    // The stopped session's seal counts what it had; the new one chains from the head.
    live.end = Some(SessionEnd::AuditUnavailable("stopped".into()));
    store.put_durable(&live).await.unwrap();
    let report = store.verify().unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.audit_failed, vec![id]);
    assert!(!store.recover().unwrap(), "nothing to recover");
}

#[test]
fn a_recovery_waits_for_every_holder_of_the_old_opening() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let held = store.h().unwrap();
    store.failed(&AuditError::Store(sled::Error::Io(std::io::Error::other(
        "test",
    ))));
    // sled's file lock is held through `held`: the new opening cannot take it.
    assert!(store.recover().is_err());
    assert!(matches!(store.next_id(), Err(AuditError::Unavailable(_))));
    drop(held);
    let recovered = (0..100).any(|_| {
        store.recover().unwrap_or_else(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            false
        })
    });
    assert!(recovered);
    assert!(store.next_id().is_ok());
}
