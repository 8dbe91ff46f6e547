//! Reading an S3 object's body without hanging and without giving up at the
//! first broken connection.
//!
//! The SDK's timeouts end when the response headers arrive: a body that
//! stops flowing afterwards (a stalled link, a load balancer that holds the
//! connection) would block a download forever, and a connection reset
//! mid-body is returned to the caller as is, not retried. [`Resuming`]
//! wraps the body: waiting `io_timeout` for a byte counts as a break (time
//! the caller takes between reads does not count), and a break
//! (timeout, reset, early end) re-requests the rest with
//! `Range: bytes=<offset>-` and `If-Match: <ETag>` (so a replaced object is
//! never spliced onto the old one), up to `max_attempts - 1` times in a row
//! without progress; a resumed connection that delivered at least
//! [`PROGRESS`] bytes before breaking resets the count. When the attempts
//! are spent, the read fails with an error that says where and why.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A break after this many bytes since the last one is progress.
const PROGRESS: u64 = 256 << 10;

type Body = Box<dyn AsyncRead + Send + Unpin>;
type Reopen = Pin<Box<dyn Future<Output = Result<Body, String>> + Send>>;

/// Where the object is and how patient to be.
pub(super) struct Source {
    pub client: Client,
    pub place: String,
    pub bucket: String,
    /// Full object key.
    pub key: String,
    pub etag: Option<String>,
    /// The object's length from the first response, when known.
    pub total: Option<u64>,
    pub io_timeout: Duration,
    pub max_attempts: u32,
}

enum State {
    Reading(Body),
    Reopening(Reopen),
    Failed(String),
}

/// An [`AsyncRead`] over an object's body that resumes after breaks.
pub(super) struct Resuming {
    src: Source,
    state: State,
    idle: Pin<Box<Sleep>>,
    /// Whether `idle` runs: it starts when the body first has nothing to
    /// give, so a reader that is slow to ask (backpressure) is no stall.
    waiting: bool,
    offset: u64,
    since_break: u64,
    breaks_without_progress: u32,
}

impl Resuming {
    pub fn new(src: Source, body: Body) -> Resuming {
        let idle = Box::pin(tokio::time::sleep(src.io_timeout));
        Resuming {
            src,
            state: State::Reading(body),
            idle,
            waiting: false,
            offset: 0,
            since_break: 0,
            breaks_without_progress: 0,
        }
    }

    /// Records a break and starts re-requesting the rest, or fails for good.
    fn broke(&mut self, cause: String) {
        if self.since_break < PROGRESS {
            self.breaks_without_progress += 1;
        } else {
            self.breaks_without_progress = 1;
        }
        self.since_break = 0;
        let of = self.src.total.map(|t| format!(" of {t}")).unwrap_or_default();
        if self.breaks_without_progress >= self.src.max_attempts {
            self.state = State::Failed(format!(
                "S3 {}: GetObject {}: the download broke off at byte {}{of} ({cause}), {} times in a row without progress; check the network to the store (or raise [store] io_timeout / max_attempts) and retry",
                self.src.place, self.src.key, self.offset, self.breaks_without_progress
            ));
            return;
        }
        tracing::warn!(key = %self.src.key, offset = self.offset, cause = %cause, "S3 download broke off; resuming.");
        let backoff = Duration::from_millis(200) * 2u32.pow(self.breaks_without_progress.min(6) - 1);
        let client = self.src.client.clone();
        let (bucket, key, etag) = (self.src.bucket.clone(), self.src.key.clone(), self.src.etag.clone());
        let (offset, place) = (self.offset, self.src.place.clone());
        self.state = State::Reopening(Box::pin(async move {
            tokio::time::sleep(backoff).await;
            let out = client
                .get_object()
                .bucket(bucket)
                .key(&key)
                .range(format!("bytes={offset}-"))
                .set_if_match(etag)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "S3 {place}: GetObject {key} from byte {offset} to resume the download: {}",
                        DisplayErrorContext(&e)
                    )
                })?;
            Ok(Box::new(out.body.into_async_read()) as Body)
        }));
    }
}

impl AsyncRead for Resuming {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Failed(msg) => return Poll::Ready(Err(io::Error::other(msg.clone()))),
                State::Reopening(fut) => match ready!(fut.as_mut().poll(cx)) {
                    Ok(body) => {
                        this.state = State::Reading(body);
                        this.waiting = false;
                    }
                    // The SDK already retried the request itself.
                    Err(msg) => this.state = State::Failed(msg),
                },
                State::Reading(body) => {
                    let before = buf.filled().len();
                    match Pin::new(body).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) => {
                            let n = (buf.filled().len() - before) as u64;
                            if n == 0 && this.src.total.is_some_and(|t| this.offset < t) {
                                this.broke("the connection ended early".into());
                                continue;
                            }
                            this.offset += n;
                            this.since_break += n;
                            this.waiting = false;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(e)) => {
                            this.waiting = false;
                            this.broke(error_chain(&e));
                        }
                        Poll::Pending => {
                            if !this.waiting {
                                this.waiting = true;
                                this.idle.as_mut().reset(Instant::now() + this.src.io_timeout);
                            }
                            ready!(this.idle.as_mut().poll(cx));
                            this.waiting = false;
                            this.broke(format!("no data for {:?}", this.src.io_timeout));
                        }
                    }
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        cur = c.source();
    }
    s
}
