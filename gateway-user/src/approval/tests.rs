use std::{sync::Arc, time::Duration};

use super::*;

fn agent(uid: u32) -> Agent {
    Agent {
        pid: 10,
        tid: 10,
        uid,
        gid: uid,
        user: None,
        exe: Some("/usr/bin/psql".into()),
        cmdline: None,
        cgroup: Some("/agents/bot".into()),
        cgroup_id: 7,
    }
}

fn ask(session_id: u64, command: &str, timeout_ms: u64, scope: Scope) -> Ask {
    Ask {
        session_id,
        policy: "p".into(),
        target: "db".into(),
        protocol: "postgres",
        agent: Some(agent(1000)),
        subject: None,
        command: command.into(),
        command_redacted: String::new(),
        rule: "payouts".into(),
        timeout: Duration::from_millis(timeout_ms),
        scope,
    }
}

fn approver(uid: u32) -> Approver {
    Approver {
        uid,
        user: format!("u{uid}"),
    }
}

/// Starts a hold and returns its task once the request is pending.
async fn held(broker: &Arc<Broker>, a: Ask) -> (u64, tokio::task::JoinHandle<(Request, Decision)>) {
    let mut events = broker.subscribe();
    let b = broker.clone();
    let task = tokio::spawn(async move { b.hold(a).await });
    match events.recv().await.unwrap() {
        Event::Pending { request } => (request.id, task),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn approve_deny_and_timeout_end_the_wait_and_are_published() {
    let broker = Arc::new(Broker::default());
    let mut events = broker.subscribe();

    let (id, task) = held(&broker, ask(1, "INSERT 1", 60_000, Scope::Once)).await;
    assert_eq!(broker.pending().len(), 1);
    let approve = Decision::Approved {
        by: approver(0),
        note: Some("ok".into()),
        covered_by: None,
    };
    broker.decide(id, approve.clone()).unwrap();
    assert_eq!(task.await.unwrap().1, approve);
    assert!(broker.pending().is_empty());

    let (id, task) = held(&broker, ask(1, "INSERT 2", 60_000, Scope::Once)).await;
    let deny = Decision::Denied {
        by: approver(0),
        reason: "not today".into(),
    };
    broker.decide(id, deny.clone()).unwrap();
    assert_eq!(task.await.unwrap().1, deny);
    assert_eq!(broker.decide(id, deny), Err(DecideError::NotFound(id)));

    let (_, decision) = broker.hold(ask(1, "INSERT 3", 20, Scope::Once)).await;
    assert_eq!(decision, Decision::Expired);

    let mut outcomes = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let Event::Decided { decision, .. } = e {
            outcomes.push(decision);
        }
    }
    assert!(matches!(
        outcomes.as_slice(),
        [
            Decision::Approved { .. },
            Decision::Denied { .. },
            Decision::Expired
        ]
    ));
}

#[tokio::test]
async fn the_agents_own_uid_cannot_decide() {
    let broker = Arc::new(Broker::default());
    let (id, task) = held(&broker, ask(1, "INSERT 1", 60_000, Scope::Once)).await;
    let own = Decision::Approved {
        by: approver(1000),
        note: None,
        covered_by: None,
    };
    assert_eq!(broker.decide(id, own), Err(DecideError::OwnRequest(1000)));
    assert_eq!(broker.pending().len(), 1, "still pending");
    task.abort();
}

#[tokio::test]
async fn a_dropped_wait_withdraws_the_request() {
    let broker = Arc::new(Broker::default());
    let (id, task) = held(&broker, ask(1, "INSERT 1", 60_000, Scope::Once)).await;
    let mut events = broker.subscribe();
    task.abort();
    let _ = task.await;
    assert!(broker.pending().is_empty());
    match events.recv().await.unwrap() {
        Event::Decided {
            request, decision, ..
        } => {
            assert_eq!((request.id, decision), (id, Decision::Withdrawn));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn what_one_approval_covers_depends_on_the_scope() {
    let approve = |broker: &Broker, id| {
        broker
            .decide(
                id,
                Decision::Approved {
                    by: approver(0),
                    note: None,
                    covered_by: None,
                },
            )
            .unwrap();
    };
    // (scope, same session again, other session, other command)
    #[rustfmt::skip]
    let cases = [
        (Scope::Once, false, false, false),
        (Scope::Session, true, false, false),
        (Scope::Window(Duration::from_secs(60)), true, true, false),
    ];
    for (scope, same_session, other_session, other_command) in cases {
        let broker = Arc::new(Broker::default());
        let (id, task) = held(&broker, ask(1, "DELETE x", 60_000, scope)).await;
        approve(&broker, id);
        task.await.unwrap();
        let covered = |a: Ask| {
            let broker = broker.clone();
            async move { broker.hold(a).await.1.approved() }
        };
        assert_eq!(
            covered(ask(1, "DELETE x", 10, scope)).await,
            same_session,
            "{scope:?}"
        );
        assert_eq!(
            covered(ask(2, "DELETE x", 10, scope)).await,
            other_session,
            "{scope:?}"
        );
        assert_eq!(
            covered(ask(1, "DELETE y", 10, scope)).await,
            other_command,
            "{scope:?}"
        );
        broker.session_ended(1);
        if scope == Scope::Session {
            assert!(!covered(ask(1, "DELETE x", 10, scope)).await);
        }
    }
    // A window ends.
    let broker = Arc::new(Broker::default());
    let scope = Scope::Window(Duration::from_millis(50));
    let (id, task) = held(&broker, ask(1, "DELETE x", 60_000, scope)).await;
    approve(&broker, id);
    task.await.unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(
        !broker
            .hold(ask(2, "DELETE x", 10, scope))
            .await
            .1
            .approved()
    );
}

#[test]
fn scopes_parse_from_policy_text() {
    let s = |t: &str| Scope::try_from(t.to_owned());
    assert_eq!(s("once"), Ok(Scope::Once));
    assert_eq!(s("session"), Ok(Scope::Session));
    assert_eq!(s("15m"), Ok(Scope::Window(Duration::from_secs(900))));
    assert!(s("forever").is_err());
}
