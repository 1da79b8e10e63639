//! A recorded terminal played back: the output chunks of a session's recorded channels, at
//! their pace (`gatewayctl replay` of an SSH session), or as asciicast v2 (`gatewayctl export
//! --format asciicast`), which `asciinema play` plays.

use std::time::Duration;

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
                text: d.data.clone(),
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
            Stream::Output | Stream::Error => json!([at(e), "o", d.data]),
            Stream::Resize => json!([
                at(e),
                "r",
                format!("{}x{}", d.cols.unwrap_or(cols), d.rows.unwrap_or(rows))
            ]),
            Stream::Truncated => json!([at(e), "o", "\r\n[gatewayd: recording bound reached]\r\n"]),
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
        Detail::Output(d) if matches!(d.stream, Stream::Output | Stream::Error) => Some((e, d)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
