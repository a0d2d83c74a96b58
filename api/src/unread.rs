//! A response sent before its request body was read to the end says
//! `Connection: close` (RFC 9112 §9.6).
//!
//! hyper, the API's HTTP server, keeps such a connection only when the rest
//! of the body is already in its buffer; otherwise it closes the connection
//! after a head that promised keep-alive, and a client that reused it (the
//! proxy pools its connections to the API) would send its next request into
//! a closing socket. With the header, a keep-alive answer means what the
//! proxy takes it to mean: the whole body was read and the connection is in
//! step.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderValue, header};
use http_body::{Frame, SizeHint};

/// Middleware: `Connection: close` on a response whose request body was not
/// read to its end.
pub async fn close_unless_body_read(req: Request, next: Next) -> Response {
    let read = Arc::new(AtomicBool::new(req.body().is_end_stream()));
    let watched = read.clone();
    let req = req.map(|inner| {
        Body::new(Watched {
            inner,
            read: watched,
        })
    });
    let mut resp = next.run(req).await;
    if !read.load(Ordering::Acquire) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A request body that notes when it has been read to its end.
struct Watched {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
