//! The API's connections: a listener whose streams time out clients that are
//! too slow, so a slowloris client (a request head trickling in a byte at a
//! time) or a connection left idle cannot hold a socket forever.
//!
//! `axum::serve` gives no access to hyper's `header_read_timeout` (it needs
//! a timer axum does not set), so the rule is enforced on the stream itself:
//! once a request's first bytes have arrived, the request must be read and
//! answered within [`REQUEST_TIMEOUT`]; a connection with nothing in flight
//! is closed after [`IDLE_TIMEOUT`]; a response the client does not read is
//! abandoned after [`REQUEST_TIMEOUT`] without progress. So that no slow
//! handler is cut off without an answer, [`deadline`] answers 503 after
//! [`HANDLER_TIMEOUT`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// From a request's first byte to the first byte of its response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A kept-alive connection with no request in flight.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Every handler answers within this (503 otherwise), so its response
/// starts before [`REQUEST_TIMEOUT`] closes the connection.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(25);

/// Middleware bounding a handler by [`HANDLER_TIMEOUT`].
pub async fn deadline(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let path = req.uri().path().to_string();
    match tokio::time::timeout(HANDLER_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(path = %path, "An API request took too long and was answered 503.");
            axum::response::IntoResponse::into_response(super::ApiError::unavailable(format!(
                "{path} took longer than {} s (a store or database is slow to answer); try again",
                HANDLER_TIMEOUT.as_secs()
            )))
        }
    }
}

/// A TCP listener whose connections are [`Guarded`].
pub struct GuardedListener(pub TcpListener);

/// The client's address, for handlers (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Listener for GuardedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        let (io, addr) = Listener::accept(&mut self.0).await;
        (Guarded::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, GuardedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A connection that fails its pending read or write with `TimedOut` once
/// the client is too slow (see the module doc); hyper then closes it.
pub struct Guarded {
    inner: TcpStream,
    /// When the bytes of a request not answered yet began to arrive.
    request_since: Option<Instant>,
    /// The last time bytes moved either way.
    last_progress: Instant,
    timer: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(inner: TcpStream) -> Guarded {
        let now = Instant::now();
        Guarded {
            inner,
            request_since: None,
            last_progress: now,
            timer: Box::pin(tokio::time::sleep_until(now + IDLE_TIMEOUT)),
        }
    }

    /// Polls the timer for `deadline`; `Ready` with an error once it passed.
    fn expired(&mut self, deadline: Instant, cx: &mut Context<'_>, what: &str) -> Poll<io::Error> {
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!(what, "Closed an API connection whose client was too slow.");
                Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, format!("API client too slow: {what}")))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote(&mut self, n: usize) {
        if n > 0 {
            self.request_since = None;
            self.last_progress = Instant::now();
        }
    }

    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let deadline = self.last_progress + REQUEST_TIMEOUT;
        self.expired(deadline, cx, "response not read").map(Err)
    }
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    this.request_since.get_or_insert(now);
                    this.last_progress = now;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let (deadline, what) = match this.request_since {
                    Some(t) => (t + REQUEST_TIMEOUT, "request not complete"),
                    None => (this.last_progress + IDLE_TIMEOUT, "idle"),
                };
                this.expired(deadline, cx, what).map(Err)
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                this.wrote(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.write_pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
