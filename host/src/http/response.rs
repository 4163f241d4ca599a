//! What goes back to the client: the host's own pages, and the guest's
//! response on its way from the run to the connection ([`ChannelSink`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::sync::{mpsc, oneshot};

use crate::caps::http::{ResponseSink, SinkFuture, host_page};
use crate::tenants::admission::Rejection;

pub(crate) type ResponseBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub(crate) fn full(body: impl Into<Bytes>) -> ResponseBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response of the host's own: an nginx-like page for `status`.
pub(crate) fn simple(status: StatusCode) -> Response<ResponseBody> {
    let (headers, page) = host_page(status.as_u16());
    let mut response = Response::new(full(page));
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    response
}

/// The answer to a request its tenant's admission refused.
pub(crate) fn rejected(rejection: Rejection) -> Response<ResponseBody> {
    let status =
        StatusCode::from_u16(rejection.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut response = simple(status);
    response.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        rejection.retry_after_secs().into(),
    );
    response
}

/// A response's status and headers.
pub(crate) type Head = (u16, Vec<(HeaderName, HeaderValue)>);

/// The guest's response, from its run to the connection.
///
/// The head waits for the first chunk of the body: if the run ends with the
/// body in that one chunk (the common case: the guest buffers up to 16 KiB
/// unless the script flushes), the response goes out whole, with a
/// `Content-Length`, in one write; otherwise it streams, chunk by chunk.
pub(crate) struct ChannelSink {
    pub(crate) head: Option<oneshot::Sender<(Head, Option<Bytes>)>>,
    /// The head, not yet passed on.
    pub(crate) pending: Option<Head>,
    /// The first chunk of the body, not yet passed on.
    pub(crate) first: Option<Bytes>,
    /// Whether a whole response may be sent with a length (not for HEAD).
    pub(crate) coalesce: bool,
    pub(crate) body: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
    /// A place in the channel kept for the error that cuts the response
    /// short, so that aborting never waits on a client that reads nothing.
    pub(crate) cut: Option<mpsc::OwnedPermit<Result<Frame<Bytes>, std::io::Error>>>,
}

impl ChannelSink {
    pub(crate) fn new(
        head: oneshot::Sender<(Head, Option<Bytes>)>,
        body: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>,
        coalesce: bool,
    ) -> ChannelSink {
        ChannelSink {
            head: Some(head),
            pending: None,
            first: None,
            coalesce,
            cut: body.clone().try_reserve_owned().ok(),
            body,
        }
    }

    /// Pass the head on, and the held chunk into the stream.
    fn start_streaming(&mut self) -> bool {
        if let (Some(head), Some(sender)) = (self.pending.take(), self.head.take()) {
            let _ = sender.send((head, None));
        }
        match self.first.take() {
            // The channel is empty here (nothing was streamed yet), so the
            // first chunk always fits.
            Some(chunk) => self.body.try_send(Ok(Frame::data(chunk))).is_ok(),
            None => true,
        }
    }
}

impl ResponseSink for ChannelSink {
    fn send_head(&mut self, status: u16, headers: Vec<(HeaderName, HeaderValue)>) {
        // A status without a body is not held back.
        let bodiless = matches!(status, 100..=199 | 204 | 304);
        self.pending = Some((status, headers));
        if !self.coalesce || bodiless {
            self.start_streaming();
        }
    }

    fn write(&mut self, chunk: Bytes) -> SinkFuture<'_, bool> {
        Box::pin(async move {
            if self.pending.is_some() && self.first.is_none() {
                self.first = Some(chunk);
                return true;
            }
            if !self.start_streaming() {
                return false;
            }
            // Waits while the client is slow to read: backpressure on the script.
            self.body.send(Ok(Frame::data(chunk))).await.is_ok()
        })
    }

    fn flush(&mut self) {
        self.start_streaming();
    }

    fn abort(&mut self) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            self.start_streaming();
            // hyper drops what it has not yet flushed when a body fails: let
            // it take (and send) what was written before the error reaches it.
            let deadline = Instant::now() + Duration::from_millis(200);
            while self.body.capacity() < self.body.max_capacity() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let cut = std::io::Error::other("the response was cut short");
            // Into the place kept for it: the channel may be full of what a
            // client that reads nothing (or keeps its HTTP/2 stream shut)
            // never takes.
            match self.cut.take() {
                Some(place) => {
                    place.send(Err(cut));
                }
                None => {
                    let _ = self.body.try_send(Err(cut));
                }
            }
        })
    }
}

impl Drop for ChannelSink {
    /// The run is over: a response still held goes out whole.
    fn drop(&mut self) {
        if let (Some(head), Some(sender)) = (self.pending.take(), self.head.take()) {
            let body = self.first.take().unwrap_or_default();
            let _ = sender.send((head, Some(body)));
        }
    }
}

pub(crate) struct ChannelBody(pub(crate) mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx)
    }
}
