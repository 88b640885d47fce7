//! Instance output on the bus: each line a container writes, as JSON on
//! `subjects.logs(service)` (core NATS, published by the node's agent),
//! and berth's own lines about a deploy of the service (published by the
//! scheduler, with no instance).
//! The control plane keeps these messages in the logs stream
//! (`subjects.logs_stream()`), which refuses any message larger than
//! [`MAX_LOG_MESSAGE`]: its per-service bound is a number of messages, so
//! that size is what turns it into bytes.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{InstanceId, ServiceId};

/// Largest log message (its JSON, in bytes). The agent cuts longer lines
/// into several messages; the logs stream refuses anything larger.
pub const MAX_LOG_MESSAGE: usize = 16 * 1024;

/// Which of the container's outputs a line came from, or `system`: a line
/// berth itself writes among them about the instance (the command it runs,
/// how it ended, why it is not healthy) or about a deploy (it is live, it
/// failed), as Render's `==> …` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
    /// berth's own line about the instance; its text starts with `==> `.
    System,
}

impl Stream {
    /// The lowercase name (also the agent's FIFO name for the container's
    /// two outputs).
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }
}

/// The text of a [`Stream::System`] line: `==> ` and `what`, its first
/// letter capitalised (`==> Exited with status 1`).
pub fn system_text(what: &str) -> String {
    let mut chars = what.chars();
    match chars.next() {
        Some(first) => format!("==> {}{}", first.to_uppercase(), chars.as_str()),
        None => "==>".to_owned(),
    }
}

/// One line of an instance's output, or of berth's about the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    /// Service.
    pub service: ServiceId,
    /// Instance that wrote it, or that berth's line is about; absent for
    /// berth's lines about a deploy. (A reader from before it could be
    /// absent cannot parse such a line, and skips it.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
    /// stdout or stderr.
    pub stream: Stream,
    /// The line without its newline (invalid UTF-8 replaced), or one piece
    /// of a line too long for one message.
    pub line: String,
    /// When the agent read it.
    pub time: DateTime<Utc>,
}

impl LogLine {
    /// The messages that carry `text` as this line (its own `line` is
    /// replaced): one, or as many as it takes to keep each within
    /// [`MAX_LOG_MESSAGE`] once encoded, which the logs stream refuses
    /// beyond.
    pub fn payloads(mut self, text: &str) -> Vec<Vec<u8>> {
        self.line.clear();
        let Ok(envelope) = serde_json::to_vec(&self) else {
            return Vec::new();
        };
        let budget = MAX_LOG_MESSAGE.saturating_sub(envelope.len());
        pieces(text, budget)
            .into_iter()
            .filter_map(|piece| {
                piece.clone_into(&mut self.line);
                serde_json::to_vec(&self).ok()
            })
            .collect()
    }
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// `text` cut at character boundaries into pieces whose JSON-escaped form
/// is at most `budget` bytes each (at least one character a piece, so a
/// budget under 6 bytes still makes progress). An empty text is one empty
/// piece: an empty line is a line.
pub fn pieces(text: &str, budget: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, c) in text.char_indices() {
        let n = escaped_len(c);
        if used + n > budget && i > start {
            out.push(&text[start..i]);
            start = i;
            used = 0;
        }
        used += n;
    }
    if start < text.len() || out.is_empty() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_fit_their_budget_once_escaped_and_lose_nothing() {
        let text = "a\"b\\c\u{1}é€😀\n".repeat(200);
        for budget in [1, 5, 6, 7, 64, 1000, 100_000] {
            let got = pieces(&text, budget);
            assert_eq!(got.concat(), text, "budget {budget}");
            for p in &got {
                let json = serde_json::to_string(p).unwrap_or_default();
                // The quotes are not part of the budget.
                assert!(
                    json.len() - 2 <= budget.max(6),
                    "budget {budget}: {} bytes",
                    json.len() - 2
                );
            }
        }
        assert_eq!(pieces("", 10), vec![""]);
        assert_eq!(pieces("abc", 10), vec!["abc"]);
    }

    #[test]
    fn system_lines_read_as_renders() {
        assert_eq!(
            system_text("exited with status 1"),
            "==> Exited with status 1"
        );
        assert_eq!(system_text("état"), "==> État");
        assert_eq!(system_text(""), "==>");
        let json = serde_json::to_value(Stream::System).unwrap_or_default();
        assert_eq!(json, "system");
    }

    #[test]
    fn the_wire_form_is_plain_json_fields() {
        let line = LogLine {
            service: ServiceId::generate(),
            instance: Some(InstanceId::generate()),
            stream: Stream::Stderr,
            line: "x".into(),
            time: Utc::now(),
        };
        let json = serde_json::to_value(&line).unwrap_or_default();
        assert_eq!(json["stream"], "stderr");
        let back: LogLine = serde_json::from_value(json).unwrap_or_else(|_| unreachable!());
        assert_eq!(back, line);
        // A line about a deploy names no instance, and reads back so.
        let deploy = LogLine {
            instance: None,
            stream: Stream::System,
            ..line
        };
        let json = serde_json::to_value(&deploy).unwrap_or_default();
        assert!(json.get("instance").is_none(), "{json}");
        let back: LogLine = serde_json::from_value(json).unwrap_or_else(|_| unreachable!());
        assert_eq!(back, deploy);
    }
}
