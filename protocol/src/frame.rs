//! Framing: a frame is a big-endian `u32` payload length followed by a
//! bincode 2 (serde) payload.
//!
//! The length is checked against a maximum before any buffer is allocated, and
//! decoding is bounded by the same limit, so hostile input can neither make a
//! peer allocate without bound nor panic it.

use serde::{de::DeserializeOwned, Serialize};

/// The largest payload any Drover frame may carry (8 MiB).
pub const MAX_FRAME_LEN: usize = 8 << 20;

/// The largest payload accepted from a connection that presented no client
/// certificate (it may only say Hello and Enroll, which are small).
pub const MAX_UNAUTHENTICATED_FRAME_LEN: usize = 64 << 10;

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Why a frame could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame payload could not be decoded: {0}")]
    Decode(String),
    #[error("frame payload has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("message could not be encoded: {0}")]
    Encode(String),
}

/// Encodes `message` as one frame (length prefix and payload).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let payload = bincode::serde::encode_to_vec(message, config()).map_err(|e| FrameError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN });
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The bytes `message` takes in a frame's payload.
pub fn encoded_len<T: Serialize>(message: &T) -> Result<usize, FrameError> {
    bincode::serde::encode_to_vec(message, config()).map(|v| v.len()).map_err(|e| FrameError::Encode(e.to_string()))
}

/// Reads a frame header and returns the payload length, refusing one above
/// `max` (which is itself capped at [`MAX_FRAME_LEN`]).
pub fn payload_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let max = max.min(MAX_FRAME_LEN);
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Decodes a payload (without its length prefix). The whole payload must be
/// one message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: payload.len(), max: MAX_FRAME_LEN });
    }
    let (message, used) = bincode::serde::decode_from_slice(payload, config()).map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes(payload.len() - used));
    }
    Ok(message)
}

/// [`encode`] in the shapes a peer of protocol `version` reads.
pub fn encode_for<T: crate::compat::Versioned>(message: &T, version: u16) -> Result<Vec<u8>, FrameError> {
    if crate::compat::legacy(version) {
        encode(&message.clone().into_legacy())
    } else {
        encode(message)
    }
}

/// [`decode_payload`] from the shapes a peer of protocol `version` writes.
pub fn decode_payload_for<T: crate::compat::Versioned>(payload: &[u8], version: u16) -> Result<T, FrameError> {
    if crate::compat::legacy(version) {
        decode_payload::<T::Legacy>(payload).map(T::from_legacy)
    } else {
        decode_payload(payload)
    }
}

/// Decodes one whole frame held in `bytes` (prefix and payload).
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, FrameError> {
    let Some((header, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Decode(format!("frame of {} bytes is shorter than its {HEADER_LEN}-byte header", bytes.len())));
    };
    let len = payload_len(*header, max)?;
    if payload.len() != len {
        return Err(FrameError::Decode(format!("frame header says {len} bytes but {} follow", payload.len())));
    }
    decode_payload(payload)
}
