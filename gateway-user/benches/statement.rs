//! What the gateway adds to each PostgreSQL statement before it is forwarded: parsing with
//! sqlparser, the rule verdict, and the audit event; and what masking costs per value.
//! `cargo bench -p gateway-user --bench statement`; figures in bench/RESULTS.md.

use std::{hint::black_box, path::Path};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_user::{
    audit::{AuditStore, StatementEvent, now_ms},
    policy::Policy,
    protocol::postgres::{judge::judge, mask::Masker, rules::Who},
};

fn bench(c: &mut Criterion) {
    // The shipped example: seven rules, one of them a mask rule.
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/billing-bot.toml");
    let policy = Policy::parse(&file, &std::fs::read_to_string(&file).unwrap()).unwrap();
    let target = policy.targets[0].postgres.clone().unwrap();
    let who = Who::default();
    let select = "SELECT id, customer_id, amount FROM invoices WHERE customer_id = 42";
    let pgbench = "UPDATE pgbench_accounts SET abalance = abalance + -4321 WHERE aid = 77123;";

    c.bench_function("sqlparser alone: simple SELECT", |b| {
        b.iter(|| {
            sqlparser::parser::Parser::parse_sql(
                &sqlparser::dialect::PostgreSqlDialect {},
                black_box(select),
            )
        })
    });
    c.bench_function("judge: simple SELECT (parse + decide)", |b| {
        b.iter(|| judge("bench", &target, &who, black_box(select)))
    });
    c.bench_function("judge: pgbench UPDATE (parse + decide)", |b| {
        b.iter(|| judge("bench", &target, &who, black_box(pgbench)))
    });

    let dir = tempfile::tempdir().unwrap();
    let store = AuditStore::open(dir.path()).unwrap();
    let mut seq = 0;
    c.bench_function("judge + audit event: simple SELECT", |b| {
        b.iter(|| {
            let j = judge("bench", &target, &who, black_box(select));
            seq += 1;
            let (kind, sql) = &j.statements[0];
            store
                .put_event(&StatementEvent {
                    session_id: 1,
                    seq,
                    at_ms: now_ms(),
                    step: "query".into(),
                    kind: kind.clone(),
                    sql: sql.clone(),
                    verdict: j.verdict().into(),
                    rule: j.rule.clone(),
                    duration_us: 0,
                    rows: Some(1),
                    masked: 0,
                    error: None,
                })
                .unwrap();
        })
    });

    let event = StatementEvent {
        session_id: 2,
        seq: 0,
        at_ms: now_ms(),
        step: "query".into(),
        kind: "select".into(),
        sql: select.into(),
        verdict: "allow".into(),
        rule: "app".into(),
        duration_us: 0,
        rows: Some(1),
        masked: 0,
        error: None,
    };
    c.bench_function("audit event alone", |b| {
        b.iter(|| {
            seq += 1;
            store
                .put_event(&StatementEvent {
                    seq,
                    ..event.clone()
                })
                .unwrap()
        })
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
