//! Accepting TCP connections and serving HTTP/1.1 on them, with the deadlines a server facing
//! the internet needs, which `axum::serve` does not set (it gives hyper no timer):
//!
//! - a request's headers must arrive within [`HEADER_READ`], counted from when the connection
//!   starts waiting for them, so a connection that sends nothing, half a request line or
//!   headers without their end, or that sits idle between kept-alive requests, is closed;
//! - a request body that stalls for [`BODY_IDLE`] fails the read, and the request with it;
//! - a response sent before the request's body was read says `Connection: close`, so the
//!   client does not send its next request on a connection the server will not read further.
//!
//! Shutdown stops accepting, lets every connection finish the request it is serving, and
//! closes them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request};
use axum::response::Response;
use futures_util::future::Either;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use tower_http::timeout::TimeoutBody;

/// How long a client has to send a request's headers (and how long a kept-alive connection may
/// sit idle).
pub const HEADER_READ: Duration = Duration::from_secs(10);

/// How long a request body may send nothing before its read fails.
pub const BODY_IDLE: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` until `shutdown` resolves, then drains the connections.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (done, mut all_done) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // the listener itself is fine; try again shortly.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let mut stopped = stopped.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ)
                .serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(PerConnection { service, peer }),
                );
            tokio::pin!(conn);
            let stopping = async {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = stopping => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    // The request being served finishes; no other is read.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(done);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(done);
    // Every connection task holds a sender: `recv` ends when the last has finished.
    let _ = all_done.recv().await;
    Ok(())
}

/// The service as one connection sees it: the peer's address for `ConnectInfo`, request bodies
/// with an idle deadline, and `Connection: close` on a response sent before its request's body
/// was read.
#[derive(Clone)]
struct PerConnection<S> {
    service: S,
    peer: SocketAddr,
}

impl<S> Service<Request<Incoming>> for PerConnection<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        tower::util::Oneshot<S, Request<Body>>,
        Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        let service = self.service.clone();
        if body.is_end_stream() {
            // No body (most reads): nothing to time out or to track.
            let req = Request::from_parts(parts, Body::new(body));
            return Either::Left(service.oneshot(req));
        }
        let read = Arc::new(AtomicBool::new(false));
        let body = Body::new(Tracked {
            inner: TimeoutBody::new(BODY_IDLE, body),
            read: read.clone(),
        });
        Either::Right(Box::pin(async move {
            let mut res = service.oneshot(Request::from_parts(parts, body)).await?;
            if !read.load(Ordering::Acquire) {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(res)
        }))
    }
}

pin_project_lite::pin_project! {
    /// A request body that records when it has been read to its end.
    struct Tracked<B> {
        #[pin]
        inner: B,
        read: Arc<AtomicBool>,
    }
}

impl<B: HttpBody> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.read.store(true, Ordering::Release);
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
