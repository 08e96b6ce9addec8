//! Connections to peers, and to the application on loopback (the inbound side's). A meshed endpoint (one with an identity in the config) is reached over
//! mTLS with the workload's certificate, and the connection is kept only if the peer's SPIFFE ID
//! is the one the config expects; an endpoint without identity (not meshed) is reached in
//! plaintext. HTTP/1.1 connections are pooled per endpoint (idle ones reused); HTTP/2 ones are
//! shared by every request to that endpoint (multiplexed). Every connection to a destination
//! counts against its `maxConnections` while it is open ([`limit`]); HTTP/2's one per endpoint
//! is opened past it, as Envoy does, since no request could reach the endpoint without it.
//! Failures keep their cause ([`UpstreamError`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::pipeline::failure::closed_before_response;
pub use crate::pipeline::{ConnectCause, UpstreamError};
use crate::policy::balance::lock;

mod body;
mod limit;
mod pool;
mod stream;

pub use body::{KeptBody, RequestBody};

use crate::policy::breaker::{ConnectionLimits, ConnectionSlot, DestinationState};
use crate::policy::routing::CompiledEndpoint;
use crate::state::reload::IdentityState;
use crate::tls::identity::spiffe_id;
use limit::{Room, room};
use pool::{IdlePool, Pool, Pooled, close_idle_in, evict_one, put_idle, take_idle};
use stream::PeerIo;
pub use stream::{IdleStream, PeerStream};

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

/// Whether `request` may be sent a second time: an idempotent method (RFC 9110 §9.2.2) and no
/// body. Go's HTTP client replays requests on the same rule.
fn replayable(request: &Request<RequestBody>) -> bool {
    use hyper::body::Body as _;
    crate::h1::message::is_idempotent(request.method().as_str()) && request.body().is_end_stream()
}

/// The request line and headers of a body-less `request`, to send again.
fn head_copy(request: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::default());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// An HTTP/1.1 connection taken for one request, with the identity it was verified as and how
/// long it sat idle in the pool.
pub struct Http1Sender {
    identity: Option<String>,
    connection: Http1Connection,
    idle_for: Duration,
}

/// An HTTP/1.1 connection of hyper's client: its sender, and the limits of the destination it
/// counts against (its slot lives with the stream, in the connection's task).
struct Http1Connection {
    sender: http1::SendRequest<RequestBody>,
    limits: Option<Arc<ConnectionLimits>>,
}

impl Http1Connection {
    fn is_of(&self, state: &Arc<DestinationState>) -> bool {
        self.limits
            .as_ref()
            .is_some_and(|limits| Arc::ptr_eq(&limits.state, state))
    }
}

impl Pooled for Http1Connection {
    fn went_idle(&self) {
        if let Some(limits) = &self.limits {
            limits.state.free_connection();
        }
    }
}

/// Pools and endpoint numbers, shared by every connection of the proxy.
#[derive(Default)]
pub struct Upstreams {
    identity: Arc<IdentityState>,
    /// Idle HTTP/1.1 connections of hyper's client.
    idle_h1: IdlePool<Http1Connection>,
    /// Idle connections of the HTTP/1.1 fast path ([`crate::h1`]): the streams
    /// themselves, which nothing reads while they wait.
    idle_streams: IdlePool<PeerStream>,
    h2: Mutex<Pool<http2::SendRequest<RequestBody>>>,
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
                idle_for: Some(idle_for),
            },
        )
    }

    /// A connection to `endpoint` for a request or a TCP stream: a new one, within its
    /// destination's `maxConnections` ([`limit`]); or, when `pooled` and one to the endpoint
    /// went idle while the request waited, that one.
    pub async fn stream_to(
        &self,
        endpoint: &CompiledEndpoint,
        timeout: Duration,
        pooled: bool,
    ) -> Result<IdleStream, UpstreamError> {
        let addr = endpoint.addr;
        let identity = endpoint.identity.as_deref();
        let reuse = || {
            pooled
                .then(|| self.take_idle_stream(addr, identity))
                .flatten()
        };
        let evict = |state: &Arc<DestinationState>| self.evict_idle_of(state);
        match room(endpoint.limits.as_deref(), timeout, reuse, evict).await? {
            Room::Reuse(idle) => Ok(idle),
            Room::Open(slot) => Ok(IdleStream {
                identity: identity.map(str::to_string),
                stream: self.connect(addr, identity, timeout, slot).await?,
                idle_for: None,
            }),
        }
    }

    /// Closes one idle connection of the destination `state` counts, if the pools have one:
    /// whether they had.
    fn evict_idle_of(&self, state: &Arc<DestinationState>) -> bool {
        // Dropped outside the pools' locks.
        if let Some(stream) = evict_one(&self.idle_streams, |s| s.is_of(state)) {
            drop(stream);
            return true;
        }
        // Its connection's task ends, and frees the slot, once it sees the sender gone.
        evict_one(&self.idle_h1, |c| c.is_of(state)).is_some()
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

    /// Opens a connection to `addr`, counted by `slot`: mTLS checked against `identity` when
    /// the endpoint is meshed, plaintext otherwise.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        timeout: Duration,
        slot: ConnectionSlot,
    ) -> Result<PeerStream, UpstreamError> {
        let connect_error = |cause: ConnectCause| UpstreamError::Connect { addr, cause };
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_error(ConnectCause::TimedOut(timeout)))?
            .map_err(|e| connect_error(e.into()))?;
        let _ = tcp.set_nodelay(true);
        let Some(expected) = identity else {
            return Ok(PeerStream::new(PeerIo::Plain(tcp), slot));
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
        Ok(PeerStream::new(PeerIo::Tls(Box::new(tls)), slot))
    }

    /// An HTTP/1.1 connection to `endpoint` for one request: an idle pooled one or a new one,
    /// within its destination's `maxConnections`. (A connect failure leaves the request
    /// unsent, so that it can go to another endpoint.)
    pub async fn http1_sender(
        &self,
        endpoint: &CompiledEndpoint,
        timeout: Duration,
    ) -> Result<Http1Sender, UpstreamError> {
        let (addr, identity) = (endpoint.addr, endpoint.identity.as_deref());
        // Pooled connections were ready when they went in; one the peer has closed since is
        // dropped when met. The most recently used comes first, so this is O(1) as a rule.
        let take = || take_idle(&self.idle_h1, addr, identity, |c| c.sender.is_ready());
        if let Some((identity, connection, idle_for)) = take() {
            return Ok(Http1Sender {
                identity,
                connection,
                idle_for,
            });
        }
        // The identity goes back into the pool with the connection (allocated once per
        // connection, not per request). Opening a connection is boxed: its future (waiting
        // for room, TCP connect, TLS handshake) is large, and would otherwise be moved with
        // every request's future.
        Box::pin(async {
            let evict = |state: &Arc<DestinationState>| self.evict_idle_of(state);
            let limits = endpoint.limits.as_ref();
            Ok(
                match room(limits.map(|l| &**l), timeout, take, evict).await? {
                    Room::Reuse((identity, connection, idle_for)) => Http1Sender {
                        identity,
                        connection,
                        idle_for,
                    },
                    Room::Open(slot) => Http1Sender {
                        identity: identity.map(str::to_string),
                        connection: Http1Connection {
                            sender: self.open_http1(addr, identity, timeout, slot).await?,
                            limits: limits.cloned(),
                        },
                        idle_for: Duration::ZERO,
                    },
                },
            )
        })
        .await
    }

    /// Sends an HTTP/1.1 request on `connection` (from [`Self::http1_sender`]). Unless
    /// `upgrade` (the connection then becomes the upgraded stream), the connection returns to
    /// the pool once the response has been read.
    pub async fn send_http1(
        self: &Arc<Self>,
        connection: Http1Sender,
        addr: SocketAddr,
        timeout: Duration,
        request: Request<RequestBody>,
        upgrade: bool,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let Http1Sender {
            identity: identity_key,
            connection: Http1Connection { mut sender, limits },
            idle_for,
        } = connection;
        let identity = identity_key.as_deref();
        // A peer may have closed a pooled connection that sat idle (its FIN in, not yet read):
        // a request that can safely go twice keeps a copy of its head to go again on a new one.
        // Busy connections skip the copy: servers close idle connections after seconds.
        let replay = (idle_for >= REPLAY_AFTER_IDLE && !upgrade && replayable(&request))
            .then(|| head_copy(&request));
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => match replay {
                Some(again) if closed_before_response(&error) => {
                    // The closed connection's slot is freed as its task ends: past
                    // `maxConnections`, this one waits for it.
                    let evict = |state: &Arc<DestinationState>| self.evict_idle_of(state);
                    let reopen = async {
                        let slot = limit::slot(limits.as_deref(), timeout, evict).await?;
                        self.open_http1(addr, identity, timeout, slot).await
                    };
                    sender = Box::pin(reopen).await?;
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
        let connection = Http1Connection { sender, limits };
        if connection.sender.is_ready() {
            put_idle(&self.idle_h1, addr, identity, connection);
        } else {
            // A streamed body: the connection is free once the application has read it.
            let pools = self.clone();
            tokio::spawn(async move {
                let mut connection = connection;
                if connection.sender.ready().await.is_ok() {
                    put_idle(&pools.idle_h1, addr, identity, connection);
                }
            });
        }
        Ok(response)
    }

    /// A new HTTP/1.1 connection to `addr`, counted by `slot`, its connection task spawned.
    async fn open_http1(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        timeout: Duration,
        slot: ConnectionSlot,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let stream = self.connect(addr, identity, timeout, slot).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection.with_upgrades());
        Ok(sender)
    }

    /// The endpoint's shared HTTP/2 connection, opened if needed (counted, but past
    /// `maxConnections` if need be) and ready for a request.
    pub async fn http2_sender(
        &self,
        endpoint: &CompiledEndpoint,
        timeout: Duration,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let (addr, identity) = (endpoint.addr, endpoint.identity.as_deref());
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
                    let slot = (endpoint.limits.as_ref())
                        .map(|limits| limits.state.open_connection_anyway())
                        .unwrap_or_default();
                    let stream = self.connect(addr, identity, timeout, slot).await?;
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
        Ok(sender)
    }
}

#[cfg(test)]
mod tests;
