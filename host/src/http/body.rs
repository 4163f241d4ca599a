//! Reading a request body, bounded in size and in time: the longest wait
//! for more of it, and the slowest average rate once its first wait is
//! over. A client that stalls its body, or trickles it in, is cut off.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

/// The bounds on a request body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyBounds {
    pub max_bytes: usize,
    /// Longest wait for more of the body.
    pub timeout: Duration,
    /// After the first `timeout`, the body must have come at this rate on
    /// average: N bytes by `timeout` plus N / rate seconds.
    pub min_bytes_per_sec: u64,
}

/// Why a body was not read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// Beyond `max_bytes`.
    TooLarge,
    /// A wait for more of it was too long, or it came too slowly.
    TimedOut,
    /// The client broke it off (or broke the protocol).
    Broken,
}

/// Read `body` whole, within `bounds`.
pub(crate) async fn read(mut body: Incoming, bounds: BodyBounds) -> Result<Vec<u8>, BodyError> {
    let started = Instant::now();
    let rate = bounds.min_bytes_per_sec.max(1);
    let mut bytes = Vec::new();
    loop {
        let earned = Duration::from_millis((bytes.len() as u64).saturating_mul(1000) / rate);
        let deadline = (Instant::now() + bounds.timeout).min(started + bounds.timeout + earned);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => return Ok(bytes),
            Ok(Some(Err(_))) => return Err(BodyError::Broken),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not kept.
        if let Ok(data) = frame.into_data() {
            if data.len() > bounds.max_bytes - bytes.len() {
                return Err(BodyError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
}
