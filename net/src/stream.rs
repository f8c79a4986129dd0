//! Framed messages over QUIC streams: a `u32` length, checked against a
//! maximum, then a bincode payload. The payload buffer grows as its bytes
//! arrive, never to the declared length up front, so a peer that declares a
//! large frame and sends nothing costs nothing; a [`FrameBudget`] bounds the
//! bytes of all frames a process holds in flight.

use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Semaphore;

use drover_protocol::compat::Versioned;
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
    #[error("the memory for requests in flight ({budget} bytes) is used up; try again shortly")]
    BudgetExhausted { budget: usize },
}

/// One budget of bytes for the frames in flight on every stream that reads
/// with it: bytes are reserved as they arrive (the buffer's capacity, at
/// most twice what arrived) and given back when the frame is decoded or
/// dropped. An exhausted budget fails the stream at once; it never grows.
#[derive(Clone)]
pub struct FrameBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

impl FrameBudget {
    /// A budget of `total` bytes (at most `u32::MAX` are reserved at once
    /// per frame, more than any frame may carry).
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        FrameBudget { bytes: Arc::new(Semaphore::new(total)), total }
    }

    /// The budget's size in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not reserved by any frame now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// Bytes reserved by one frame from each of its budgets (all the same
/// amount), given back on drop.
struct Reserved<'a> {
    budgets: &'a [&'a FrameBudget],
    bytes: usize,
}

impl Reserved<'_> {
    /// Reserves `more` bytes from every budget, or from none.
    fn take(&mut self, more: usize) -> Result<(), StreamError> {
        for (i, budget) in self.budgets.iter().enumerate() {
            let acquired = u32::try_from(more).ok().and_then(|n| budget.bytes.try_acquire_many(n).ok());
            match acquired {
                Some(permit) => permit.forget(),
                None => {
                    for taken in &self.budgets[..i] {
                        taken.bytes.add_permits(more);
                    }
                    return Err(StreamError::BudgetExhausted { budget: budget.total });
                }
            }
        }
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        for budget in self.budgets {
            budget.bytes.add_permits(self.bytes);
        }
    }
}

/// The smallest step a frame's buffer grows by.
const MIN_GROWTH: usize = 16 << 10;

fn read_error(e: quinn::ReadError) -> StreamError {
    StreamError::Read(quinn::ReadExactError::ReadError(e))
}

/// Reads one frame and decodes it. A length above `max` is refused before
/// any payload is read.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream, max: usize) -> Result<T, StreamError> {
    read_frame_within(recv, max, &[]).await
}

/// [`read_frame`], reserving the payload's bytes from every one of
/// `budgets` (say, the connection's and the process's) as they arrive.
pub async fn read_frame_within<T: DeserializeOwned>(recv: &mut quinn::RecvStream, max: usize, budgets: &[&FrameBudget]) -> Result<T, StreamError> {
    read_payload_within(recv, max, budgets, frame::decode_payload).await
}

/// [`read_frame_within`] from a peer of protocol `version`, whose older
/// shapes are converted to the current ones.
pub async fn read_frame_for<T: Versioned>(recv: &mut quinn::RecvStream, max: usize, budgets: &[&FrameBudget], version: u16) -> Result<T, StreamError> {
    read_payload_within(recv, max, budgets, |payload| frame::decode_payload_for(payload, version)).await
}

async fn read_payload_within<T>(
    recv: &mut quinn::RecvStream,
    max: usize,
    budgets: &[&FrameBudget],
    decode: impl FnOnce(&[u8]) -> Result<T, frame::FrameError>,
) -> Result<T, StreamError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(StreamError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = frame::payload_len(header, max)?;
    let mut reserved = Reserved { budgets, bytes: 0 };
    let mut payload: Vec<u8> = Vec::new();
    while payload.len() < len {
        let chunk = recv.read_chunk(len - payload.len(), true).await.map_err(read_error)?.ok_or(StreamError::Closed)?;
        let needed = payload.len() + chunk.bytes.len();
        if needed > reserved.bytes {
            let grown = needed.max(reserved.bytes * 2).max(MIN_GROWTH).min(len);
            reserved.take(grown - reserved.bytes)?;
            payload.reserve_exact(grown - payload.len());
        }
        payload.extend_from_slice(&chunk.bytes);
    }
    let message = decode(&payload)?;
    drop(payload);
    drop(reserved);
    Ok(message)
}

/// Encodes and writes one frame.
pub async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, message: &T) -> Result<(), StreamError> {
    let bytes = frame::encode(message)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// [`write_frame`] in the shapes a peer of protocol `version` reads.
pub async fn write_frame_for<T: Versioned>(send: &mut quinn::SendStream, message: &T, version: u16) -> Result<(), StreamError> {
    let bytes = frame::encode_for(message, version)?;
    send.write_all(&bytes).await?;
    Ok(())
}
