//! The per-statement rules of a `postgres` target: what each condition of a rule means for a
//! classified statement. Which rule decides, and the precedence that fails closed whatever
//! the rules' order, is the core's ([`crate::rules`]).

use serde::Deserialize;

use crate::detect::Detector;
use crate::protocol::postgres::sql::{StatementInfo, StatementKind};
pub use crate::rules::{
    Action, DEFAULT_HOLD_SECS, DEFAULT_RULE, EMPTY_RULE, Verdict as StatementVerdict, Who, decide,
    decide_all,
};
use crate::rules::{Audience, Glob, Rule};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlRule {
    pub name: String,
    pub action: Action,
    #[serde(default)]
    pub kinds: Vec<StatementKind>,
    #[serde(default)]
    pub tables: Vec<Glob>,
    #[serde(default)]
    pub reads: Vec<Glob>,
    #[serde(default)]
    pub writes: Vec<Glob>,
    #[serde(default)]
    pub functions: Vec<Glob>,
    pub without_where: Option<bool>,
    pub copy_program: Option<bool>,
    /// The agent's verified token: its subject, or any of its groups, must match. A rule
    /// with these never matches an agent that presented no token.
    #[serde(default)]
    pub subjects: Vec<Glob>,
    #[serde(default)]
    pub groups: Vec<Glob>,
    #[serde(default)]
    pub columns: Vec<Glob>,
    #[serde(default)]
    pub detectors: Vec<Detector>,
    /// How long a hold waits for a decision before it counts as a deny (default
    /// [`DEFAULT_HOLD_SECS`]); carried for the gateway, not interpreted here.
    pub timeout_secs: Option<u64>,
    /// How far one approval of a hold reaches: `once` (default), `session`, or a duration
    /// such as `15m` (the same command from the same cgroup to the same target).
    pub approval: Option<crate::approval::Scope>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("a rule has an empty name")]
    EmptyName,
    #[error("rule {0:?} is defined more than once")]
    DuplicateName(String),
    #[error("mask rule {0:?} needs `columns` or `detectors`")]
    MaskWithoutTargets(String),
    #[error("rule {0:?} sets `columns` or `detectors` but is not a mask rule")]
    MaskFieldsOnNonMask(String),
}

impl SqlRule {
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.name.trim().is_empty() {
            return Err(RuleError::EmptyName);
        }
        let has_mask_fields = !self.columns.is_empty() || !self.detectors.is_empty();
        match (self.action, has_mask_fields) {
            (Action::Mask, false) => Err(RuleError::MaskWithoutTargets(self.name.clone())),
            (Action::Allow | Action::Deny | Action::Hold, true) => {
                Err(RuleError::MaskFieldsOnNonMask(self.name.clone()))
            }
            _ => Ok(()),
        }
    }

    /// True when every condition the rule sets holds; an unset condition (empty list,
    /// `None`) places no constraint.
    ///
    /// Relation conditions (`tables`, `reads`, `writes`) are read by what the rule does. A
    /// rule that refuses, holds or masks applies when ANY relation matches, so naming one
    /// sensitive table is enough to catch a statement. An `allow` grants, so it applies only
    /// when the statement touches at least one relation of that condition and EVERY one of
    /// them matches: `reads = ["public.*"]` does not let a join with `secret.keys` through.
    /// A statement that reads values of relations it does not name (statistics views,
    /// relation-by-name functions) matches every refusing condition and only an allow
    /// condition of `*`.
    fn conditions_hold(&self, stmt: &StatementInfo) -> bool {
        let grants = self.action == Action::Allow;
        let everything = stmt.reads_everything;
        let relations = |globs: &[Glob], names: &mut dyn Iterator<Item = &String>, reads: bool| {
            if globs.is_empty() {
                return true;
            }
            let hit = |n: &String| globs.iter().any(|g| g.matches_qualified(n));
            if grants {
                let star = globs.iter().any(|g| g.as_str() == "*");
                let mut any = false;
                let mut all = true;
                for n in names {
                    any = true;
                    all &= hit(n);
                }
                all && (any || (reads && everything)) && (!(reads && everything) || star)
            } else {
                let mut any = reads && everything;
                for n in names {
                    any |= hit(n);
                }
                any
            }
        };
        let any = |globs: &[Glob], names: &[String]| {
            globs.is_empty()
                || names
                    .iter()
                    .any(|n| globs.iter().any(|g| g.matches_qualified(n)))
        };
        (self.kinds.is_empty() || self.kinds.contains(&stmt.kind))
            && relations(
                &self.tables,
                &mut stmt.reads.iter().chain(&stmt.writes),
                true,
            )
            && relations(&self.reads, &mut stmt.reads.iter(), true)
            && relations(&self.writes, &mut stmt.writes.iter(), false)
            && any(&self.functions, &stmt.functions)
            && self.without_where.is_none_or(|w| w == stmt.without_where)
            && self.copy_program.is_none_or(|c| c == stmt.copy_program)
    }
}

/// Validates each rule and that names are unique (audits refer to rules by name).
pub fn validate_rules(rules: &[SqlRule]) -> Result<(), RuleError> {
    for (i, rule) in rules.iter().enumerate() {
        rule.validate()?;
        if rules[..i].iter().any(|r| r.name == rule.name) {
            return Err(RuleError::DuplicateName(rule.name.clone()));
        }
    }
    Ok(())
}

impl Rule for SqlRule {
    type Command = StatementInfo;
    fn name(&self) -> &str {
        &self.name
    }
    fn action(&self) -> Action {
        self.action
    }
    fn audience(&self) -> Audience<'_> {
        Audience {
            subjects: &self.subjects,
            groups: &self.groups,
        }
    }
    fn matches(&self, stmt: &StatementInfo) -> bool {
        self.conditions_hold(stmt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::postgres::sql::classify_default as classify;

    #[derive(Debug, Deserialize)]
    struct File {
        rules: Vec<SqlRule>,
    }

    fn parse(toml_text: &str) -> Vec<SqlRule> {
        toml::from_str::<File>(toml_text).unwrap().rules
    }

    fn stmt(sql: &str) -> StatementInfo {
        classify(sql).unwrap().remove(0)
    }

    #[test]
    fn each_condition() {
        // (rule body, sql, matches)
        #[rustfmt::skip]
        let cases = [
            ("", "SELECT 1", true),
            ("kinds = ['select']", "SELECT 1", true),
            ("kinds = ['insert', 'update']", "SELECT 1", false),
            ("tables = ['users']", "SELECT * FROM app.users", true),
            ("tables = ['users']", "DELETE FROM users WHERE id = 1", true),
            ("tables = ['app.users']", "SELECT * FROM users", false),
            ("tables = ['public.*']", "SELECT * FROM users", true),
            ("reads = ['users']", "DELETE FROM users WHERE id = 1", false),
            ("reads = ['users']", "INSERT INTO log SELECT * FROM users", true),
            ("writes = ['log']", "INSERT INTO log SELECT * FROM users", true),
            ("writes = ['users']", "INSERT INTO log SELECT * FROM users", false),
            ("functions = ['pg_read_*']", "SELECT pg_catalog.pg_read_file('x')", true),
            ("functions = ['pg_sleep']", "SELECT * FROM t", false),
            ("functions = ['dblink*']", "SELECT * FROM dblink('c', 'q') AS x(a int)", true),
            ("without_where = true", "DELETE FROM t", true),
            ("without_where = true", "DELETE FROM t WHERE id = 1", false),
            ("without_where = false", "DELETE FROM t WHERE id = 1", true),
            ("copy_program = true", "COPY t FROM PROGRAM 'x'", true),
            ("copy_program = true", "COPY t FROM STDIN", false),
            ("kinds = ['delete']\nwithout_where = true", "UPDATE t SET a = 1", false),
            ("kinds = ['update']\ntables = ['t']\nwithout_where = true", "UPDATE t SET a = 1", true),
        ];
        for (body, sql, expected) in cases {
            let rules = parse(&format!("[[rules]]\nname = 'r'\naction = 'deny'\n{body}"));
            assert_eq!(rules[0].matches(&stmt(sql)), expected, "{body} / {sql}");
        }
    }

    #[test]
    fn precedence_ignores_order() {
        let rules = parse(
            r#"
            [[rules]]
            name = "allow-all"
            action = "allow"

            [[rules]]
            name = "mask-users"
            action = "mask"
            tables = ["users"]
            columns = ["email"]

            [[rules]]
            name = "hold-deletes"
            action = "hold"
            kinds = ["delete"]
            timeout_secs = 300

            [[rules]]
            name = "mask-pii"
            action = "mask"
            reads = ["users"]
            detectors = ["email", "card"]

            [[rules]]
            name = "no-unbounded"
            action = "deny"
            without_where = true
            "#,
        );
        validate_rules(&rules).unwrap();
        // (sql, action, rule, masks)
        #[rustfmt::skip]
        let cases: &[(&str, Action, &str, &[usize])] = &[
            ("SELECT 1", Action::Allow, "allow-all", &[]),
            ("SELECT * FROM users", Action::Mask, "mask-users", &[1, 3]),
            ("DELETE FROM t WHERE id = 1", Action::Hold, "hold-deletes", &[]),
            ("DELETE FROM users WHERE id = 1 RETURNING *", Action::Hold, "hold-deletes", &[1, 3]),
            ("DELETE FROM t", Action::Deny, "no-unbounded", &[]),
            ("UPDATE users SET a = 1", Action::Deny, "no-unbounded", &[1]),
        ];
        for (sql, action, rule, masks) in cases {
            let v = decide(&rules, &Who::default(), &stmt(sql));
            assert_eq!(
                (v.action, v.rule.as_str(), v.masks.as_slice()),
                (*action, *rule, *masks),
                "{sql}"
            );
        }
        let mut reversed = rules.clone();
        reversed.reverse();
        // Order only changes which rule of the winning action is named.
        for (sql, action, _, masks) in cases {
            let v = decide(&reversed, &Who::default(), &stmt(sql));
            assert_eq!(v.action, *action, "reversed: {sql}");
            assert_eq!(v.masks.len(), masks.len(), "reversed: {sql}");
        }
    }

    #[test]
    fn first_rule_of_winning_action_names_it() {
        let rules = parse(
            r#"
            [[rules]]
            name = "deny-a"
            action = "deny"
            tables = ["a"]

            [[rules]]
            name = "deny-any"
            action = "deny"
            "#,
        );
        assert_eq!(
            decide(&rules, &Who::default(), &stmt("SELECT * FROM a")).rule,
            "deny-a"
        );
        assert_eq!(
            decide(&rules, &Who::default(), &stmt("SELECT * FROM b")).rule,
            "deny-any"
        );
    }

    #[test]
    fn default_is_deny() {
        let none: Vec<SqlRule> = Vec::new();
        let v = decide(&none, &Who::default(), &stmt("SELECT 1"));
        assert_eq!((v.action, v.rule.as_str()), (Action::Deny, DEFAULT_RULE));
        let rules = parse("[[rules]]\nname = 'sel'\naction = 'allow'\nkinds = ['select']");
        let v = decide(&rules, &Who::default(), &stmt("INSERT INTO t VALUES (1)"));
        assert_eq!((v.action, v.rule.as_str()), (Action::Deny, DEFAULT_RULE));
    }

    #[test]
    fn multi_statement() {
        let rules = parse(
            r#"
            [[rules]]
            name = "reads"
            action = "allow"
            kinds = ["select", "transaction"]

            [[rules]]
            name = "mask-a"
            action = "mask"
            tables = ["a"]
            columns = ["x"]

            [[rules]]
            name = "mask-b"
            action = "mask"
            tables = ["b"]
            detectors = ["email"]

            [[rules]]
            name = "hold-writes"
            action = "hold"
            kinds = ["insert"]
            "#,
        );
        // (sql, action, rule, masks)
        #[rustfmt::skip]
        let cases: &[(&str, Action, &str, &[usize])] = &[
            ("", Action::Allow, EMPTY_RULE, &[]),
            ("BEGIN; SELECT 1; COMMIT", Action::Allow, "reads", &[]),
            ("SELECT * FROM b; SELECT * FROM a", Action::Mask, "mask-b", &[1, 2]),
            ("SELECT * FROM a; INSERT INTO t VALUES (1)", Action::Hold, "hold-writes", &[1]),
            ("SELECT 1; DROP TABLE t; INSERT INTO t VALUES (1)", Action::Deny, DEFAULT_RULE, &[]),
        ];
        for (sql, action, rule, masks) in cases {
            let v = decide_all(&rules, &Who::default(), &classify(sql).unwrap());
            assert_eq!(
                (v.action, v.rule.as_str(), v.masks.as_slice()),
                (*action, *rule, *masks),
                "{sql}"
            );
        }
    }

    #[test]
    fn validation() {
        #[rustfmt::skip]
        let cases = [
            ("name = ''\naction = 'allow'", Some(RuleError::EmptyName)),
            ("name = 'm'\naction = 'mask'", Some(RuleError::MaskWithoutTargets("m".into()))),
            ("name = 'm'\naction = 'mask'\ncolumns = ['ssn']", None),
            ("name = 'm'\naction = 'mask'\ndetectors = ['jwt']", None),
            ("name = 'a'\naction = 'allow'\ncolumns = ['ssn']", Some(RuleError::MaskFieldsOnNonMask("a".into()))),
            ("name = 'd'\naction = 'deny'\ndetectors = ['email']", Some(RuleError::MaskFieldsOnNonMask("d".into()))),
            ("name = 'h'\naction = 'hold'\ntimeout_secs = 60", None),
        ];
        for (body, expected) in cases {
            let rules = parse(&format!("[[rules]]\n{body}"));
            assert_eq!(rules[0].validate().err(), expected, "{body}");
        }
        let dup = parse("[[rules]]\nname='x'\naction='allow'\n[[rules]]\nname='x'\naction='deny'");
        assert_eq!(
            validate_rules(&dup),
            Err(RuleError::DuplicateName("x".into()))
        );
    }

    #[test]
    fn deserialize_rejects_mistakes() {
        #[rustfmt::skip]
        let cases = [
            "name = 'r'\naction = 'allow'\ntabels = ['t']",
            "name = 'r'\naction = 'permit'",
            "name = 'r'\naction = 'allow'\nkinds = ['selects']",
            "name = 'r'\naction = 'mask'\ndetectors = ['ssn']",
            "action = 'allow'",
        ];
        for body in cases {
            let res = toml::from_str::<File>(&format!("[[rules]]\n{body}"));
            assert!(res.is_err(), "{body}");
        }
    }

    #[test]
    fn token_conditions_need_a_matching_token() {
        let rules = parse(
            r#"
            [[rules]]
            name = "oncall-writes"
            action = "allow"
            kinds = ["update"]
            groups = ["oncall"]

            [[rules]]
            name = "bot-reads"
            action = "allow"
            kinds = ["select"]
            subjects = ["bot-*"]
            "#,
        );
        let who = |sub: Option<&str>, groups: &[&str]| Who {
            subject: sub.map(str::to_owned),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let cases = [
            (who(None, &[]), "SELECT 1", "default"),
            (who(Some("bot-7"), &[]), "SELECT 1", "bot-reads"),
            (who(Some("alice"), &[]), "SELECT 1", "default"),
            (
                who(Some("alice"), &["dev", "oncall"]),
                "UPDATE t SET a = 1 WHERE b",
                "oncall-writes",
            ),
            (
                who(Some("bot-7"), &["dev"]),
                "UPDATE t SET a = 1 WHERE b",
                "default",
            ),
        ];
        for (w, sql, rule) in cases {
            assert_eq!(decide(&rules, &w, &stmt(sql)).rule, rule, "{w:?} {sql}");
        }
    }
}
