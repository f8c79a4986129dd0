//! Property tests: every message round-trips through a frame, and no input
//! makes the decoder panic.

use proptest::prelude::*;

use crate::frame::{self, FrameError, MAX_FRAME_LEN, MAX_UNAUTHENTICATED_FRAME_LEN};
use crate::v1::{Request, Response};
use crate::version::{negotiate, VersionRange, SUPPORTED};
use crate::ErrorCode;

/// Runs a property on a thread with a large stack: proptest's derived
/// strategy for an enum of many variants (a whole `Request`) nests deeply
/// and outgrows a test thread's 2 MiB in debug builds. Decoding does not:
/// [`decode_on_small_stack`] shows it.
fn check<S: Strategy + Send + 'static>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError> + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(512));
            if let Err(e) = runner.run(&strategy, test) {
                panic!("{e}");
            }
        })
        .expect("spawn the property thread")
        .join()
        .expect("the property holds");
}

/// Decodes `bytes` on a thread with 256 KiB of stack, an eighth of a tokio
/// worker's: hostile input cannot exhaust the coordinator's stack.
fn decode_on_small_stack<T: serde::de::DeserializeOwned + Send>(bytes: &[u8], max: usize) -> Result<T, FrameError> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn_scoped(s, || frame::decode::<T>(bytes, max))
            .expect("spawn the decoding thread")
            .join()
            .expect("decoding does not panic")
    })
}

// Compared by bytes after a second encoding: floats may be NaN, which
// never equals itself, yet must survive the trip bit for bit.
#[test]
fn every_request_round_trips() {
    check(any::<Request>(), |message| {
        let bytes = frame::encode(&message).expect("encode");
        let decoded: Request = decode_on_small_stack(&bytes, MAX_FRAME_LEN).expect("decode");
        prop_assert_eq!(frame::encode(&decoded).expect("re-encode"), bytes);
        Ok(())
    });
}

#[test]
fn every_response_round_trips() {
    check(any::<Response>(), |message| {
        let bytes = frame::encode(&message).expect("encode");
        let decoded: Response = decode_on_small_stack(&bytes, MAX_FRAME_LEN).expect("decode");
        prop_assert_eq!(frame::encode(&decoded).expect("re-encode"), bytes);
        Ok(())
    });
}

#[test]
fn mutated_frames_never_panic() {
    let flips = proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8);
    check((any::<Request>(), flips), |(message, flips)| {
        let mut bytes = frame::encode(&message).expect("encode");
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] ^= value;
        }
        let _ = decode_on_small_stack::<Request>(&bytes, MAX_FRAME_LEN);
        Ok(())
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = frame::decode::<Request>(&bytes, MAX_UNAUTHENTICATED_FRAME_LEN);
        let _ = frame::decode::<Response>(&bytes, MAX_FRAME_LEN);
        let _ = frame::decode_payload::<Request>(&bytes);
        let _ = frame::decode_payload::<Response>(&bytes);
    }

    #[test]
    fn negotiation_picks_a_common_version_or_names_both(a in any::<VersionRange>(), b in any::<VersionRange>()) {
        match negotiate(a, b) {
            Ok(v) => {
                prop_assert!(a.min <= v && v <= a.max && b.min <= v && v <= b.max);
            }
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::VersionMismatch);
                prop_assert!(e.message.contains(&b.to_string()) || b.min > b.max);
            }
        }
    }
}

#[test]
fn oversized_length_is_refused_before_reading_the_payload() {
    let header = u32::MAX.to_be_bytes();
    match frame::payload_len(header, MAX_FRAME_LEN) {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!(len, u32::MAX as usize);
            assert_eq!(max, MAX_FRAME_LEN);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let header = ((MAX_UNAUTHENTICATED_FRAME_LEN + 1) as u32).to_be_bytes();
    assert!(matches!(frame::payload_len(header, MAX_UNAUTHENTICATED_FRAME_LEN), Err(FrameError::TooLarge { .. })));
    assert_eq!(frame::payload_len(16u32.to_be_bytes(), MAX_UNAUTHENTICATED_FRAME_LEN).expect("small"), 16);
}

#[test]
fn a_huge_claimed_vector_length_is_refused_without_allocating() {
    // Request::Enroll with a CSR claiming 2^62 bytes.
    let mut payload = vec![1u8]; // variant 1: Enroll
    payload.push(0); // empty token string
    payload.push(0xFF); // varint marker for a u64 length
    payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(frame::decode_payload::<Request>(&payload).is_err());
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = frame::encode(&Request::Agent(crate::v1::AgentRequest::Watch)).expect("encode");
    bytes.push(0);
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(frame::decode::<Request>(&bytes, MAX_FRAME_LEN), Err(FrameError::TrailingBytes(1))));
}

#[test]
fn mismatch_message_names_both_ranges() {
    let err = negotiate(VersionRange { min: 1, max: 1 }, VersionRange { min: 2, max: 3 }).expect_err("no overlap");
    assert!(err.message.contains("2..=3"), "{}", err.message);
    assert!(err.message.contains("speaks 1"), "{}", err.message);
}

#[test]
fn error_codes_map_both_ways() {
    for n in 0..64 {
        if let Some(code) = ErrorCode::from_u32(n) {
            assert_eq!(code.as_u32(), n);
        }
    }
    assert_eq!(ErrorCode::from_u32(8), Some(ErrorCode::Revoked));
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let token = crate::v1::Secret::new("drt_supersecretvalue");
    let request = Request::Enroll(crate::v1::EnrollRequest { token, csr_der: vec![], hostname: "h".into() });
    let text = format!("{request:?}");
    assert!(!text.contains("supersecret"), "{text}");
}

#[test]
fn older_peers_are_refused_by_name() {
    for old in [1, 2, 3, 4, 5] {
        let err = negotiate(SUPPORTED, VersionRange { min: old, max: old }).expect_err("versions before 6 are gone");
        assert_eq!(err.code, ErrorCode::VersionMismatch);
        assert!(err.message.contains(&format!("peer speaks {old}")) && err.message.contains("this side speaks 6"), "{}", err.message);
    }
}

proptest! {
    /// The names the fleet page shows are the names JSON carries.
    #[test]
    fn a_deployment_state_and_step_are_named_as_on_the_wire(state: crate::v1::DeploymentState, step: crate::v1::DeployStep) {
        prop_assert_eq!(serde_json::to_string(&state).expect("json"), format!("\"{}\"", state.as_str()));
        prop_assert_eq!(serde_json::to_string(&step).expect("json"), format!("\"{}\"", step.as_str()));
    }
}
