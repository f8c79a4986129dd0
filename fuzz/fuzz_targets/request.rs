//! A request frame from an agent, an admin or anyone: decoding never panics,
//! and what decodes encodes back to a frame that decodes the same.
#![no_main]
use drover_protocol::frame::{self, MAX_FRAME_LEN, MAX_UNAUTHENTICATED_FRAME_LEN};
use drover_protocol::v1::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode::<Request>(data, MAX_UNAUTHENTICATED_FRAME_LEN);
    if let Ok(request) = frame::decode_payload::<Request>(data) {
        let bytes = frame::encode(&request).expect("a decoded request encodes");
        let again: Request = frame::decode(&bytes, MAX_FRAME_LEN).expect("and decodes again");
        assert_eq!(frame::encode(&again).expect("encodes"), bytes);
    }
});
