//! What the gateway adds to each PostgreSQL statement before it is forwarded: parsing with
//! PostgreSQL's own parser (libpg_query), the rule verdict, and the audit event; and what
//! masking costs per value.
//! `cargo bench -p gateway-user --bench statement`; figures in bench/RESULTS.md.

use std::{hint::black_box, path::Path};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_user::{
    audit::{AuditStore, Detail, Event, SqlDetail, SqlStep, now_ms},
    policy::Policy,
    protocol::TargetKind,
    protocol::postgres::{
        judge::{Judged, judge},
        mask::Masker,
        rules::Who,
        shape::Shape,
    },
    rules::Action,
    sql::StatementKind,
};

fn bench(c: &mut Criterion) {
    // The shipped example: seven rules, one of them a mask rule.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/billing-bot.toml");
    let policy = Policy::parse(&file, &std::fs::read_to_string(&file).unwrap()).unwrap();
    let TargetKind::Postgres(target) = policy.targets[0].kind.clone() else {
        panic!("the example's first target is PostgreSQL")
    };
    let who = Who::default();
    let select = "SELECT id, customer_id, amount FROM invoices WHERE customer_id = 42";
    let pgbench = "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77123;";

    c.bench_function("pg_query scan alone: simple SELECT", |b| {
        b.iter(|| pg_query::scan(black_box(select)))
    });
    c.bench_function("judge: simple SELECT (parse + decide)", |b| {
        b.iter(|| judge("bench", &target, &who, black_box(select)))
    });
    c.bench_function("judge: pgbench UPDATE (parse + decide)", |b| {
        b.iter(|| judge("bench", &target, &who, black_box(pgbench)))
    });

    // What a session does for a statement it has judged before with other literals (pgbench's
    // `WHERE aid = 77123` with a new number each time): the shape, looked up.
    let mut cache = std::collections::HashMap::new();
    cache.insert(
        Shape::of(select).unwrap(),
        std::sync::Arc::new(judge("bench", &target, &who, select)),
    );
    cache.insert(
        Shape::of(pgbench).unwrap(),
        std::sync::Arc::new(judge("bench", &target, &who, pgbench)),
    );
    c.bench_function("judge by shape (cache hit): simple SELECT", |b| {
        b.iter(|| {
            cache
                .get(&Shape::of(black_box(select)).unwrap())
                .map(|j| j.action)
        })
    });
    c.bench_function("judge by shape (cache hit): pgbench UPDATE", |b| {
        b.iter(|| {
            cache
                .get(&Shape::of(black_box(pgbench)).unwrap())
                .map(|j| j.action)
        })
    });
    let odd = "SELECT id /* hint */ FROM invoices WHERE note = E'x' AND amount > 1.5";
    cache.insert(
        Shape::of(odd).unwrap(),
        std::sync::Arc::new(judge("bench", &target, &who, odd)),
    );
    c.bench_function(
        "judge by shape (cache hit, server's lexer): comment, E'', 1.5",
        |b| {
            b.iter(|| {
                cache
                    .get(&Shape::of(black_box(odd)).unwrap())
                    .map(|j| j.action)
            })
        },
    );

    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let event = |session_id, seq, sql: &str| Event {
        session_id,
        seq,
        at_ms: now_ms(),
        verdict: Action::Allow,
        rule: "app".into(),
        duration_us: 0,
        masked: 0,
        error: None,
        approval: None,
        detail: Detail::Sql(SqlDetail {
            step: SqlStep::Query,
            kind: StatementKind::Select.into(),
            sql: sql.into(),
            rows: Some(1),
        }),
    };
    // Appends `iters` events from 8 sessions, then waits until the writer thread has them in
    // sled: the time per event includes the writer's work (chaining too), not only the
    // hand-over. The sessions are opened first, as the daemon does, so their events chain.
    for id in 1..=8 {
        store.put(&open_session(id)).unwrap();
    }
    let mut seq = 0;
    c.bench_function("audit event (append, written by the writer)", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for i in 0..iters {
                seq += 1;
                store.append(event(1 + i % 8, seq, select)).unwrap();
            }
            rt.block_on(store.settle(false)).unwrap();
            start.elapsed()
        })
    });
    // A statement's whole cost: judged (parsed, or found by shape), then its event appended.
    let mut judged_and_audited = |name: &str, judged: &dyn Fn() -> std::sync::Arc<Judged>| {
        c.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                for i in 0..iters {
                    let j = judged();
                    seq += 1;
                    let (kind, sql) = &j.statements[0];
                    let mut e = Event {
                        verdict: j.action,
                        rule: j.rule.clone(),
                        ..event(1 + i % 8, seq, sql)
                    };
                    let Detail::Sql(d) = &mut e.detail else {
                        unreachable!("an SQL event")
                    };
                    d.kind = *kind;
                    store.append(e).unwrap();
                }
                rt.block_on(store.settle(false)).unwrap();
                start.elapsed()
            })
        });
    };
    judged_and_audited("judge + audit event: simple SELECT", &|| {
        std::sync::Arc::new(judge("bench", &target, &who, black_box(select)))
    });
    judged_and_audited("judge by shape + audit event: simple SELECT", &|| {
        cache
            .get(&Shape::of(black_box(select)).unwrap())
            .unwrap()
            .clone()
    });

    let rules: Vec<_> = target
        .rules
        .iter()
        .filter(|r| r.name == "customer-pii")
        .collect();
    let masker = Masker::from_rules(&rules);
    c.bench_function("mask: text value, nothing to mask", |b| {
        b.iter(|| {
            masker.mask_text(
                black_box("note"),
                black_box("paid in full, thanks for your business"),
            )
        })
    });
    c.bench_function("mask: text value with a card number", |b| {
        b.iter(|| {
            masker.mask_text(
                black_box("note"),
                black_box("card 4111 1111 1111 1111 on file"),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

fn open_session(id: u64) -> gateway_user::audit::SessionRecord {
    gateway_user::audit::SessionRecord {
        id,
        started_at_ms: now_ms(),
        ended_at_ms: None,
        agent: None,
        peer: "127.0.0.1:40000".into(),
        policy: Some("bench".into()),
        destination: Some("127.0.0.1:5432".into()),
        target: Some("db".into()),
        protocol: Some(gateway_user::policy::Protocol::Postgres),
        verdict: gateway_user::audit::VerdictKind::Allow,
        rule: "targets.db".into(),
        bytes_up: 0,
        bytes_down: 0,
        end: None,
        token: None,
    }
}
