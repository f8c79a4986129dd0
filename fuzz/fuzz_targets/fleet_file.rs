//! A fleet file (TOML or JSON), read, checked and ordered.
#![no_main]
use libfuzzer_sys::fuzz_target;

use drover_coordinator::fleet::{parse, service_order, validate, Source};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let source = Source { name: "fuzz.toml".into(), text: text.to_string() };
        if let Ok(fleet) = parse(&source) {
            if validate(&fleet, &source).is_ok() {
                assert!(service_order(&fleet).is_ok(), "a valid fleet has an order");
            }
            for path in [&["services", "web", "after"][..], &["machines"][..]] {
                let _ = source.line_of(path);
            }
        }
    }
});
