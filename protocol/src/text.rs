//! Text carried in reports is cut to a length: the end of it is kept (the
//! end of a command's output says what went wrong), at a character boundary.

/// The last `max` bytes of `text` at most, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// Text from a peer as a log line may show it: control characters —
/// newlines, carriage returns, terminal escapes — written as `\n`, `\r`,
/// `\u{1b}` (so a peer cannot forge a line or colour the terminal), cut to
/// `max` characters.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_end_at_a_character_boundary() {
        let long = format!("{}end", "x".repeat(100));
        assert_eq!(tail(&long, 10), format!("{}end", "x".repeat(7)));
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("ééé", 3), "é", "never half a character");
    }

    #[test]
    fn peer_text_in_a_log_line_cannot_forge_lines_or_escape_sequences() {
        let forged = "drover 1.0\n2026-12-06T00:00:00Z INFO drover: FAKE\u{1b}[31mred";
        let shown = printable(forged, 200);
        assert!(!shown.contains('\n') && !shown.contains('\u{1b}'), "{shown}");
        assert!(shown.contains("\\n") && shown.contains("\\u{1b}"), "{shown}");
        assert_eq!(printable(&"x".repeat(10), 4), "xxxx…");
    }
}
