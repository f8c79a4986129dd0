//! A backup file given to `drover restore`: checked whole before anything
//! is written.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = drover_coordinator::backup::check(data);
});
