//! Deadlines on client connections ([`braid_proxy_config::Limits`]): the time a client has to
//! send a request head, and the time a connection may stay idle. They are kept off the
//! per-request cost: a connection arms one timer and re-arms it lazily, only when it fires
//! before the deadline that is due by then (a busy keep-alive connection re-arms about once per
//! idle timeout, not once per request).
//!
//! Two shapes use them. The HTTP/1.1 fast path ([`crate::h1`]) waits for each request
//! head with a [`Watchdog`]. Byte-copying connections (opaque TCP, passthrough, the inbound
//! side, and connections served by hyper) go through [`splice`] or [`Watch::expired`]: the
//! bytes are watched as they pass ([`Watched`]), the first request head of an HTTP/1 client
//! must end in time ([`HeadWatch`]), and no byte either way for the idle time closes it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use braid_proxy_config::Limits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::transport::detect::{Detected, detect};

/// Which deadline closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// The request head did not end in time.
    RequestHead = 0,
    /// No byte either way for the idle time.
    Idle = 1,
}

/// One timer per connection, re-armed only when it fires early.
pub struct Watchdog {
    sleep: Pin<Box<Sleep>>,
}

impl Watchdog {
    /// A watchdog first armed at `at`.
    pub fn new(at: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(at)),
        }
    }

    /// Resolves at `deadline`. An armed timer that fires before it is re-armed then; one armed
    /// later is moved earlier at once (a head deadline after an idle wait: the rare case).
    pub async fn until(&mut self, deadline: Instant) {
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
        loop {
            (&mut self.sleep).await;
            if Instant::now() >= deadline {
                return;
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// Where a client's first HTTP/1 request head stands, told from its bytes as they pass (pure).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeadWatch {
    /// The first bytes, while [`detect`] cannot yet tell HTTP/1 from anything else.
    prefix: Vec<u8>,
    /// Whether the client was told to speak HTTP/1.
    told: bool,
    state: HeadState,
    /// A line feed was seen, and since then only carriage returns: another ends the head.
    after_line_feed: bool,
}

/// What [`HeadWatch`] knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HeadState {
    /// No byte from the client yet.
    #[default]
    Waiting = 0,
    /// An HTTP/1 request head has started (a method, or part of one) and not ended.
    InHead = 1,
    /// The head ended, the client does not speak HTTP/1, or the server spoke first: no head
    /// deadline from now on.
    Released = 2,
}

impl HeadState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Waiting,
            1 => Self::InHead,
            _ => Self::Released,
        }
    }
}

/// Bytes looked at to tell whether a client speaks HTTP/1 (as [`crate::listener::outbound`]'s detection).
const DETECT_BYTES: usize = 64;

impl HeadWatch {
    /// A watch that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A watch with no head to wait for (opaque ports, or hyper, which has its own deadline).
    pub fn released() -> Self {
        Self {
            state: HeadState::Released,
            ..Self::default()
        }
    }

    /// What it knows now.
    pub fn state(&self) -> HeadState {
        self.state
    }

    /// Takes the next bytes from the client.
    pub fn feed(&mut self, bytes: &[u8]) -> HeadState {
        if bytes.is_empty() || self.state == HeadState::Released {
            return self.state;
        }
        if !self.told {
            let take = bytes.len().min(DETECT_BYTES - self.prefix.len());
            self.prefix.extend_from_slice(&bytes[..take]);
            match detect(&self.prefix) {
                Detected::Http1 => {
                    self.told = true;
                    self.prefix = Vec::new();
                }
                Detected::NeedMore if self.prefix.len() < DETECT_BYTES => {}
                _ => return self.release(),
            }
            self.state = HeadState::InHead;
        }
        // Each byte is looked at once; a method's letters hold no line feed.
        for &byte in bytes {
            match byte {
                b'\n' if self.after_line_feed => return self.release(),
                b'\n' => self.after_line_feed = true,
                b'\r' => {}
                _ => self.after_line_feed = false,
            }
        }
        self.state
    }

    /// No head deadline from now on.
    pub fn release(&mut self) -> HeadState {
        self.state = HeadState::Released;
        self.prefix = Vec::new();
        self.state
    }
}

/// What a watched connection shares between its two directions and its watchdog: when it
/// started, when a byte last passed, and where its first request head stands.
#[derive(Debug)]
pub struct Watch {
    started: Instant,
    /// Milliseconds after `started` when a byte last passed.
    last_activity_ms: AtomicU64,
    head: AtomicU8,
}

impl Watch {
    /// A watch of a connection that started at `started`.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            last_activity_ms: AtomicU64::new(0),
            head: AtomicU8::new(HeadState::Waiting as u8),
        }
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    fn head_state(&self) -> HeadState {
        HeadState::from_u8(self.head.load(Ordering::Relaxed))
    }

    fn last_activity(&self) -> Instant {
        self.started + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    /// Resolves when a deadline of `limits` passes: while the first request head is under way,
    /// its deadline (counted from the connection's start); always, the idle time since the last
    /// byte. A client that has sent nothing yet is looked at again every head timeout, so that
    /// a head it starts late is still held to its deadline.
    pub async fn expired(&self, limits: &Limits) -> Expired {
        let head_timeout = Duration::from_millis(limits.request_head_timeout_ms);
        let head_deadline = self.started + head_timeout;
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        let mut watchdog = Watchdog::new(head_deadline.min(self.started + idle));
        loop {
            let now = Instant::now();
            let idle_deadline = self.last_activity() + idle;
            let deadline = match self.head_state() {
                HeadState::Released => idle_deadline,
                HeadState::InHead => head_deadline.min(idle_deadline),
                HeadState::Waiting if now < head_deadline => head_deadline.min(idle_deadline),
                HeadState::Waiting => (now + head_timeout).min(idle_deadline),
            };
            watchdog.until(deadline).await;
            let now = Instant::now();
            if self.head_state() == HeadState::InHead && now >= head_deadline {
                return Expired::RequestHead;
            }
            if now >= self.last_activity() + idle {
                return Expired::Idle;
            }
        }
    }
}

/// A stream whose traffic is watched: each read or write that moves bytes counts as activity,
/// and on the client side the bytes read feed the [`HeadWatch`]. Counts the bytes too.
pub struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
    head: Option<HeadWatch>,
    /// Bytes read from the stream.
    pub received: u64,
    /// Bytes written to it.
    pub sent: u64,
}

impl<S> Watched<S> {
    /// The client side of a connection: its bytes tell where its first request head stands
    /// (`head`: [`HeadWatch::new`], or [`HeadWatch::released`] for none).
    pub fn client(inner: S, watch: Arc<Watch>, head: HeadWatch) -> Self {
        watch.head.store(head.state() as u8, Ordering::Relaxed);
        Self {
            inner,
            watch,
            head: Some(head),
            received: 0,
            sent: 0,
        }
    }

    /// The other side: its bytes count as activity only.
    pub fn upstream(inner: S, watch: Arc<Watch>) -> Self {
        Self {
            inner,
            watch,
            head: None,
            received: 0,
            sent: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if !new.is_empty() {
            this.received += new.len() as u64;
            this.watch.touch();
            match &mut this.head {
                Some(head) if head.state() != HeadState::Released => {
                    if this.watch.head_state() == HeadState::Released {
                        head.release();
                    } else {
                        let state = head.feed(new);
                        this.watch.head.store(state as u8, Ordering::Relaxed);
                    }
                }
                Some(_) => {}
                // The server spoke before the client said anything: a server-speaks-first
                // protocol, which has no request head to wait for.
                None => {
                    let _ = this.watch.head.compare_exchange(
                        HeadState::Waiting as u8,
                        HeadState::Released as u8,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    crate::transport::write_through_inner!(|this: &mut Self| this.watch.touch());
}

/// How a watched splice ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes received from the client.
    pub received: u64,
    /// Bytes sent to it.
    pub sent: u64,
    /// The deadline that closed it, if one did.
    pub expired: Option<Expired>,
}

/// Copies bytes both ways between `client` and `upstream` until either side closes or a
/// deadline of `limits` passes (the connection started at `started`); `head` is how the
/// client's first request head is watched.
pub async fn splice<C, U>(
    client: &mut C,
    upstream: &mut U,
    limits: &Limits,
    started: Instant,
    head: HeadWatch,
) -> Spliced
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let watch = Arc::new(Watch::new(started));
    let mut client = Watched::client(client, watch.clone(), head);
    let mut upstream = Watched::upstream(upstream, watch.clone());
    let expired = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => None,
        expired = watch.expired(limits) => Some(expired),
    };
    Spliced {
        received: client.received,
        sent: client.sent,
        expired,
    }
}

#[cfg(test)]
mod tests;
