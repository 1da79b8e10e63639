//! Command verdicts, for every protocol: which configured rule decides a described command
//! (an SQL statement, an SSH exec, an HTTP request), with a precedence that fails closed
//! whatever the order of the rules: deny over hold over mask over allow, and deny when no rule
//! matches. A protocol supplies its rule type and what a command looks like to it
//! ([`Rule::matches`]); who may be matched (`subjects`, `groups`) is common to all.

pub mod glob;

use serde::{Deserialize, Serialize};

pub use crate::identity::Who;
pub use glob::Glob;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    Mask,
    Hold,
}

impl Action {
    /// Deny over hold over mask over allow: a more permissive rule can never
    /// cancel a stricter one, so rule order cannot open a hole.
    pub fn strictness(self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::Mask => 1,
            Action::Hold => 2,
            Action::Deny => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Mask => "mask",
            Action::Hold => "hold",
        }
    }
}

/// A rule's `subjects` and `groups`: the agent's verified subject, or any of its groups, must
/// match. A rule with either never matches an agent that presented no token.
#[derive(Debug, Clone, Copy)]
pub struct Audience<'a> {
    pub subjects: &'a [Glob],
    pub groups: &'a [Glob],
}

impl Audience<'_> {
    pub fn admits(&self, who: &Who) -> bool {
        (self.subjects.is_empty()
            || who
                .subject
                .as_deref()
                .is_some_and(|s| self.subjects.iter().any(|g| g.matches(s))))
            && (self.groups.is_empty()
                || who
                    .groups
                    .iter()
                    .any(|n| self.groups.iter().any(|g| g.matches(n))))
    }
}

/// A protocol's rule, as the precedence sees it.
pub trait Rule {
    /// What the protocol's judge describes a command as.
    type Command;
    fn name(&self) -> &str;
    fn action(&self) -> Action;
    fn audience(&self) -> Audience<'_>;
    /// Whether the command meets the rule's own conditions (who is checked apart).
    fn matches(&self, command: &Self::Command) -> bool;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub action: Action,
    pub rule: String,
    /// Indexes of every matching mask rule: they narrow what an allowed (or held) command
    /// returns, never grant it.
    pub masks: Vec<usize>,
}

/// The rule that decides when none matches.
pub const DEFAULT_RULE: &str = "default";
/// The rule named for a request that holds no command (an empty query).
pub const EMPTY_RULE: &str = "empty";

/// How long a hold waits when its rule names no `timeout_secs`.
pub const DEFAULT_HOLD_SECS: u64 = 120;

pub fn decide<R: Rule>(rules: &[R], who: &Who, command: &R::Command) -> Verdict {
    let mut first: [Option<usize>; 4] = [None; 4];
    let mut masks = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if !rule.audience().admits(who) || !rule.matches(command) {
            continue;
        }
        first[usize::from(rule.action().strictness())].get_or_insert(i);
        if rule.action() == Action::Mask {
            masks.push(i);
        }
    }
    let winner = [Action::Deny, Action::Hold, Action::Allow]
        .into_iter()
        .find_map(|a| first[usize::from(a.strictness())]);
    match winner {
        Some(i) => {
            let action = match rules[i].action() {
                Action::Allow if !masks.is_empty() => Action::Mask,
                a => a,
            };
            let rule = if action == Action::Mask {
                rules[masks[0]].name().to_owned()
            } else {
                rules[i].name().to_owned()
            };
            Verdict {
                action,
                rule,
                masks,
            }
        }
        None => Verdict {
            action: Action::Deny,
            rule: DEFAULT_RULE.to_string(),
            masks,
        },
    }
}

/// The verdict on a request that carries several commands (`SELECT 1; DELETE ...`): the
/// strictest of theirs, with every mask any of them needs.
pub fn decide_all<R: Rule>(rules: &[R], who: &Who, commands: &[R::Command]) -> Verdict {
    let mut verdict = Verdict {
        action: Action::Allow,
        rule: EMPTY_RULE.to_string(),
        masks: Vec::new(),
    };
    for (n, command) in commands.iter().enumerate() {
        let v = decide(rules, who, command);
        if n == 0 || v.action.strictness() > verdict.action.strictness() {
            verdict.action = v.action;
            verdict.rule = v.rule;
        }
        verdict.masks.extend(v.masks);
    }
    verdict.masks.sort_unstable();
    verdict.masks.dedup();
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule over plain words, to test the precedence apart from any protocol.
    struct Word {
        name: &'static str,
        action: Action,
        word: &'static str,
        subjects: Vec<Glob>,
    }

    impl Rule for Word {
        type Command = &'static str;
        fn name(&self) -> &str {
            self.name
        }
        fn action(&self) -> Action {
            self.action
        }
        fn audience(&self) -> Audience<'_> {
            Audience {
                subjects: &self.subjects,
                groups: &[],
            }
        }
        fn matches(&self, command: &&'static str) -> bool {
            self.word == "*" || self.word == *command
        }
    }

    fn rule(name: &'static str, action: Action, word: &'static str) -> Word {
        Word {
            name,
            action,
            word,
            subjects: Vec::new(),
        }
    }

    #[test]
    fn precedence_table() {
        let rules = vec![
            rule("allow-all", Action::Allow, "*"),
            rule("mask-ls", Action::Mask, "ls"),
            rule("hold-rm", Action::Hold, "rm"),
            rule("deny-dd", Action::Deny, "dd"),
            Word {
                subjects: vec![Glob::new("ops-*").unwrap()],
                ..rule("deny-ops-cat", Action::Deny, "cat")
            },
        ];
        let ops = Who {
            subject: Some("ops-bot".into()),
            groups: Vec::new(),
        };
        #[rustfmt::skip]
        let cases: &[(&Who, &'static str, Action, &str, &[usize])] = &[
            (&Who::default(), "echo", Action::Allow, "allow-all", &[]),
            (&Who::default(), "ls", Action::Mask, "mask-ls", &[1]),
            (&Who::default(), "rm", Action::Hold, "hold-rm", &[]),
            (&Who::default(), "dd", Action::Deny, "deny-dd", &[]),
            (&Who::default(), "cat", Action::Allow, "allow-all", &[]),
            (&ops, "cat", Action::Deny, "deny-ops-cat", &[]),
        ];
        for (who, command, action, name, masks) in cases {
            let v = decide(&rules, who, command);
            assert_eq!(
                (v.action, v.rule.as_str(), v.masks.as_slice()),
                (*action, *name, *masks),
                "{command}"
            );
        }
        // Rule order never changes the action.
        let mut reversed = rules;
        reversed.reverse();
        for (who, command, action, _, _) in cases {
            assert_eq!(decide(&reversed, who, command).action, *action, "{command}");
        }
        // Nothing matches: the default denies.
        let none: Vec<Word> = vec![rule("only-ls", Action::Allow, "ls")];
        let v = decide(&none, &Who::default(), &"rm");
        assert_eq!((v.action, v.rule.as_str()), (Action::Deny, DEFAULT_RULE));
    }

    #[test]
    fn several_commands_take_the_strictest() {
        let rules = vec![
            rule("allow-all", Action::Allow, "*"),
            rule("hold-rm", Action::Hold, "rm"),
            rule("mask-ls", Action::Mask, "ls"),
        ];
        let v = decide_all(&rules, &Who::default(), &["ls", "rm", "echo"]);
        assert_eq!((v.action, v.rule.as_str()), (Action::Hold, "hold-rm"));
        assert_eq!(v.masks, vec![2]);
        let v = decide_all(&rules, &Who::default(), &[]);
        assert_eq!((v.action, v.rule.as_str()), (Action::Allow, EMPTY_RULE));
    }
}
