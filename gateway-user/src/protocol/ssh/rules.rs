//! The rules of an `ssh` target: what each condition means for an SSH request. Precedence
//! (deny > hold > allow > default deny, whatever the order) is the core's ([`crate::rules`]).

use serde::Deserialize;

use super::words::Words;
use crate::{
    approval::Scope,
    detect::Detector,
    rules::{Action, Audience, Glob, Rule},
};

pub use crate::audit::SshRequestKind as RequestKind;

/// One request, described for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRequest {
    pub kind: RequestKind,
    /// The command of an exec, the subsystem's name, `host:port` of a forward, `NAME=value` of
    /// an env request; empty for a shell.
    pub text: String,
    /// An exec's command read as the shell will read it.
    pub words: Option<Words>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshRule {
    pub name: String,
    pub action: Action,
    #[serde(default)]
    pub kinds: Vec<RequestKind>,
    /// The program of an exec: a pattern with a `/` matches the path as written, one without
    /// matches its last component (`ls` matches `/bin/ls` too).
    #[serde(default)]
    pub programs: Vec<Glob>,
    /// The arguments, one space between each (`status *`).
    #[serde(default)]
    pub args: Vec<Glob>,
    /// An allow rule matches commands with shell syntax (pipes, `$(...)`, `sh -c`...) only
    /// with this set: the gateway does not read them, so allowing them allows whatever they
    /// run. Deny and hold rules match them either way.
    #[serde(default)]
    pub raw_shell: bool,
    /// The subsystem (`sftp`), the forward destination (`db.internal:5432`), the variable
    /// (`LANG=*`).
    #[serde(default)]
    pub targets: Vec<Glob>,
    /// The path of an `sftp_read` or `sftp_write` request, normalised (`/srv/data/*`); case
    /// kept.
    #[serde(default)]
    pub paths: Vec<Glob>,
    #[serde(default)]
    pub subjects: Vec<Glob>,
    #[serde(default)]
    pub groups: Vec<Glob>,
    /// Detectors applied to what the agent receives (and to the recording) under this rule.
    #[serde(default)]
    pub detectors: Vec<Detector>,
    pub timeout_secs: Option<u64>,
    pub approval: Option<Scope>,
}

impl SshRule {
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("a rule has an empty name".into());
        }
        if self.action == Action::Mask && self.detectors.is_empty() {
            return Err(format!("mask rule {:?} needs `detectors`", self.name));
        }
        if self.action != Action::Mask && !self.detectors.is_empty() {
            return Err(format!(
                "rule {:?} sets `detectors` but is not a mask rule",
                self.name
            ));
        }
        if self.raw_shell && self.action != Action::Allow {
            return Err(format!(
                "rule {:?}: `raw_shell` only widens an allow rule (deny and hold rules match raw commands anyway)",
                self.name
            ));
        }
        Ok(())
    }
}

impl Rule for SshRule {
    type Command = SshRequest;

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

    fn matches(&self, r: &SshRequest) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&r.kind) {
            return false;
        }
        let (program, args, raw) = match &r.words {
            Some(w) => (w.program(), w.args(), w.is_raw()),
            None => ("", String::new(), false),
        };
        if raw && self.action == Action::Allow && !self.raw_shell {
            return false;
        }
        // A shell or a subsystem runs whatever is typed or sent into it, and a forward, the
        // agent's SSH agent, X11 or a variable reach past the command: an allow rule grants
        // one only by naming its kind.
        if self.action == Action::Allow
            && !matches!(
                r.kind,
                RequestKind::Exec | RequestKind::SftpRead | RequestKind::SftpWrite
            )
            && !self.kinds.contains(&r.kind)
        {
            return false;
        }
        let program_ok = self.programs.is_empty()
            || (r.words.is_some()
                && self.programs.iter().any(|g| {
                    if g.as_str().contains('/') {
                        g.matches_exact(program)
                    } else {
                        g.matches_exact(program.rsplit('/').next().unwrap_or(program))
                    }
                }));
        // A raw command's arguments are not read: a deny or hold rule that names arguments
        // matches it (failing closed), an allow rule does not.
        let args_ok = self.args.is_empty()
            || if raw {
                self.action != Action::Allow
            } else {
                self.args.iter().any(|g| g.matches_exact(&args))
            };
        let sftp = matches!(r.kind, RequestKind::SftpRead | RequestKind::SftpWrite);
        let target_ok = self.targets.is_empty()
            || (!sftp && self.targets.iter().any(|g| g.matches_exact(&r.text)));
        let path_ok =
            self.paths.is_empty() || (sftp && self.paths.iter().any(|g| g.matches_exact(&r.text)));
        program_ok && args_ok && target_ok && path_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{DEFAULT_RULE, Who, decide};

    #[derive(Deserialize)]
    struct File {
        rules: Vec<SshRule>,
    }

    fn rules() -> Vec<SshRule> {
        let f: File = toml::from_str(
            r#"
            [[rules]]
            name = "read-only"
            action = "allow"
            kinds = ["exec"]
            programs = ["ls", "cat", "uptime", "systemctl"]

            [[rules]]
            name = "no-restarts"
            action = "deny"
            programs = ["systemctl"]
            args = ["restart *", "stop *"]

            [[rules]]
            name = "hold-deletes"
            action = "hold"
            programs = ["rm"]

            [[rules]]
            name = "pipelines-for-grep"
            action = "allow"
            programs = ["grep"]
            raw_shell = true

            [[rules]]
            name = "files"
            action = "allow"
            kinds = ["subsystem"]
            targets = ["sftp"]

            [[rules]]
            name = "data-read"
            action = "allow"
            kinds = ["sftp_read"]
            paths = ["/srv/data", "/srv/data/*", "/"]

            [[rules]]
            name = "drop-write"
            action = "allow"
            kinds = ["sftp_write"]
            paths = ["/srv/drop/*"]

            [[rules]]
            name = "tunnel-web"
            action = "allow"
            kinds = ["direct_tcpip"]
            targets = ["127.0.0.1:80", "web.internal:*"]

            [[rules]]
            name = "locale"
            action = "allow"
            kinds = ["env"]
            targets = ["LANG=*", "LC_*=*"]

            [[rules]]
            name = "no-cat-shadow"
            action = "deny"
            programs = ["cat"]
            args = ["*shadow*"]
            "#,
        )
        .unwrap();
        for r in &f.rules {
            r.validate().unwrap();
        }
        f.rules
    }

    fn exec(line: &str) -> SshRequest {
        SshRequest {
            kind: RequestKind::Exec,
            text: line.into(),
            words: Some(Words::parse(line.as_bytes())),
        }
    }

    #[test]
    fn verdict_table() {
        let rules = rules();
        let other = |kind, text: &str| SshRequest {
            kind,
            text: text.into(),
            words: None,
        };
        #[rustfmt::skip]
        let cases: Vec<(SshRequest, Action, &str)> = vec![
            (exec("ls -la /srv"), Action::Allow, "read-only"),
            (exec("/bin/ls"), Action::Allow, "read-only"),
            (exec("LS"), Action::Deny, DEFAULT_RULE),
            (exec("systemctl status nginx"), Action::Allow, "read-only"),
            (exec("systemctl restart nginx"), Action::Deny, "no-restarts"),
            (exec("rm /tmp/x"), Action::Hold, "hold-deletes"),
            (exec("ls; rm -rf /"), Action::Deny, DEFAULT_RULE),
            (exec("rm -rf / | cat"), Action::Hold, "hold-deletes"),
            (exec("grep x /var/log/syslog | head"), Action::Allow, "pipelines-for-grep"),
            (exec("cat /etc/shadow"), Action::Deny, "no-cat-shadow"),
            (exec("cat /etc/sha'dow'"), Action::Deny, "no-cat-shadow"),
            (exec("sh -c 'ls'"), Action::Deny, DEFAULT_RULE),
            (exec("uptime"), Action::Allow, "read-only"),
            (other(RequestKind::Shell, ""), Action::Deny, DEFAULT_RULE),
            (other(RequestKind::Subsystem, "sftp"), Action::Allow, "files"),
            (other(RequestKind::DirectTcpip, "127.0.0.1:5432"), Action::Deny, DEFAULT_RULE),
            (other(RequestKind::AgentForward, ""), Action::Deny, DEFAULT_RULE),
            (other(RequestKind::DirectTcpip, "127.0.0.1:80"), Action::Allow, "tunnel-web"),
            (other(RequestKind::DirectTcpip, "web.internal:8080"), Action::Allow, "tunnel-web"),
            (other(RequestKind::DirectTcpip, "127.0.0.1:8080"), Action::Deny, DEFAULT_RULE),
            (other(RequestKind::TcpipForward, "127.0.0.1:80"), Action::Deny, DEFAULT_RULE),
            (other(RequestKind::Env, "LANG=C.UTF-8"), Action::Allow, "locale"),
            (other(RequestKind::Env, "LD_PRELOAD=/tmp/x.so"), Action::Deny, DEFAULT_RULE),
            (other(RequestKind::X11, ""), Action::Deny, DEFAULT_RULE),
            (other(RequestKind::SftpRead, "/srv/data/a.csv"), Action::Allow, "data-read"),
            (other(RequestKind::SftpWrite, "/srv/data/a.csv"), Action::Deny, DEFAULT_RULE),
            (other(RequestKind::SftpWrite, "/srv/drop/in.csv"), Action::Allow, "drop-write"),
            (other(RequestKind::SftpRead, "/SRV/data/a.csv"), Action::Deny, DEFAULT_RULE),
            (other(RequestKind::SftpRead, "/etc/shadow"), Action::Deny, DEFAULT_RULE),
        ];
        for (req, action, rule) in cases {
            let v = decide(&rules, &Who::default(), &req);
            assert_eq!((v.action, v.rule.as_str()), (action, rule), "{req:?}");
        }
    }

    #[test]
    fn a_shell_needs_a_rule_that_names_it() {
        let f: File =
            toml::from_str("[[rules]]\nname = 'ops'\naction = 'allow'\nsubjects = ['ops-*']")
                .unwrap();
        let ops = Who {
            subject: Some("ops-bot".into()),
            groups: Vec::new(),
        };
        let shell = SshRequest {
            kind: RequestKind::Shell,
            text: String::new(),
            words: None,
        };
        // The same rule allows a plain command for that subject, not a shell or subsystem.
        assert_eq!(
            decide(&f.rules, &ops, &exec("uptime")).action,
            Action::Allow
        );
        assert_eq!(decide(&f.rules, &ops, &shell).action, Action::Deny);
        let sftp = SshRequest {
            kind: RequestKind::Subsystem,
            text: "sftp".into(),
            ..shell
        };
        assert_eq!(decide(&f.rules, &ops, &sftp).action, Action::Deny);
        // Nor what reaches past the command: forwards, the agent's SSH agent, X11, variables.
        for (kind, text) in [
            (RequestKind::DirectTcpip, "127.0.0.1:5432"),
            (RequestKind::TcpipForward, "127.0.0.1:8080"),
            (RequestKind::AgentForward, ""),
            (RequestKind::X11, ""),
            (RequestKind::Env, "LANG=C"),
        ] {
            let r = SshRequest {
                kind,
                text: text.into(),
                words: None,
            };
            assert_eq!(decide(&f.rules, &ops, &r).action, Action::Deny, "{kind:?}");
        }
    }

    #[test]
    fn raw_shell_only_widens_allow() {
        let bad: File = toml::from_str(
            "[[rules]]\nname = 'x'\naction = 'deny'\nprograms = ['sh']\nraw_shell = true",
        )
        .unwrap();
        assert!(bad.rules[0].validate().is_err());
    }
}
