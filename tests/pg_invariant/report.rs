//! The report the end-to-end test prints: the run in numbers, what the agent saw of denied
//! data, the state of the database afterwards and every invariant violation.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    time::Duration,
};

use gateway_tests::PgServer;
use serde_json::Value;

use crate::{agent::Sent, checks::Totals, corpus::Case};

/// What the report is made of.
pub(crate) struct Report<'a> {
    pub(crate) seed: u64,
    /// Generated messages asked for.
    pub(crate) count: usize,
    pub(crate) corpus_cases: usize,
    pub(crate) cases: &'a HashMap<usize, Case>,
    pub(crate) elapsed: Duration,
    pub(crate) alive: bool,
    pub(crate) sent: &'a [Sent],
    pub(crate) conns: u64,
    pub(crate) audit: &'a HashMap<u64, Vec<Value>>,
    pub(crate) totals: &'a Totals,
    pub(crate) violations: &'a [String],
    pub(crate) label: &'a dyn Fn(&Sent) -> String,
}

impl Report<'_> {
    /// The report's text; what the tables hold afterwards is asked of `pg`.
    pub(crate) fn write(&self, pg: &PgServer) -> String {
        let Report {
            seed,
            count,
            corpus_cases,
            cases,
            elapsed,
            alive,
            sent,
            conns,
            audit,
            totals,
            violations: v,
            label,
        } = *self;
        let Totals {
            logged: logged_total,
            stand_ins: stand_ins_total,
            statement_findings,
        } = *totals;
        let of = |o: &str| cases_with(sent, o);
        let case_count = sent.iter().filter(|s| s.role == "case").count();
        let mut report = String::new();
        let _ = writeln!(
            report,
            "pg_invariant: seed {seed} ({seed:#x}), {} cases ({corpus_cases} corpus, {count} generated, {} deep/healthy) in {:.1}s; gatewayd {}",
            cases.len(),
            cases.len() - corpus_cases - count,
            elapsed.as_secs_f64(),
            if alive { "alive" } else { "DIED" }
        );
        let _ = writeln!(
            report,
            "  messages sent {} (cases {case_count}: answered {}, refused {}, closed {}, timeout {}, not sent {}), connections {conns}",
            sent.iter().filter(|s| s.role != "login").count(),
            of("answered"),
            of("refused"),
            of("closed"),
            of("timeout"),
            of("not_sent"),
        );
        let _ = writeln!(
            report,
            "  server log: {logged_total} statements from the agent's backends, {stand_ins_total} stand-ins failed; audit events {}",
            audit.values().map(Vec::len).sum::<usize>()
        );
        let logins: Vec<String> = sent
            .iter()
            .filter(|s| s.role == "login")
            .map(|s| format!("conn {:?}: {:?}", s.conn, s.errors))
            .collect();
        if !logins.is_empty() {
            let _ = writeln!(report, "  logins refused: {logins:?}");
        }
        let mut by_class: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for s in sent.iter().filter(|s| s.role == "case") {
            let l = &cases[&s.case.unwrap()].label;
            let class = l.split('/').next().unwrap_or("").to_owned();
            let e = by_class.entry(class).or_default();
            match s.outcome.as_str() {
                "answered" => e.0 += 1,
                "refused" => e.1 += 1,
                _ => e.2 += 1,
            }
        }
        for (class, (a, r, o)) in &by_class {
            let _ = writeln!(
                report,
                "  {class:14} allowed {a:4}  refused {r:4}  other {o:3}"
            );
        }
        // Not asserted (the judge's verdicts are not this test's business), but worth reading:
        // denied data that reached the agent.
        for s in sent.iter().filter(|s| s.watched) {
            let _ = writeln!(
                report,
                "  finding: the canary reached the agent: {}",
                label(s)
            );
        }
        let payouts = pg.app_sql("SELECT count(*) FROM payouts");
        let tables = pg.app_sql(
            "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE relkind = 'r' AND nspname IN ('public', 'secret_schema')",
        );
        let _ = writeln!(
            report,
            "  afterwards: payouts rows {} (3 at the start), tables {}",
            payouts.trim(),
            tables.trim()
        );
        if std::env::var_os("PG_INVARIANT_VERBOSE").is_some() {
            for s in sent.iter().filter(|s| s.role == "case") {
                let _ = writeln!(
                    report,
                    "    {:9} {} {:?} {:?}",
                    s.outcome,
                    label(s),
                    s.tags,
                    s.errors
                        .iter()
                        .map(|e| e["message"].clone())
                        .collect::<Vec<_>>()
                );
            }
        }
        let _ = writeln!(
            report,
            "  invariant violations: {} ({statement_findings} where the server ran statements the gateway did not judge)",
            v.len()
        );
        for line in v {
            let _ = writeln!(report, "    - {line}");
        }
        report
    }
}

/// How many of the cases in `sent` ended with `outcome`.
pub(crate) fn cases_with(sent: &[Sent], outcome: &str) -> usize {
    sent.iter()
        .filter(|s| s.role == "case" && s.outcome == outcome)
        .count()
}
