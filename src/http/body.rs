//! The body type every response and forwarded request uses: boxed, so streamed upstream
//! bodies and buffered rewritten bodies share one type.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, Limited};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Streams any body unbuffered.
pub(crate) fn stream<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Why a body could not be collected.
#[derive(Debug)]
pub(crate) enum CollectError {
    TooLarge,
    /// The body broke off or could not be read (the cause is not kept: it may quote bytes).
    Io,
}

/// Reads a whole body, refusing more than `limit` bytes.
pub(crate) async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, CollectError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(CollectError::TooLarge)
            } else {
                Err(CollectError::Io)
            }
        }
    }
}

/// A body that did not arrive in time ([`Timed`]).
#[derive(Debug)]
pub(crate) struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("body did not arrive in time")
    }
}

impl std::error::Error for TimedOut {}

/// How [`Timed`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The whole body must have arrived this long after the wrapper was made.
    Total(std::time::Duration),
    /// The sender may keep the reader waiting at most this long for the next frame. Time the
    /// reader itself takes (a slow client reading a streamed answer) does not count.
    Idle(std::time::Duration),
}

/// A streamed body cut off with [`TimedOut`] when its sender is too slow. `fired` is set when
/// that happens, so whoever forwarded the body can tell a slow client from a broken upstream.
pub(crate) struct Timed<B> {
    inner: B,
    limit: Limit,
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
    fired: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl<B> Timed<B> {
    pub(crate) fn new(
        inner: B,
        limit: Limit,
        fired: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) -> Timed<B> {
        let (after, armed) = match limit {
            Limit::Total(d) => (d, true),
            Limit::Idle(d) => (d, false),
        };
        Timed {
            inner,
            limit,
            timer: Box::pin(tokio::time::sleep(after)),
            armed,
            fired,
        }
    }
}

impl<B> http_body::Body for Timed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            if matches!(this.limit, Limit::Idle(_)) {
                this.armed = false;
            }
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if !this.armed {
            if let Limit::Idle(d) = this.limit {
                this.timer.as_mut().reset(tokio::time::Instant::now() + d);
            }
            this.armed = true;
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                if let Some(f) = &this.fired {
                    f.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Poll::Ready(Some(Err(Box::new(TimedOut))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a body could not be collected in time.
#[derive(Debug)]
pub(crate) enum CollectTimedError {
    Collect(CollectError),
    TimedOut,
}

/// [`collect_limited`], given up when the whole body has not arrived within `within`.
pub(crate) async fn collect_within<B>(
    body: B,
    limit: usize,
    within: std::time::Duration,
) -> Result<Bytes, CollectTimedError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match tokio::time::timeout(within, collect_limited(body, limit)).await {
        Ok(r) => r.map_err(CollectTimedError::Collect),
        Err(_) => Err(CollectTimedError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    /// One frame, then nothing ever again.
    struct Stalls(bool);

    impl http_body::Body for Stalls {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            if self.0 {
                return std::task::Poll::Pending;
            }
            self.0 = true;
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(b"{")))))
        }
    }

    #[tokio::test]
    async fn a_stalled_body_is_cut_off_after_the_idle_limit_and_says_so() {
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut b = Timed::new(
            Stalls(false),
            Limit::Idle(Duration::from_millis(50)),
            Some(fired.clone()),
        );
        let first = b.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().expect("data"), Bytes::from_static(b"{"));
        let started = std::time::Instant::now();
        let err = b.frame().await.expect("an error").expect_err("timed out");
        assert!(err.downcast_ref::<TimedOut>().is_some());
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(fired.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn idle_time_spent_by_the_reader_does_not_count() {
        let body = Full::new(Bytes::from_static(b"abc"));
        let mut b = Timed::new(body, Limit::Idle(Duration::from_millis(10)), None);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let got = b.frame().await.expect("frame").expect("data");
        assert_eq!(got.into_data().expect("data"), Bytes::from_static(b"abc"));
    }

    #[tokio::test]
    async fn collecting_gives_up_when_the_whole_body_is_late() {
        let r = collect_within(Stalls(false), 1024, Duration::from_millis(30)).await;
        assert!(matches!(r, Err(CollectTimedError::TimedOut)));
    }
}
