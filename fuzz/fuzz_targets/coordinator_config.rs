//! The coordinator's drover.toml, read and checked.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = toml::from_str::<drover_coordinator::config::Config>(text) {
            let _ = config.check_values();
        }
    }
});
