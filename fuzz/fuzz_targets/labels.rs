//! Labels and selectors (`key=value`) as machines, tokens and deployments
//! carry them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (key, value) = text.split_once('=').unwrap_or((text, ""));
        if drover_coordinator::registry::check_label(key, value).is_ok() {
            assert!(!key.is_empty() && !key.chars().any(char::is_control));
        }
    }
});
