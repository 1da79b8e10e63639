//! From SQL text to what the session does with it: parse (PostgreSQL's own parser), the pure
//! rule verdict, the checks no rule can lift (pinned settings, SQL text, masking provenance),
//! the masker the verdict calls for, the refusal the agent will read, and the audit's text.

use std::sync::Arc;

use crate::{audit::ApprovalRecord, session::hold::HoldTerms, sql::SqlKind};

use super::{
    codec::backend::ErrorFields,
    config::{PostgresTarget, Unparsed},
    mask::Masker,
    rules::{Action, Who, decide_all},
    sql::{SQL_TEXT_FUNCTIONS, SessionOp, StatementInfo, classify},
};

/// SQLSTATE for a policy refusal: insufficient_privilege, what PostgreSQL itself reports
/// when a role may not do something.
pub const POLICY_DENIED: &str = "42501";

/// The longest statement the gateway judges. Longer ones are refused before parsing: the
/// parser's memory grows with the text (about a hundred bytes per byte for deep trees).
pub const MAX_STATEMENT: usize = 1 << 20;

/// The judgement of one Query or Parse, kept for each Execute of a prepared statement.
#[derive(Debug, Clone)]
pub struct Judged {
    pub action: Action,
    pub rule: String,
    /// What the agent reads instead of a result, when refused.
    pub refusal: Option<ErrorFields>,
    pub masker: Option<Arc<Masker>>,
    /// One entry per statement: its kind and its SQL as the audit keeps it.
    pub statements: Vec<(SqlKind, String)>,
    /// Whether every text of this one's shape gets this judgement and this audit text: true
    /// unless the audit keeps literals or a statement's description read one.
    pub by_shape: bool,
    /// For a hold: how long to wait and how far an approval reaches.
    pub hold: Option<HoldTerms>,
    /// Once a hold is decided: the decision, for the audit.
    pub approval: Option<ApprovalRecord>,
    /// What the (single) statement does to the session's prepared statements and cursors.
    pub session: Option<SessionOp>,
}

impl Judged {
    /// A refusal the gateway decides without a rule (the rule name says why).
    pub fn refused(rule: &str, kind: SqlKind, text: String, error: ErrorFields) -> Judged {
        Judged {
            action: Action::Deny,
            rule: rule.into(),
            refusal: Some(error),
            masker: None,
            statements: vec![(kind, text)],
            by_shape: false,
            hold: None,
            approval: None,
            session: None,
        }
    }
}

fn denied(policy: &str, what: impl std::fmt::Display) -> ErrorFields {
    ErrorFields::error(POLICY_DENIED, format!("gatewayd: policy {policy} {what}"))
}

/// A check no rule can lift, with the refusal the agent reads.
fn forced_refusal(
    policy: &str,
    target: &PostgresTarget,
    stmts: &[StatementInfo],
) -> Option<(&'static str, ErrorFields)> {
    if let Some(s) = stmts
        .iter()
        .flat_map(|s| &s.settings)
        .find(|s| target.pins(s))
    {
        let name = if s == "*" {
            "a setting named by an expression"
        } else {
            s
        };
        return Some((
            "pinned-setting",
            denied(policy, format_args!("refuses changing {name}")).with_detail(
                "The gateway pins how the server reads statements (string syntax, encoding, \
                 search_path) and who the session is (role); it judges statements under them.",
            ),
        ));
    }
    if let Some(why) = stmts.iter().find_map(|s| s.unsupported) {
        return Some((
            "unsupported",
            denied(
                policy,
                format_args!("refuses a form it does not follow: {why}"),
            ),
        ));
    }
    if stmts.iter().any(|s| s.runs_sql_text) {
        return Some((
            "sql-text",
            denied(
                policy,
                "refuses running SQL given as text (DO, functions that run it)",
            )
            .with_detail(format!(
                "What runs inside is out of the gateway's sight: DO blocks and {}.",
                SQL_TEXT_FUNCTIONS.join(", ")
            )),
        ));
    }
    if stmts.len() > 1 && stmts.iter().any(|s| s.session.is_some()) {
        return Some((
            "one-statement",
            denied(
                policy,
                "refuses prepared statements and cursors in a message with other statements",
            )
            .with_hint("Send PREPARE, EXECUTE, DECLARE, FETCH and CLOSE on their own."),
        ));
    }
    None
}

/// Masking narrows what leaves; it cannot follow data through an expression, a filter, a
/// copy, a whole row, renamed columns, a set operation or a statistics view, nor rewrite
/// COPY's rows. A statement that would move masked data any of those ways is refused.
fn unmaskable(stmts: &[StatementInfo], masker: &Masker) -> Option<String> {
    for s in stmts {
        if s.copy_out {
            return Some("COPY ... TO sends rows the gateway does not mask".into());
        }
        if !masker.has_columns() {
            continue;
        }
        if let Some(c) = s.columns.elsewhere.iter().find(|c| masker.masks_column(c)) {
            return Some(format!(
                "masked column {c} is used other than as a plain output column"
            ));
        }
        let c = &s.columns;
        let why = if c.whole_rows {
            "a whole-row value or a star inside an expression or subquery"
        } else if c.renamed {
            "columns renamed by an alias list"
        } else if c.set_operation {
            "a set operation (UNION, INTERSECT, EXCEPT)"
        } else if c.positional {
            "ORDER BY, GROUP BY or DISTINCT ON an output position"
        } else if c.natural_join {
            "a NATURAL JOIN (it compares columns it does not name)"
        } else if s.reads_everything {
            "values of relations it does not name (statistics views, relation-by-name functions)"
        } else {
            continue;
        };
        return Some(format!("a statement reading masked data through {why}"));
    }
    None
}

pub fn judge(policy: &str, target: &PostgresTarget, who: &Who, sql: &str) -> Judged {
    if sql.len() > MAX_STATEMENT {
        return Judged::refused(
            "statement-size",
            SqlKind::UNPARSED,
            format!("({} bytes, not kept)", sql.len()),
            denied(
                policy,
                format_args!("refuses a statement over {MAX_STATEMENT} bytes"),
            ),
        );
    }
    let stmts = match classify(sql, &target.search_path) {
        Ok(s) => s,
        Err(e) => {
            // The text is not a statement the server would run either (or not one the
            // gateway can read): audited by its length only, since it may hold anything.
            let text = if target.audit_literals {
                sql.to_owned()
            } else {
                format!("({} bytes, not kept)", sql.len())
            };
            return match target.unparsed {
                Unparsed::Allow => Judged {
                    action: Action::Allow,
                    rule: "unparsed".into(),
                    refusal: None,
                    masker: None,
                    statements: vec![(SqlKind::UNPARSED, text)],
                    by_shape: false,
                    hold: None,
                    approval: None,
                    session: None,
                },
                Unparsed::Deny => Judged::refused(
                    "unparsed",
                    SqlKind::UNPARSED,
                    text,
                    denied(policy, "refuses a statement it cannot parse")
                        .with_detail(e.to_string())
                        .with_hint("The gateway does not guess what an unparsed statement does."),
                ),
            };
        }
    };
    let mut verdict = decide_all(&target.rules, who, &stmts);
    let masker = (!verdict.masks.is_empty()).then(|| {
        let rules: Vec<_> = verdict.masks.iter().map(|&i| &target.rules[i]).collect();
        let mut m = Masker::from_rules(&rules);
        // A masked column returned under another name stays masked under that name.
        let aliases: Vec<String> = stmts
            .iter()
            .flat_map(|s| &s.columns.outputs)
            .filter(|o| o.column.as_deref().is_some_and(|c| m.masks_column(c)))
            .filter_map(|o| o.alias.clone())
            .collect();
        m.add_names(aliases);
        m
    });
    let mut refusal = None;
    if let Some((rule, error)) = forced_refusal(policy, target, &stmts) {
        verdict.rule = rule.into();
        refusal = Some(error);
    } else if matches!(verdict.action, Action::Mask | Action::Hold)
        && let Some(why) = masker.as_ref().and_then(|m| unmaskable(&stmts, m))
    {
        verdict.rule = "mask-provenance".into();
        refusal = Some(
            denied(policy, "refuses what masking cannot cover").with_detail(format!(
                "{why}; ask for the column itself, or drop it from the statement."
            )),
        );
    }
    if refusal.is_some() {
        verdict.action = Action::Deny;
    }
    let by_shape = !target.audit_literals && !stmts.iter().any(|s| s.reads_literals);
    let mut statements: Vec<(SqlKind, String)> = stmts
        .iter()
        .map(|s| {
            let text = if target.audit_literals {
                s.text.clone()
            } else {
                s.redacted.clone()
            };
            (s.kind.into(), text)
        })
        .collect();
    if statements.is_empty() {
        // An empty message (blanks, comments, `;`) runs nothing, but it went upstream: the
        // audit still says so.
        statements.push((SqlKind::EMPTY, String::new()));
    }
    let refusal = refusal.or(match verdict.action {
        Action::Deny => Some(denied(
            policy,
            format_args!("denies this statement (rule {})", verdict.rule),
        )),
        Action::Hold => Some(
            denied(
                policy,
                format_args!("holds this statement for approval (rule {})", verdict.rule),
            )
            .with_detail("It was not run: no approval was given."),
        ),
        Action::Allow | Action::Mask => None,
    });
    let hold = (verdict.action == Action::Hold).then(|| {
        let rule = target.rules.iter().find(|r| r.name == verdict.rule);
        HoldTerms::of_rule(
            rule.and_then(|r| r.timeout_secs),
            rule.and_then(|r| r.approval),
        )
    });
    let masker = masker
        .filter(|_| matches!(verdict.action, Action::Mask | Action::Hold))
        .map(Arc::new);
    let session = match stmts.as_slice() {
        [one] => one.session.clone(),
        _ => None,
    };
    Judged {
        action: verdict.action,
        rule: verdict.rule,
        refusal,
        masker,
        statements,
        by_shape,
        hold,
        approval: None,
        session,
    }
}
