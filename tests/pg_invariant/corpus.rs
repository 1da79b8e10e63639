//! The hostile corpus: `tests/corpus/pg_hostile.sql` read into messages, grouped by the
//! connection that sends them.

/// One message to send.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) id: usize,
    /// `class/label` (corpus), `gen/N` or `deep/...`.
    pub(crate) label: String,
    pub(crate) bytes: Vec<u8>,
}

/// Cases that share a connection, and its extra startup parameters.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) name: String,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) cases: Vec<Case>,
}

/// `\r`, `\n`, `\t`, `\xHH` and `\\`; anything else stays as written.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                    continue;
                }
                b'x' => {
                    if let Some(v) = s
                        .get(i + 2..i + 4)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Reads the corpus format documented at the top of `tests/corpus/pg_hostile.sql`.
pub(crate) fn parse_corpus(text: &str, next_id: &mut usize) -> Vec<Session> {
    let mut sessions = vec![Session {
        name: "main".into(),
        params: vec![],
        cases: vec![],
    }];
    // The case being read: label, flags, body lines.
    let mut open: Option<(String, Vec<String>, Vec<&str>)> = None;
    let mut close = |open: &mut Option<(String, Vec<String>, Vec<&str>)>,
                     sessions: &mut Vec<Session>| {
        let Some((label, flags, mut body)) = open.take() else {
            return;
        };
        while body.last().is_some_and(|l| l.trim().is_empty()) {
            body.pop();
        }
        let mut text = body.join("\n");
        if flags.iter().any(|f| f == "nl") {
            text.push('\n');
        }
        let bytes = if flags.iter().any(|f| f == "esc") {
            unescape(&text)
        } else {
            text.into_bytes()
        };
        *next_id += 1;
        sessions.last_mut().unwrap().cases.push(Case {
            id: *next_id,
            label,
            bytes,
        });
    };
    for line in text.split('\n') {
        let Some(directive) = line.strip_prefix("%%") else {
            if let Some((_, _, body)) = open.as_mut() {
                body.push(line);
            }
            continue;
        };
        close(&mut open, &mut sessions);
        let mut words = directive.split_whitespace();
        match words.next() {
            Some("session") => {
                let name = words.next().expect("session name").to_owned();
                let params = words
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("KEY=VALUE");
                        (k.to_owned(), String::from_utf8(unescape(v)).unwrap())
                    })
                    .collect();
                sessions.push(Session {
                    name,
                    params,
                    cases: vec![],
                });
            }
            Some("case") => {
                let label = words.next().expect("case label").to_owned();
                open = Some((label, words.map(str::to_owned).collect(), vec![]));
            }
            Some(w) if w.starts_with('#') => {}
            other => panic!("corpus: unknown directive {other:?} in {line:?}"),
        }
    }
    close(&mut open, &mut sessions);
    sessions.retain(|s| !s.cases.is_empty());
    sessions
}
