//! The body of a request sent with hyper's client ([`RequestBody`]): the client's as it
//! streams, after the frames that were read ahead to keep it for a retry, or a body kept whole
//! and sent again. Keeping waits at most [`KEEP_GRACE`] for the client's frames
//! ([`RequestBody::keep`]), so a streaming call is held back no longer than that; a body that
//! has not ended by then, or is over the limit, is sent as it comes and not retried.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt as _;

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// How long keeping a body may wait for the client's next frames: a unary call's body follows
/// its head at once, or after the 40 ms of Nagle's algorithm meeting a delayed ACK on a client
/// without `TCP_NODELAY`; a streaming call that waits for its response is held back this long,
/// once.
pub const KEEP_GRACE: Duration = Duration::from_millis(50);

/// A request body: frames read ahead (or kept), then the rest of the client's body if any.
#[derive(Debug, Default)]
pub struct RequestBody {
    ahead: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<Incoming>,
}

/// A body kept whole, to be sent again.
#[derive(Clone, Debug, Default)]
pub struct KeptBody {
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl KeptBody {
    /// A body to send again.
    pub fn replay(&self) -> RequestBody {
        RequestBody {
            ahead: self.data.iter().cloned().collect(),
            trailers: self.trailers.clone(),
            rest: None,
        }
    }
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        Self {
            ahead: VecDeque::new(),
            trailers: None,
            rest: Some(body),
        }
    }
}

impl RequestBody {
    /// The whole body, if the frames that have arrived by now hold all of it within `limit`
    /// bytes; else `None`, and the frames read stay in front of the rest. A malformed body is
    /// an error.
    pub async fn keep(&mut self, limit: u64) -> Result<Option<KeptBody>, hyper::Error> {
        let grace = tokio::time::Instant::now() + KEEP_GRACE;
        loop {
            let Some(rest) = self.rest.as_mut() else {
                return Ok(Some(KeptBody {
                    data: self.ahead.iter().cloned().collect(),
                    trailers: self.trailers.clone(),
                }));
            };
            if rest.is_end_stream() {
                self.rest = None;
                continue;
            }
            let kept: u64 = self.ahead.iter().map(|b| b.len() as u64).sum();
            if kept > limit || rest.size_hint().lower() > limit - kept {
                return Ok(None);
            }
            // Dropping the wait loses nothing: a frame is taken only when it is there.
            let Ok(next) = tokio::time::timeout_at(grace, rest.frame()).await else {
                return Ok(None);
            };
            match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.ahead.push_back(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
                Some(Err(error)) => return Err(error),
                None => self.rest = None,
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(data) = this.ahead.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(rest) = this.rest.as_mut() {
            match Pin::new(rest).poll_frame(cx) {
                Poll::Ready(None) => this.rest = None,
                other => return other,
            }
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let ahead: u64 = self.ahead.iter().map(|b| b.len() as u64).sum();
        let Some(rest) = &self.rest else {
            return SizeHint::with_exact(ahead);
        };
        let rest = rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + ahead);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
    }
}
