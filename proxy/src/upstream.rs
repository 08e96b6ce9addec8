//! Connections to peers. A meshed endpoint (one with an identity in the config) is reached over
//! mTLS with the workload's certificate, and the connection is kept only if the peer's SPIFFE ID
//! is the one the config expects; an endpoint without identity (not meshed) is reached in
//! plaintext. HTTP/1.1 connections are pooled per endpoint (idle ones reused); HTTP/2 ones are
//! shared by every request to that endpoint (multiplexed). The live load numbers of each endpoint
//! ([`EndpointStats`]) live here too, keyed by address so that they survive config reloads.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::balance::EndpointStats;
use crate::identity::spiffe_id;
use crate::reload::IdentityState;

/// Idle HTTP/1.1 connections kept per endpoint.
const IDLE_PER_ENDPOINT: usize = 512;

/// HTTP/1.1 responses with a `Content-Length` up to this are read whole before they are passed
/// on: the application then gets head and body in one write, and the connection is back in the
/// pool at once. Larger or chunked bodies stream.
const BUFFER_RESPONSES_UP_TO: u64 = 16 * 1024;

/// A response body: the peer's as it streams, or one held whole (read from the peer, or written
/// by the proxy itself).
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {message}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// The TLS handshake failed.
    #[error("mTLS handshake with {addr}: {message}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// The peer presented another identity than the config expects.
    #[error("{addr} is {found}, expected {expected}")]
    WrongPeer {
        /// The endpoint.
        addr: SocketAddr,
        /// Its SPIFFE ID.
        found: String,
        /// The config's.
        expected: String,
    },
    /// No identity is loaded yet, so no mTLS is possible.
    #[error("no workload identity loaded yet")]
    NoIdentity,
    /// HTTP failed on the connection.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// A connection to a peer: mTLS or, for an endpoint outside the mesh, plain TCP.
pub enum PeerStream {
    /// mTLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Plaintext.
    Plain(TcpStream),
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

/// Connections by endpoint, each with the identity it was verified as.
type Pool<S> = HashMap<SocketAddr, Vec<(Option<String>, S)>>;

/// Pools and endpoint numbers, shared by every connection of the proxy.
#[derive(Default)]
pub struct Upstreams {
    identity: Arc<IdentityState>,
    /// Idle connections by endpoint, each with the identity it was verified as: a connection is
    /// reused only for the identity it was checked against.
    idle_h1: Mutex<Pool<http1::SendRequest<Incoming>>>,
    h2: Mutex<Pool<http2::SendRequest<Incoming>>>,
    stats: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Upstreams {
    /// Upstreams that take the workload certificate from `identity`.
    pub fn new(identity: Arc<IdentityState>) -> Self {
        Self {
            identity,
            ..Self::default()
        }
    }

    /// The live numbers of an endpoint.
    pub fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        lock(&self.stats).entry(addr).or_default().clone()
    }

    /// Forgets every endpoint not in `keep`: its numbers and its pooled connections (requests
    /// still in flight hold their own references). Called when a config swap removes endpoints,
    /// so that a long-lived proxy does not keep one entry per pod that ever existed.
    pub fn forget_all_but(&self, keep: &HashSet<SocketAddr>) {
        lock(&self.stats).retain(|addr, _| keep.contains(addr));
        lock(&self.idle_h1).retain(|addr, _| keep.contains(addr));
        lock(&self.h2).retain(|addr, _| keep.contains(addr));
    }

    /// Endpoints with numbers kept.
    pub fn known_endpoints(&self) -> usize {
        lock(&self.stats).len()
    }

    /// Opens a connection to `addr`: mTLS checked against `identity` when the endpoint is
    /// meshed, plaintext otherwise.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        timeout: Duration,
    ) -> Result<PeerStream, UpstreamError> {
        let connect_error = |message: String| UpstreamError::Connect { addr, message };
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_error(format!("timed out after {timeout:?}")))?
            .map_err(|e| connect_error(e.to_string()))?;
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
        let idle = {
            let mut pool = lock(&self.idle_h1);
            let senders = pool.entry(addr).or_default();
            let mut found = None;
            while let Some(i) = senders
                .iter()
                .rposition(|(id, _)| id.as_deref() == identity)
            {
                let (_, sender) = senders.swap_remove(i);
                if sender.is_ready() {
                    found = Some(sender);
                    break;
                }
            }
            found
        };
        let mut sender = match idle {
            Some(sender) => sender,
            None => {
                let stream = self.connect(addr, identity, timeout).await?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(connection.with_upgrades());
                sender
            }
        };
        let response = sender.send_request(request).await?;
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
        let identity = identity.map(str::to_string);
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

    fn return_idle(
        &self,
        addr: SocketAddr,
        identity: Option<String>,
        sender: http1::SendRequest<Incoming>,
    ) {
        let mut pool = lock(&self.idle_h1);
        let senders = pool.entry(addr).or_default();
        if senders.len() < IDLE_PER_ENDPOINT {
            senders.push((identity, sender));
        }
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
                let stream = self.connect(addr, identity, timeout).await?;
                let (sender, connection) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
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
