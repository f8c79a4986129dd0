//! A response frame from the coordinator, as an agent or the CLI reads it.
#![no_main]
use drover_protocol::frame::{self, MAX_FRAME_LEN};
use drover_protocol::v1::Response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode::<Response>(data, MAX_FRAME_LEN);
    let _ = frame::decode_payload::<Response>(data);
});
