//! Text kept for reports: the tail of a command's output.

/// Bytes of command output kept for a report.
pub const TAIL_BYTES: usize = 8 << 10;

/// The last [`TAIL_BYTES`] of `text`, cut at a character boundary.
pub fn tail(text: &str) -> String {
    if text.len() <= TAIL_BYTES {
        return text.to_string();
    }
    let mut start = text.len() - TAIL_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_end() {
        let long = format!("{}end", "x".repeat(TAIL_BYTES * 2));
        let t = tail(&long);
        assert_eq!(t.len(), TAIL_BYTES);
        assert!(t.ends_with("end"));
    }
}
