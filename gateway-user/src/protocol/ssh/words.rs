//! An `exec` request's command as the remote login shell will read it. The shell, not the
//! gateway, interprets the string, so the gateway splits words as POSIX sh does (quotes,
//! backslash escapes) and refuses to describe anything beyond plain words: operators,
//! expansions, globs, redirections, comments, newlines, and programs that run their arguments
//! as shell. Such a command is [`Words::Raw`]; only a rule that allows raw shell for its
//! program lets it through.

/// The command, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Words {
    /// Plain words: the program and its arguments exactly as the program will receive them.
    Plain(Vec<String>),
    /// Shell syntax the gateway does not interpret; `program` is its first token as written,
    /// for rules that name it, and `why` says what made it raw.
    Raw { program: String, why: String },
}

/// Programs that run (part of) their arguments as shell code or as another program: what
/// they run is not the program the rule would judge.
const RUNS_ITS_ARGUMENTS: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "csh",
    "tcsh",
    "fish",
    "busybox",
    "eval",
    "exec",
    "source",
    ".",
    "command",
    "builtin",
    "env",
    "xargs",
    "sudo",
    "doas",
    "su",
    "runuser",
    "nohup",
    "timeout",
    "nice",
    "ionice",
    "setsid",
    "stdbuf",
    "time",
    "watch",
    "flock",
    "chroot",
    "unshare",
    "nsenter",
    "script",
    "expect",
    "parallel",
    "setpriv",
    "taskset",
    "chrt",
    "prlimit",
    "systemd-run",
    "pkexec",
    "strace",
    "ltrace",
    "rbash",
    "ash",
    "sg",
    "newgrp",
    "cgexec",
    "numactl",
    "firejail",
    "bwrap",
    "fakeroot",
    "chpst",
    "run-parts",
    "ssh",
    "faketime",
    "torsocks",
    "proxychains",
    // Bash builtins that run code, or evaluate a name's array subscript or arithmetic, from an
    // argument even when it is quoted: `test -v 'a[$(cmd)]'`, `printf -v 'a[$(cmd)]' x`,
    // `read 'r[$(cmd)]'`, `trap 'cmd' EXIT` all run `cmd`.
    "coproc",
    "trap",
    "let",
    "declare",
    "typeset",
    "local",
    "readonly",
    "export",
    "printf",
    "read",
    "mapfile",
    "readarray",
    "getopts",
    "test",
    "[",
    "wait",
    "enable",
    "fc",
    "hash",
    "complete",
    "unset",
];

impl Words {
    pub fn parse(command: &[u8]) -> Words {
        let Ok(text) = std::str::from_utf8(command) else {
            return raw(command, "the command is not UTF-8");
        };
        let words = match split(text) {
            Ok(w) => w,
            Err(why) => return raw(command, &why),
        };
        let Some(first) = words.first() else {
            return raw(command, "the command is empty");
        };
        let base = first.rsplit('/').next().unwrap_or(first);
        if RUNS_ITS_ARGUMENTS.contains(&base) {
            return Words::Raw {
                program: first.clone(),
                why: format!("`{base}` runs its arguments as another command"),
            };
        }
        if first.contains('=') {
            return raw(command, "a variable assignment before the program");
        }
        Words::Plain(words)
    }

    pub fn program(&self) -> &str {
        match self {
            Words::Plain(w) => w.first().map_or("", String::as_str),
            Words::Raw { program, .. } => program,
        }
    }

    /// The arguments, one space between each, as `args` rules match them.
    pub fn args(&self) -> String {
        match self {
            Words::Plain(w) => w.get(1..).unwrap_or_default().join(" "),
            Words::Raw { .. } => String::new(),
        }
    }

    pub fn is_raw(&self) -> bool {
        matches!(self, Words::Raw { .. })
    }
}

fn raw(command: &[u8], why: &str) -> Words {
    let text = String::from_utf8_lossy(command);
    let program = text
        .trim_start()
        .split(|c: char| c.is_whitespace() || c.is_control() || "|&;<>()$`'\"\\".contains(c))
        .next()
        .unwrap_or_default()
        .to_owned();
    Words::Raw {
        program,
        why: why.to_owned(),
    }
}

/// POSIX sh word splitting over plain words; an error names the first thing that is not one.
fn split(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word is being built (an empty quoted string is a word).
    let mut open = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if open {
                    words.push(std::mem::take(&mut word));
                    open = false;
                }
            }
            '\'' => {
                open = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("an unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                open = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => word.push(e),
                            Some('\n') | None => {
                                return Err("a line continuation inside \" quotes".into());
                            }
                            Some(e) => {
                                word.push('\\');
                                word.push(e);
                            }
                        },
                        Some(e @ ('$' | '`')) => {
                            return Err(format!("`{e}` (an expansion) inside \" quotes"));
                        }
                        Some(c) => word.push(c),
                        None => return Err("an unterminated \" quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') | None => return Err("a trailing backslash or line continuation".into()),
                Some(e) => {
                    open = true;
                    word.push(e);
                }
            },
            '\n' | '\r' => return Err("a newline (a second command)".into()),
            '|' | '&' | ';' | '<' | '>' | '(' | ')' | '$' | '`' | '*' | '?' | '[' | ']' => {
                return Err(format!("`{c}` (shell syntax)"));
            }
            // Brace and tilde expansion happen inside words too (bash expands `a{b,c}` and the
            // `~` after `=` or `:`).
            '{' | '}' | '~' => return Err(format!("`{c}` (shell expansion)")),
            // Special only where a word starts: a comment, negation.
            '#' | '!' if !open => {
                return Err(format!("`{c}` at the start of a word (shell syntax)"));
            }
            c if c.is_control() => return Err(format!("a control character {c:?}")),
            c => {
                open = true;
                word.push(c);
            }
        }
    }
    if open {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(line: &str) -> Vec<String> {
        match Words::parse(line.as_bytes()) {
            Words::Plain(w) => w,
            raw => panic!("{line:?} read as {raw:?}"),
        }
    }

    #[test]
    fn plain_words_as_sh_splits_them() {
        #[rustfmt::skip]
        let cases: &[(&str, &[&str])] = &[
            ("ls -la /srv", &["ls", "-la", "/srv"]),
            ("  ls\t-l  ", &["ls", "-l"]),
            ("echo 'a b' \"c d\" e\\ f", &["echo", "a b", "c d", "e f"]),
            ("echo ''", &["echo", ""]),
            ("echo 'it''s'", &["echo", "its"]),
            ("echo \"a\\\"b\\\\c\\$d\\x\"", &["echo", "a\"b\\c$d\\x"]),
            ("grep -e 'a|b;c' 'f*'", &["grep", "-e", "a|b;c", "f*"]),
            ("find . -name x -exec rm '{}' \\;", &["find", ".", "-name", "x", "-exec", "rm", "{}", ";"]),
            ("git-upload-pack '/srv/repo.git'", &["git-upload-pack", "/srv/repo.git"]),
            ("scp -t /tmp", &["scp", "-t", "/tmp"]),
            ("ls --color=auto x#y a!b", &["ls", "--color=auto", "x#y", "a!b"]),
            ("cat '/etc/sha{d,}ow' \"~\"", &["cat", "/etc/sha{d,}ow", "~"]),
        ];
        for (line, want) in cases {
            assert_eq!(plain(line), *want, "{line}");
        }
    }

    #[test]
    fn anything_beyond_plain_words_is_raw_and_says_why() {
        #[rustfmt::skip]
        let cases: &[(&[u8], &str, &str)] = &[
            (b"ls; rm -rf /", "ls", ";"),
            (b"ls && rm x", "ls", "&"),
            (b"cat x | sh", "cat", "|"),
            (b"echo $(id)", "echo", "$"),
            (b"echo `id`", "echo", "`"),
            (b"echo \"$HOME\"", "echo", "inside"),
            (b"rm *", "rm", "*"),
            (b"cat < /etc/shadow", "cat", "<"),
            (b"ls > /tmp/x", "ls", ">"),
            (b"ls\nrm -rf /", "ls", "newline"),
            (b"ls #comment", "ls", "#"),
            (b"ls ~root", "ls", "~"),
            (b"cat /etc/sha{d,}ow", "cat", "expansion"),
            (b"dd if=~root/.ssh/id_rsa", "dd", "expansion"),
            (b"setpriv rm -rf /", "setpriv", "runs its arguments"),
            (b"taskset 1 rm x", "taskset", "runs its arguments"),
            (b"FOO=1 ls", "FOO=1", "assignment"),
            (b"sh -c 'rm -rf /'", "sh", "runs its arguments"),
            (b"test -v 'a[$(id)]'", "test", "runs its arguments"),
            (b"printf -v 'a[$(id)]' x", "printf", "runs its arguments"),
            (b"trap 'id' EXIT", "trap", "runs its arguments"),
            (b"coproc id", "coproc", "runs its arguments"),
            (b"/bin/bash -c id", "/bin/bash", "runs its arguments"),
            (b"eval id", "eval", "runs its arguments"),
            (b"env rm -rf /", "env", "runs its arguments"),
            (b"sudo rm x", "sudo", "runs its arguments"),
            (b"echo 'open", "echo", "unterminated"),
            (b"echo \"open", "echo", "unterminated"),
            (b"echo x\\", "echo", "backslash"),
            (b"ls \xff", "ls", "UTF-8"),
            (b"", "", "empty"),
            (b"ls\x00rm", "ls", "control"),
        ];
        for (line, program, why) in cases {
            match Words::parse(line) {
                Words::Raw { program: p, why: w } => {
                    assert_eq!(p, *program, "{:?}", String::from_utf8_lossy(line));
                    assert!(w.contains(why), "{:?}: {w}", String::from_utf8_lossy(line));
                }
                plain => panic!("{:?} read as {plain:?}", String::from_utf8_lossy(line)),
            }
        }
    }

    #[test]
    fn program_and_args_for_rules() {
        let w = Words::parse(b"systemctl status  'nginx.service'");
        assert_eq!(
            (w.program(), w.args().as_str()),
            ("systemctl", "status nginx.service")
        );
        assert!(!w.is_raw());
    }
}
