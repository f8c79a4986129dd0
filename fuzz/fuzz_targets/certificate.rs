//! A client certificate as the coordinator reads its identity (after TLS
//! checked its signature, but parsed from the peer's bytes).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = drover_net::identity::PeerCertificate::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = drover_net::identity::cert_der_from_pem(text);
    }
});
