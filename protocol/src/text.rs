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
}
