//! Framed messages over QUIC streams: a `u32` length, checked against a
//! maximum before the payload buffer is allocated, then a bincode payload.

use serde::{de::DeserializeOwned, Serialize};

use drover_protocol::frame::{self, FrameError, HEADER_LEN};

/// Why a frame could not be read or written on a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream closed before a whole frame arrived")]
    Closed,
    #[error("reading from the stream failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("writing to the stream failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Reads one frame and decodes it. A length above `max` is refused before the
/// payload is read.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<T, StreamError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(StreamError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = frame::payload_len(header, max)?;
    let mut payload = vec![0u8; len];
    match recv.read_exact(&mut payload).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(StreamError::Closed),
        Err(e) => return Err(e.into()),
    }
    Ok(frame::decode_payload(&payload)?)
}

/// Encodes and writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    message: &T,
) -> Result<(), StreamError> {
    let bytes = frame::encode(message)?;
    send.write_all(&bytes).await?;
    Ok(())
}
