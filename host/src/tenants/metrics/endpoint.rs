//! The metrics endpoint: `GET /metrics` on a listener of its own, separate
//! from the scripts' server, answered with [`Metrics::render`]. The
//! connections are served by the accept loop the scripts' server uses too
//! ([`crate::accept`]), with this endpoint's own bounds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::{CONTENT_TYPE, Metrics};
use crate::accept::{self, AfterGrace, ShutdownLog};

/// Connections [`serve`] handles at once; more wait before being accepted.
const MAX_CONNECTIONS: usize = 64;
/// Time a client of [`serve`] has to send its request headers (the first
/// from the moment it connects).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection of [`serve`] may wait between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a response write of [`serve`] may wait for the client to take
/// more.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, the time open connections of [`serve`] get to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How [`serve`] accepts: HTTP/1.1 only, hyper's default bounds on heads,
/// connections still open after the grace closed, the shutdown logged at
/// debug level only.
fn accept_settings() -> accept::Settings {
    accept::Settings {
        max_connections: MAX_CONNECTIONS,
        // A scraper or two: the cap on all connections is enough.
        max_connections_per_client: None,
        header_read_timeout: HEADER_READ_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        send_timeout: SEND_TIMEOUT,
        head_limits: None,
        http2: false,
        tls: None,
        shutdown_grace: SHUTDOWN_GRACE,
        after_grace: AfterGrace::Close,
        log_prefix: "metrics: ",
        shutdown_log: ShutdownLog::Debug,
    }
}

/// Serve `GET /metrics` (and `HEAD`), answered with [`Metrics::render`] as
/// `text/plain; version=0.0.4`, on `listener` until `shutdown` completes.
/// Any other path gets 404, other methods on `/metrics` 405.
///
/// HTTP/1.1 through hyper, one tokio task per connection, at most 64
/// connections at once (more wait to be accepted), 10 s from connecting to
/// send the request headers, 10 s idle between requests, 10 s for a write
/// of a response to make progress. Once `shutdown` completes, it stops accepting, gives open
/// connections 2 s to finish, and closes the rest.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    accept::serve(
        listener,
        &accept_settings(),
        move |_remote, _tls| {
            let metrics = metrics.clone();
            hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &request)) }
            })
        },
        shutdown,
    )
    .await
}

/// The answer to one request of the metrics listener.
fn answer(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tenants::metrics::tests::scenario;

    async fn fetch(addr: std::net::SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .expect("the server closes the connection")
            .unwrap();
        String::from_utf8(response).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let metrics = scenario();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(metrics.clone(), listener, async {
            let _ = stopped.await;
        }));

        let response = fetch(addr, "GET", "/metrics").await;
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\ncontent-type: text/plain; version=0.0.4\r\n"),
            "{head}"
        );
        assert!(
            body.contains(
                "moonwall_requests_total{tenant=\"beta\",status=\"200\",outcome=\"ok\"} 2\n"
            ),
            "{body}"
        );
        assert_eq!(body, metrics.render());

        let response = fetch(addr, "GET", "/other").await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );

        let response = fetch(addr, "POST", "/metrics").await;
        assert!(
            response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{response}"
        );
        assert!(
            response
                .to_ascii_lowercase()
                .contains("\r\nallow: get, head\r\n")
        );

        let response = fetch(addr, "HEAD", "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
