//! A connection to a peer, mTLS or plain, as one stream type that carries its count against
//! the destination's `maxConnections`, and its check for reuse.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::policy::breaker::{ConnectionSlot, DestinationState};

/// A connection to a peer, counted open against its destination's `maxConnections` for as
/// long as it lives.
pub struct PeerStream {
    io: PeerIo,
    slot: ConnectionSlot,
}

/// A connection's transport: mTLS or, for an endpoint outside the mesh, plain TCP.
pub(super) enum PeerIo {
    /// mTLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Plaintext.
    Plain(TcpStream),
}

impl PeerStream {
    /// `io`, counted by `slot`.
    pub(super) fn new(io: PeerIo, slot: ConnectionSlot) -> Self {
        Self { io, slot }
    }

    /// Takes its count (for a connection that replaces it): it counts no more.
    pub fn take_slot(&mut self) -> ConnectionSlot {
        std::mem::take(&mut self.slot)
    }

    /// Whether it counts against `state`'s connections.
    pub(super) fn is_of(&self, state: &Arc<DestinationState>) -> bool {
        self.slot.is_of(state)
    }

    /// Whether an idle connection may carry a request: its peer has neither closed it nor sent
    /// anything since the last response (which would be a protocol error). Costs no system call
    /// unless the socket has become readable.
    pub(super) fn still_open(&mut self) -> bool {
        let tcp = match &mut self.io {
            PeerIo::Tls(tls) => {
                let (tcp, session) = tls.get_mut();
                match session.process_new_packets() {
                    Ok(state)
                        if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
                    _ => return false,
                }
                &*tcp
            }
            PeerIo::Plain(tcp) => &*tcp,
        };
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        tcp.poll_peek(&mut cx, &mut buf).is_pending()
    }
}

impl super::pool::Pooled for PeerStream {
    fn went_idle(&self) {
        if let Some(state) = self.slot.destination() {
            state.free_connection();
        }
    }
}

/// A connection taken for a request: pooled, or new.
pub struct IdleStream {
    /// The identity it was verified as (to give back with it).
    pub identity: Option<String>,
    /// The connection.
    pub stream: PeerStream,
    /// How long it sat in the pool; `None`: a new connection.
    pub idle_for: Option<Duration>,
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PeerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PeerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PeerIo::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PeerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
