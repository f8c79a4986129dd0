//! Wall-clock time as the records keep it: milliseconds since the Unix
//! epoch. The one place either binary reads the wall clock for its records.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// A duration as people write it (`30s`, `10m`, `1h`, `7d`, `1h 30m`), for
/// command-line flags; the error says the format.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("'{text}' is not a duration ({e}): write a number and a unit, e.g. 30s, 10m, 1h or 7d"))
}
