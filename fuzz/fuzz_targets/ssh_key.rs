//! An admin's SSH public key line, checked before it reaches any machine's
//! authorized keys.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = drover_coordinator::tenancy::parse_ssh_key(text) {
            assert!(!key.key.contains('\n') && !key.comment.contains('\n'), "a checked key is one line");
        }
    }
});
