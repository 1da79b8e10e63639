//! The deep messages: statements nested or chained thousands of terms deep, then a healthy
//! session that shows the daemon served on after them.

use crate::corpus::{Case, Session};

/// Terms of the deeply nested messages (`PG_INVARIANT_DEPTH` changes it).
pub(crate) const DEEP: usize = 25_000;

/// Messages nested or chained `DEEP` levels deep; then a healthy session.
pub(crate) fn deep(depth: usize, next_id: &mut usize) -> Vec<Session> {
    let or_chain = (0..depth)
        .map(|i| format!("id = {i}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let texts = [
        (
            "or-chain",
            format!("SELECT count(*) FROM invoices WHERE {or_chain}"),
        ),
        (
            "or-chain-then-drop",
            format!("SELECT count(*) FROM invoices WHERE {or_chain}; DROP TABLE x"),
        ),
        (
            "concat-chain",
            format!("SELECT 'a'{}", " || 'a'".repeat(depth - 1)),
        ),
        ("cast-chain", format!("SELECT 1{}", "::int".repeat(depth))),
        (
            "parens",
            format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth)),
        ),
        (
            "parens-then-drop",
            format!(
                "SELECT {}1{}; DROP TABLE x",
                "(".repeat(depth),
                ")".repeat(depth)
            ),
        ),
        ("not-chain", format!("SELECT {}true", "NOT ".repeat(depth))),
        (
            "subquery-nest",
            format!(
                "SELECT {}1{}",
                "(SELECT ".repeat(depth / 10),
                ")".repeat(depth / 10)
            ),
        ),
    ];
    let mut cases = Vec::new();
    for (label, text) in texts {
        *next_id += 1;
        cases.push(Case {
            id: *next_id,
            label: format!("deep/{label}"),
            bytes: text.into_bytes(),
        });
    }
    *next_id += 1;
    let healthy = Case {
        id: *next_id,
        label: "deep/healthy-after".into(),
        bytes: b"SELECT 'healthy'".to_vec(),
    };
    vec![
        Session {
            name: "deep".into(),
            params: vec![],
            cases,
        },
        Session {
            name: "healthy".into(),
            params: vec![],
            cases: vec![healthy],
        },
    ]
}
