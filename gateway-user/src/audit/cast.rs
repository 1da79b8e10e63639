//! A recorded terminal played back: the output chunks of a session's recorded channels, at
//! their pace (`gatewayctl replay` of an SSH session), or as asciicast v2 (`gatewayctl export
//! --format asciicast`), which `asciinema play` plays.

use std::{borrow::Cow, time::Duration};

use serde_json::json;

use super::{Detail, Event, OutputDetail, SessionRecord, Stream, replay::Step};

/// The terminal output of a session, with the pause before each chunk; None when it recorded
/// none (a SQL session, or SSH commands without output).
pub fn terminal(record: &SessionRecord, events: &[Event]) -> Option<Vec<Step>> {
    let mut before = record.started_at_ms;
    let steps: Vec<Step> = shown(events)
        .map(|(e, d)| {
            let pause = Duration::from_millis(e.at_ms.saturating_sub(before));
            before = before.max(e.at_ms);
            Step {
                pause,
                text: played(d).into_owned(),
            }
        })
        .collect();
    (!steps.is_empty()).then_some(steps)
}

/// asciicast v2: a header line, then `[seconds, "o", text]` for output and
/// `[seconds, "r", "COLSxROWS"]` for resizes.
pub fn asciicast(record: &SessionRecord, events: &[Event]) -> Vec<String> {
    let (mut cols, mut rows) = (80, 24);
    if let Some(d) = outputs(events).find(|d| d.stream == Stream::Resize) {
        (cols, rows) = (d.cols.unwrap_or(cols), d.rows.unwrap_or(rows));
    }
    let header = json!({
        "version": 2,
        "width": cols,
        "height": rows,
        "timestamp": record.started_at_ms / 1000,
        "title": format!("gatewayd session {} ({})", record.id, record.target.as_deref().unwrap_or("-")),
    });
    let mut out = vec![header.to_string()];
    let at = |e: &Event| e.at_ms.saturating_sub(record.started_at_ms) as f64 / 1000.0;
    for e in events {
        let Detail::Output(d) = &e.detail else {
            continue;
        };
        let line = match d.stream {
            Stream::Output | Stream::Error => json!([at(e), "o", safe(&d.data)]),
            Stream::Resize => json!([
                at(e),
                "r",
                format!("{}x{}", d.cols.unwrap_or(cols), d.rows.unwrap_or(rows))
            ]),
            Stream::Truncated => json!([at(e), "o", TRUNCATED]),
            Stream::Input | Stream::Typed => continue,
        };
        out.push(line.to_string());
    }
    out
}

fn outputs(events: &[Event]) -> impl Iterator<Item = &OutputDetail> {
    events.iter().filter_map(|e| match &e.detail {
        Detail::Output(d) => Some(d),
        _ => None,
    })
}

fn shown(events: &[Event]) -> impl Iterator<Item = (&Event, &OutputDetail)> {
    events.iter().filter_map(|e| match &e.detail {
        Detail::Output(d)
            if matches!(d.stream, Stream::Output | Stream::Error | Stream::Truncated) =>
        {
            Some((e, d))
        }
        _ => None,
    })
}

const TRUNCATED: &str = "\r\n[gatewayd: recording bound reached]\r\n";

fn played(d: &OutputDetail) -> Cow<'_, str> {
    match d.stream {
        Stream::Truncated => Cow::Borrowed(TRUNCATED),
        _ => safe(&d.data),
    }
}

/// Recorded output as an auditor's terminal may play it: the agent chose those bytes, so the
/// control strings that act outside the screen are dropped (OSC: clipboard writes, titles,
/// hyperlinks; DCS, APC, PM, SOS: device and application commands), whether written as
/// `ESC ]` or as the C1 character. Colours and cursor movement (CSI) stay.
fn safe(text: &str) -> Cow<'_, str> {
    let opens = |c: char, next: Option<char>| {
        matches!(c, '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}')
            || (c == '\u{1b}' && matches!(next, Some(']' | 'P' | 'X' | '^' | '_')))
    };
    if !text.contains(['\u{1b}', '\u{90}', '\u{98}', '\u{9d}', '\u{9e}', '\u{9f}']) {
        return Cow::Borrowed(text);
    }
    let mut chars = text.chars().peekable();
    let mut out = String::with_capacity(text.len());
    while let Some(c) = chars.next() {
        if !opens(c, chars.peek().copied()) {
            out.push(c);
            continue;
        }
        if c == '\u{1b}' {
            chars.next();
        }
        // Up to the string terminator (ESC \, ST, or BEL), or the end of the chunk.
        while let Some(c) = chars.next() {
            match c {
                '\u{7}' | '\u{9c}' => break,
                '\u{1b}' if chars.peek() == Some(&'\\') => {
                    chars.next();
                    break;
                }
                _ => {}
            }
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_strings_the_agent_wrote_are_not_played() {
        let cases = [
            (
                "plain \u{1b}[31mred\u{1b}[0m",
                "plain \u{1b}[31mred\u{1b}[0m",
            ),
            ("a\u{1b}]52;c;ZXZpbA==\u{7}b", "ab"),
            ("a\u{1b}]0;title\u{1b}\\b", "ab"),
            ("a\u{1b}Pq#0;2;0;0;0\u{1b}\\b", "ab"),
            ("a\u{9d}52;c;eA==\u{9c}b", "ab"),
            ("a\u{1b}_app\u{1b}\\b\u{1b}^pm\u{7}c", "abc"),
            ("unterminated\u{1b}]52;c;eA==", "unterminated"),
        ];
        for (recorded, played) in cases {
            assert_eq!(safe(recorded), played, "{recorded:?}");
        }
    }
    use crate::{audit::SessionRecord, rules::Action};

    fn out(at_ms: u64, stream: Stream, data: &str, size: Option<(u32, u32)>) -> Event {
        Event {
            session_id: 1,
            seq: at_ms,
            at_ms,
            verdict: Action::Allow,
            rule: "shell".into(),
            duration_us: 0,
            masked: 0,
            error: None,
            approval: None,
            detail: Detail::Output(OutputDetail {
                channel: 0,
                stream,
                data: data.into(),
                cols: size.map(|s| s.0),
                rows: size.map(|s| s.1),
            }),
        }
    }

    #[test]
    fn asciicast_v2_lines() {
        let record: SessionRecord = serde_json::from_value(json!({
            "id": 4, "started_at_ms": 10_000, "ended_at_ms": 13_000, "agent": null,
            "peer": "127.0.0.1:1", "policy": "p", "destination": "127.0.0.1:22",
            "target": "web", "protocol": "ssh", "verdict": "allow", "rule": "targets.web",
            "bytes_up": 0, "bytes_down": 0, "end": null
        }))
        .unwrap();
        let events = [
            out(10_100, Stream::Resize, "", Some((100, 30))),
            out(10_500, Stream::Input, "ls\r", None),
            out(10_600, Stream::Output, "a  b\r\n", None),
            out(12_000, Stream::Error, "oops\r\n", None),
        ];
        let lines = asciicast(&record, &events);
        let header: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(
            (
                header["version"].as_u64(),
                header["width"].as_u64(),
                header["height"].as_u64()
            ),
            (Some(2), Some(100), Some(30))
        );
        assert_eq!(
            &lines[1..],
            [
                r#"[0.1,"r","100x30"]"#,
                r#"[0.6,"o","a  b\r\n"]"#,
                r#"[2.0,"o","oops\r\n"]"#,
            ]
        );
        let steps = terminal(&record, &events).unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!(
            (steps[0].pause, steps[0].text.as_str()),
            (Duration::from_millis(600), "a  b\r\n")
        );
        assert_eq!(steps[1].pause, Duration::from_millis(1400));
        assert!(terminal(&record, &events[..2]).is_none());
    }
}
