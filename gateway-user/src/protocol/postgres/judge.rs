//! From SQL text to what the session does with it: parse, the pure rule verdict, the masker
//! the verdict calls for, the refusal the agent will read, and the text the audit keeps.

use std::{sync::Arc, time::Duration};

use crate::{approval::Scope, audit::ApprovalRecord};

use super::{
    codec::backend::ErrorFields,
    config::{PostgresTarget, Unparsed},
    mask::Masker,
    rules::{Action, DEFAULT_HOLD_SECS, Who, decide_all},
    sql::{SQL_TEXT_FUNCTIONS, STRING_SYNTAX_SETTING, classify},
};

/// SQLSTATE for a policy refusal: insufficient_privilege, what PostgreSQL itself reports
/// when a role may not do something.
pub const POLICY_DENIED: &str = "42501";

/// The judgement of one Query or Parse, kept for each Execute of a prepared statement.
#[derive(Debug, Clone)]
pub struct Judged {
    pub action: Action,
    pub rule: String,
    /// What the agent reads instead of a result, when refused.
    pub refusal: Option<ErrorFields>,
    pub masker: Option<Arc<Masker>>,
    /// One entry per statement: its kind and its SQL as the audit keeps it.
    pub statements: Vec<(String, String)>,
    /// Whether every text of this one's shape gets this judgement and this audit text: true
    /// unless the audit keeps literals or a statement's description read one.
    pub by_shape: bool,
    /// For a hold: how long to wait and how far an approval reaches.
    pub hold: Option<HoldTerms>,
    /// Once a hold is decided: the decision, for the audit.
    pub approval: Option<ApprovalRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HoldTerms {
    pub timeout: Duration,
    pub scope: Scope,
}

impl Judged {
    pub fn verdict(&self) -> &'static str {
        match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Mask => "mask",
            Action::Hold => "hold",
        }
    }
}

pub fn judge(policy: &str, target: &PostgresTarget, who: &Who, sql: &str) -> Judged {
    let stmts = match classify(sql) {
        Ok(s) => s,
        Err(e) => {
            let statements = vec![("unparsed".to_owned(), sql.to_owned())];
            return match target.unparsed {
                Unparsed::Allow => Judged {
                    action: Action::Allow,
                    rule: "unparsed".into(),
                    refusal: None,
                    masker: None,
                    statements,
                    by_shape: false,
                    hold: None,
                    approval: None,
                },
                Unparsed::Deny => Judged {
                    action: Action::Deny,
                    rule: "unparsed".into(),
                    refusal: Some(
                        ErrorFields::error(
                            POLICY_DENIED,
                            format!(
                                "gatewayd: policy {policy} refuses a statement it cannot parse"
                            ),
                        )
                        .with_detail(e.to_string())
                        .with_hint("The gateway does not guess what an unparsed statement does."),
                    ),
                    masker: None,
                    statements,
                    by_shape: false,
                    hold: None,
                    approval: None,
                },
            };
        }
    };
    let mut verdict = decide_all(&target.rules, who, &stmts);
    let string_syntax = stmts.iter().any(|s| s.sets_string_syntax);
    let sql_text = stmts.iter().any(|s| s.runs_sql_text);
    if string_syntax {
        verdict.action = Action::Deny;
        verdict.rule = "string-syntax".into();
    } else if sql_text {
        verdict.action = Action::Deny;
        verdict.rule = "sql-text".into();
    }
    let by_shape = !target.audit_literals && !stmts.iter().any(|s| s.reads_literals);
    let statements = stmts
        .iter()
        .map(|s| {
            let kind = s.kind.as_str().to_owned();
            let text = if target.audit_literals {
                s.text.clone()
            } else {
                s.redacted.clone()
            };
            (kind, text)
        })
        .collect();
    let refusal = match verdict.action {
        Action::Deny if string_syntax => Some(
            ErrorFields::error(
                POLICY_DENIED,
                format!("gatewayd: policy {policy} refuses changing {STRING_SYNTAX_SETTING}"),
            )
            .with_detail(
                "The gateway reads string literals as PostgreSQL does only while it is on.",
            ),
        ),
        Action::Deny if sql_text => Some(
            ErrorFields::error(
                POLICY_DENIED,
                format!("gatewayd: policy {policy} refuses functions that run SQL text"),
            )
            .with_detail(format!(
                "The statement inside is out of the gateway's sight: {}.",
                SQL_TEXT_FUNCTIONS.join(", ")
            )),
        ),
        Action::Deny => Some(ErrorFields::error(
            POLICY_DENIED,
            format!(
                "gatewayd: policy {policy} denies this statement (rule {})",
                verdict.rule
            ),
        )),
        Action::Hold => Some(
            ErrorFields::error(
                POLICY_DENIED,
                format!(
                    "gatewayd: policy {policy} holds this statement for approval (rule {})",
                    verdict.rule
                ),
            )
            .with_detail("It was not run: no approval was given."),
        ),
        Action::Allow | Action::Mask => None,
    };
    let hold = (verdict.action == Action::Hold).then(|| {
        let rule = target.rules.iter().find(|r| r.name == verdict.rule);
        HoldTerms {
            timeout: Duration::from_secs(
                rule.and_then(|r| r.timeout_secs)
                    .unwrap_or(DEFAULT_HOLD_SECS),
            ),
            scope: rule.and_then(|r| r.approval).unwrap_or_default(),
        }
    });
    let masker = (verdict.action == Action::Mask).then(|| {
        let rules: Vec<_> = verdict.masks.iter().map(|&i| &target.rules[i]).collect();
        Arc::new(Masker::from_rules(&rules))
    });
    Judged {
        action: verdict.action,
        rule: verdict.rule,
        refusal,
        masker,
        statements,
        by_shape,
        hold,
        approval: None,
    }
}
