//! Connections to peers. A meshed endpoint (one with an identity in the config) is reached over
//! mTLS with the workload's certificate, and the connection is kept only if the peer's SPIFFE ID
//! is the one the config expects; an endpoint without identity (not meshed) is reached in
//! plaintext. HTTP/1.1 connections are pooled per endpoint (idle ones reused); HTTP/2 ones are
//! shared by every request to that endpoint (multiplexed). Failures keep their cause
//! ([`UpstreamError`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::balance::lock;
use crate::identity::spiffe_id;
use crate::pipeline::failure::closed_before_response;
pub use crate::pipeline::{ConnectCause, UpstreamError};
use crate::reload::IdentityState;

/// Idle HTTP/1.1 connections kept per endpoint.
const IDLE_PER_ENDPOINT: usize = 512;

/// How long an HTTP/1.1 connection may sit idle in the pool before it is closed (Go's HTTP
/// client keeps them 90 s, hyper's pooled client 90 s).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A pooled connection idle this long may have been closed by its peer: an idempotent request
/// without body sent on it keeps a copy to send again on a new connection.
pub const REPLAY_AFTER_IDLE: Duration = Duration::from_millis(250);

/// HTTP/1.1 responses with a `Content-Length` up to this are read whole before they are passed
/// on: the application then gets head and body in one write, and the connection is back in the
/// pool at once. Larger or chunked bodies stream.
const BUFFER_RESPONSES_UP_TO: u64 = 16 * 1024;

/// A response body: the peer's as it streams, or one held whole (read from the peer, or written
/// by the proxy itself).
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// A connection to a peer: mTLS or, for an endpoint outside the mesh, plain TCP.
pub enum PeerStream {
    /// mTLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Plaintext.
    Plain(TcpStream),
}

impl PeerStream {
    /// Whether an idle connection may carry a request: its peer has neither closed it nor sent
    /// anything since the last response (which would be a protocol error). Costs no system call
    /// unless the socket has become readable.
    fn still_open(&mut self) -> bool {
        let tcp = match self {
            Self::Tls(tls) => {
                let (tcp, session) = tls.get_mut();
                match session.process_new_packets() {
                    Ok(state)
                        if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {}
                    _ => return false,
                }
                &*tcp
            }
            Self::Plain(tcp) => &*tcp,
        };
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        tcp.poll_peek(&mut cx, &mut buf).is_pending()
    }
}

/// A pooled connection taken for a request.
pub struct IdleStream {
    /// The identity it was verified as (to give back with it).
    pub identity: Option<String>,
    /// The connection.
    pub stream: PeerStream,
    /// How long it sat in the pool.
    pub idle_for: Duration,
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Whether `request` may be sent a second time: an idempotent method (RFC 9110 §9.2.2) and no
/// body. Go's HTTP client replays requests on the same rule.
fn replayable(request: &Request<Incoming>) -> bool {
    use hyper::body::Body as _;
    crate::h1_message::is_idempotent(request.method().as_str()) && request.body().is_end_stream()
}

/// The request line and headers of a body-less `request`, to send again.
fn head_copy(request: &Request<Incoming>) -> Request<ProxyBody> {
    let mut copy = Request::new(Either::Right(Full::new(Bytes::new())));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Connections by endpoint, each with the identity it was verified as.
type Pool<S> = HashMap<SocketAddr, Vec<(Option<String>, S)>>;

/// Idle connections by endpoint, each with the identity it was verified as (a connection is
/// reused only for that identity) and the time it went idle.
type IdlePool<S> = Mutex<Pool<(S, Instant)>>;

/// Takes the most recently pooled connection to `addr` verified as `identity` that `usable`
/// accepts (those it refuses are dropped): with its identity and how long it sat idle.
fn take_idle<S>(
    pool: &IdlePool<S>,
    addr: SocketAddr,
    identity: Option<&str>,
    mut usable: impl FnMut(&mut S) -> bool,
) -> Option<(Option<String>, S, Duration)> {
    let mut pool = lock(pool);
    let idle = pool.get_mut(&addr)?;
    while let Some(i) = idle.iter().rposition(|(id, _)| id.as_deref() == identity) {
        let (id, (mut connection, since)) = idle.swap_remove(i);
        if usable(&mut connection) {
            return Some((id, connection, since.elapsed()));
        }
    }
    None
}

/// Pools `connection` to `addr`, verified as `identity`, unless the endpoint has
/// [`IDLE_PER_ENDPOINT`] already.
fn put_idle<S>(pool: &IdlePool<S>, addr: SocketAddr, identity: Option<String>, connection: S) {
    let mut pool = lock(pool);
    let idle = pool.entry(addr).or_default();
    if idle.len() < IDLE_PER_ENDPOINT {
        idle.push((identity, (connection, Instant::now())));
    }
}

/// Closes the connections of `pool` idle for `idle` or longer.
fn close_idle_in<S>(pool: &IdlePool<S>, idle: Duration) {
    for connections in lock(pool).values_mut() {
        connections.retain(|(_, (_, since))| since.elapsed() < idle);
    }
}

/// Pools and endpoint numbers, shared by every connection of the proxy.
#[derive(Default)]
pub struct Upstreams {
    identity: Arc<IdentityState>,
    /// Idle HTTP/1.1 connections of hyper's client.
    idle_h1: IdlePool<http1::SendRequest<ProxyBody>>,
    /// Idle connections of the HTTP/1.1 fast path ([`crate::h1_forward`]): the streams
    /// themselves, which nothing reads while they wait.
    idle_streams: IdlePool<PeerStream>,
    h2: Mutex<Pool<http2::SendRequest<Incoming>>>,
}

impl Upstreams {
    /// Upstreams that take the workload certificate from `identity`.
    pub fn new(identity: Arc<IdentityState>) -> Self {
        Self {
            identity,
            ..Self::default()
        }
    }

    /// Forgets the pooled connections of every endpoint not in `keep` (requests still in
    /// flight hold their own). Called when a config swap removes endpoints, so that a
    /// long-lived proxy does not keep connections to pods that are gone.
    /// Connections to the application on loopback (the inbound side's) are always kept.
    pub fn forget_all_but(&self, keep: &HashSet<SocketAddr>) {
        let kept = |addr: &SocketAddr| addr.ip().is_loopback() || keep.contains(addr);
        lock(&self.idle_h1).retain(|addr, _| kept(addr));
        lock(&self.idle_streams).retain(|addr, _| kept(addr));
        lock(&self.h2).retain(|addr, _| kept(addr));
    }

    /// Closes the pooled HTTP/1.1 connections idle for `idle` or longer (each holds its TLS and
    /// read buffers, and a burst can leave hundreds).
    pub fn close_idle(&self, idle: Duration) {
        close_idle_in(&self.idle_h1, idle);
        close_idle_in(&self.idle_streams, idle);
    }

    /// Pooled HTTP/1.1 connections, across endpoints.
    pub fn idle_connections(&self) -> usize {
        lock(&self.idle_h1).values().map(Vec::len).sum::<usize>()
            + lock(&self.idle_streams)
                .values()
                .map(Vec::len)
                .sum::<usize>()
    }

    /// An idle connection to `addr` verified as `identity`, if the pool has one its peer has
    /// not closed. The most recently used comes first.
    pub fn take_idle_stream(&self, addr: SocketAddr, identity: Option<&str>) -> Option<IdleStream> {
        take_idle(&self.idle_streams, addr, identity, PeerStream::still_open).map(
            |(identity, stream, idle_for)| IdleStream {
                identity,
                stream,
                idle_for,
            },
        )
    }

    /// Puts a connection whose last response was read whole back in the pool.
    pub fn return_idle_stream(
        &self,
        addr: SocketAddr,
        identity: Option<String>,
        stream: PeerStream,
    ) {
        put_idle(&self.idle_streams, addr, identity, stream);
    }

    /// Opens a connection to `addr`: mTLS checked against `identity` when the endpoint is
    /// meshed, plaintext otherwise.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        timeout: Duration,
    ) -> Result<PeerStream, UpstreamError> {
        let connect_error = |cause: ConnectCause| UpstreamError::Connect { addr, cause };
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_error(ConnectCause::TimedOut(timeout)))?
            .map_err(|e| connect_error(e.into()))?;
        let _ = tcp.set_nodelay(true);
        let Some(expected) = identity else {
            return Ok(PeerStream::Plain(tcp));
        };
        let own = self.identity.current().ok_or(UpstreamError::NoIdentity)?;
        let connector = tokio_rustls::TlsConnector::from(own.client.clone());
        let handshake = connector.connect(ServerName::IpAddress(addr.ip().into()), tcp);
        let tls = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| UpstreamError::Handshake {
                addr,
                message: format!("timed out after {timeout:?}"),
            })?
            .map_err(|e| UpstreamError::Handshake {
                addr,
                message: e.to_string(),
            })?;
        let found = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| spiffe_id(leaf).map(|(id, _)| id))
            .unwrap_or_else(|| Err("no certificate".into()))
            .unwrap_or_else(|e| format!("unidentified ({e})"));
        if found != expected {
            return Err(UpstreamError::WrongPeer {
                addr,
                found,
                expected: expected.to_string(),
            });
        }
        Ok(PeerStream::Tls(Box::new(tls)))
    }

    /// Sends an HTTP/1.1 request on an idle pooled connection or a new one. Unless `upgrade`
    /// (the connection then becomes the upgraded stream), the connection returns to the pool once
    /// the response has been read.
    pub async fn send_http1(
        self: &Arc<Self>,
        addr: SocketAddr,
        identity: Option<&str>,
        timeout: Duration,
        request: Request<Incoming>,
        upgrade: bool,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        // Pooled connections were ready when they went in; one the peer has closed since is
        // dropped when met. The most recently used comes first, so this is O(1) as a rule.
        let idle = take_idle(&self.idle_h1, addr, identity, |sender| sender.is_ready());
        // The identity goes back into the pool with the connection (allocated once per
        // connection, not per request). Opening a connection is boxed: its future (TCP connect,
        // TLS handshake) is large, and would otherwise be moved with every request's future.
        let (identity_key, mut sender, idle_for) = match idle {
            Some(pooled) => pooled,
            None => (
                identity.map(str::to_string),
                Box::pin(self.open_http1(addr, identity, timeout)).await?,
                Duration::ZERO,
            ),
        };
        // A peer may have closed a pooled connection that sat idle (its FIN in, not yet read):
        // a request that can safely go twice keeps a copy of its head to go again on a new one.
        // Busy connections skip the copy: servers close idle connections after seconds.
        let replay = (idle_for >= REPLAY_AFTER_IDLE && !upgrade && replayable(&request))
            .then(|| head_copy(&request));
        let response = match sender.send_request(request.map(Either::Left)).await {
            Ok(response) => response,
            Err(error) => match replay {
                Some(again) if closed_before_response(&error) => {
                    sender = Box::pin(self.open_http1(addr, identity, timeout)).await?;
                    sender.send_request(again).await?
                }
                _ => return Err(error.into()),
            },
        };
        if upgrade {
            // The connection becomes the upgraded stream; it never returns to the pool.
            return Ok(response.map(Either::Left));
        }
        let small = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|length| length <= BUFFER_RESPONSES_UP_TO);
        let response = if small {
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Response::from_parts(parts, Either::Right(Full::new(body)))
        } else {
            response.map(Either::Left)
        };
        let identity = identity_key;
        if sender.is_ready() {
            self.return_idle(addr, identity, sender);
        } else {
            // A streamed body: the connection is free once the application has read it.
            let pools = self.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    pools.return_idle(addr, identity, sender);
                }
            });
        }
        Ok(response)
    }

    /// A new HTTP/1.1 connection to `addr`, its connection task spawned.
    async fn open_http1(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        timeout: Duration,
    ) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
        let stream = self.connect(addr, identity, timeout).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection.with_upgrades());
        Ok(sender)
    }

    fn return_idle(
        &self,
        addr: SocketAddr,
        identity: Option<String>,
        sender: http1::SendRequest<ProxyBody>,
    ) {
        put_idle(&self.idle_h1, addr, identity, sender);
    }

    /// Sends an HTTP/2 request on the endpoint's shared connection, opening it if needed.
    pub async fn send_http2(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        timeout: Duration,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let shared = lock(&self.h2).get_mut(&addr).and_then(|senders| {
            senders.retain(|(_, s)| !s.is_closed());
            senders
                .iter()
                .find(|(id, _)| id.as_deref() == identity)
                .map(|(_, s)| s.clone())
        });
        let mut sender = match shared {
            Some(sender) => sender,
            None => {
                // Boxed: the connect future is large and the shared connection is the rule.
                let (sender, connection) = Box::pin(async {
                    let stream = self.connect(addr, identity, timeout).await?;
                    Ok::<_, UpstreamError>(
                        http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?,
                    )
                })
                .await?;
                tokio::spawn(connection);
                lock(&self.h2)
                    .entry(addr)
                    .or_default()
                    .push((identity.map(str::to_string), sender.clone()));
                sender
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(request).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use http_body_util::Empty;

    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// Reads one request head (the requests here have no body).
    fn read_head(stream: &mut std::net::TcpStream) {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            seen.push(byte[0]);
        }
    }

    /// `n` empty bodies of the type the proxy forwards (hyper's `Incoming`), taken from the
    /// responses of a throwaway server.
    async fn incoming_bodies(n: usize) -> Vec<Incoming> {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            for _ in 0..n {
                read_head(&mut stream);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            }
        });
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut bodies = Vec::new();
        for _ in 0..n {
            let request = Request::get("/")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            bodies.push(response.into_body());
        }
        bodies
    }

    /// A peer that answers one request, closes that connection while it is idle when told to,
    /// then answers one more request on a new connection (if one comes).
    fn closing_peer() -> (SocketAddr, mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (close_first, closed) = mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let (mut first, _) = listener.accept().expect("accept");
            read_head(&mut first);
            first.write_all(OK).expect("write");
            closed.recv().expect("signal");
            drop(first);
            listener.set_nonblocking(true).expect("nonblocking");
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while std::time::Instant::now() < deadline {
                if let Ok((mut second, _)) = listener.accept() {
                    second.set_nonblocking(false).expect("blocking");
                    read_head(&mut second);
                    return second.write_all(OK).is_ok();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        });
        (addr, close_first, peer)
    }

    /// Sends a first request, lets the peer close the pooled connection, and sends a second
    /// with `method` before the proxy's thread can notice; the second's result.
    async fn after_the_peer_closed(method: hyper::Method) -> Result<u16, UpstreamError> {
        let (addr, close_first, peer) = closing_peer();
        let upstreams = Arc::new(Upstreams::default());
        let mut bodies = incoming_bodies(2).await.into_iter();
        let mut request = |method: hyper::Method| {
            Request::builder()
                .method(method)
                .uri("/")
                .header("host", "peer")
                .body(bodies.next().expect("body"))
                .expect("request")
        };
        let timeout = Duration::from_secs(5);
        let first = upstreams
            .send_http1(addr, None, timeout, request(hyper::Method::GET), false)
            .await
            .expect("first");
        assert_eq!(first.status(), 200);
        close_first.send(()).expect("signal");
        // Block the runtime so that the pooled connection's task cannot read the peer's FIN
        // before the next request takes the connection (the race under test), for longer than
        // a busy connection's idle time.
        std::thread::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(50));
        let second = upstreams
            .send_http1(addr, None, timeout, request(method), false)
            .await
            .map(|response| response.status().as_u16());
        let _ = peer.join();
        second
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_pooled_connections_are_closed_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            read_head(&mut stream);
            let _ = stream.write_all(OK);
            // Held open until the proxy closes it.
            let _ = stream.read(&mut [0u8; 1]);
        });
        let upstreams = Arc::new(Upstreams::default());
        let body = incoming_bodies(1).await.pop().expect("body");
        let request = Request::get("/").header("host", "peer").body(body);
        let response = upstreams
            .send_http1(
                addr,
                None,
                Duration::from_secs(5),
                request.expect("request"),
                false,
            )
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        assert_eq!(upstreams.idle_connections(), 1);
        upstreams.close_idle(POOL_IDLE_TIMEOUT);
        assert_eq!(upstreams.idle_connections(), 1, "closed before its time");
        upstreams.close_idle(Duration::ZERO);
        assert_eq!(upstreams.idle_connections(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idempotent_request_on_a_connection_the_peer_closed_goes_again_on_a_new_one() {
        let second = after_the_peer_closed(hyper::Method::GET).await;
        assert_eq!(second.expect("served on a new connection"), 200);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_that_may_not_go_twice_is_not_sent_again() {
        let second = after_the_peer_closed(hyper::Method::POST).await;
        assert!(second.is_err(), "a POST was replayed: {second:?}");
    }
}
