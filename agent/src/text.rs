//! Text kept for reports: the tail of a command's output.

/// Bytes of command output kept for a report.
pub const TAIL_BYTES: usize = 8 << 10;

/// The last [`TAIL_BYTES`] of `text`, cut at a character boundary.
pub fn tail(text: &str) -> String {
    drover_protocol::text::tail(text, TAIL_BYTES)
}
