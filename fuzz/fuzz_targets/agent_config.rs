//! The agent's configuration file and its fields.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = toml::from_str::<drover_agent::AgentConfig>(text);
    }
});
