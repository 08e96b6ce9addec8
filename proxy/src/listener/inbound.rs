//! The inbound listener (15006): every TCP connection to the pod arrives here through the
//! iptables redirect. A connection whose TLS ClientHello offers the mesh's ALPN protocol
//! ([`MESH_ALPN`]) is a mesh peer: the handshake requires a certificate of the mesh CA (a foreign
//! CA or no certificate fails it) and yields the caller's SPIFFE ID. Anything else (plaintext, or
//! TLS that a client outside the mesh speaks to the application itself) is accepted only when
//! the workload's mode is PERMISSIVE or DISABLE (and refused before any config is loaded).
//!
//! Then, on a port the config does not make opaque, the proxy detects the protocol: HTTP/1.1
//! goes to the fast path ([`crate::h1`]) and, when the workload's policy decides on requests,
//! HTTP/2 to hyper ([`crate::hyper_glue`]) (otherwise HTTP/2 is copied: see
//! [`InboundParsing`]), each request through the request driver with the caller's verified
//! SPIFFE ID attached
//! ([`crate::pipeline::Bound::Inbound`]), forwarded to the application over pooled loopback
//! connections, the bytes of each request as the caller sent them. Upgrades (websockets) are
//! forwarded and then spliced. Opaque ports and anything that is not HTTP are copied to the
//! application byte for byte, as before.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use braid_proxy_config::{Limits, MtlsMode};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::pipeline::{Bound, InboundTarget, Picked, admit};
use crate::policy::authz::Caller;
use crate::policy::routing::{CompiledEndpoint, InboundParsing};
use crate::state::context::Context;
use crate::telemetry::metrics::{Direction, InboundKind};
use crate::tls::identity::{MESH_ALPN, spiffe_id};
use crate::transport::deadline::{Expired, HeadWatch, splice};
use crate::transport::detect::{Detected, sniff};
use crate::transport::prefixed::Prefixed;
use crate::{h1, hyper_glue, listener};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The most bytes peeked at for a ClientHello (a real one is under 2 KiB).
const CLIENT_HELLO_MAX: usize = 16 * 1024;

/// How long connecting to the application on loopback may take (it answers at once, or
/// refuses).
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the TLS ClientHello at the start of `bytes` offers [`MESH_ALPN`]: `None` while it is
/// incomplete, `Some(false)` for one without it or for bytes that are not a ClientHello.
pub fn offers_mesh_alpn(bytes: &[u8]) -> Option<bool> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        if acceptor.read_tls(&mut rest).is_err() {
            return Some(false);
        }
    }
    match acceptor.accept() {
        Ok(None) => None,
        Ok(Some(accepted)) => Some(
            accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == MESH_ALPN)),
        ),
        Err(_) => Some(false),
    }
}

/// Peeks (consuming nothing) at the ClientHello for up to `timeout`: does the caller offer the
/// mesh's ALPN protocol?
async fn from_mesh_peer(stream: &TcpStream, timeout: Duration) -> bool {
    let mut buf = vec![0u8; CLIENT_HELLO_MAX];
    let answer = tokio::time::timeout(timeout, async {
        let mut seen = 0;
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 || n == buf.len() {
                return Some(false);
            }
            if let Some(answer) = offers_mesh_alpn(&buf[..n]) {
                return Some(answer);
            }
            if n == seen {
                // The rest of the ClientHello is still on its way; peek returns at once.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen = n;
        }
    })
    .await;
    matches!(answer, Ok(Some(true)))
}

/// Accepts inbound connections until `listener` fails ([`crate::listener::serve`]).
pub async fn serve(listener: TcpListener, context: Arc<Context>) {
    listener::serve(
        listener,
        Direction::Inbound,
        context,
        |context, stream, peer, original| async move {
            handle(&context, stream, peer, original).await
        },
    )
    .await;
}

async fn handle(
    context: &Arc<Context>,
    mut stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
) -> (u64, u64) {
    let started = Instant::now();
    let app = SocketAddr::from((Ipv4Addr::LOCALHOST, original.port()));
    // At the end of the pod, the listener stays open while the application listens here.
    context.drain.saw_app_port(app.port());
    let (limits, mode, parsing) = match context.config.current() {
        Some(loaded) => (
            loaded.config.limits,
            loaded.config.inbound.mtls_mode,
            loaded.table.inbound(original.port()),
        ),
        None => (Limits::default(), MtlsMode::Strict, InboundParsing::Http1),
    };
    let opaque = parsing == InboundParsing::Opaque;
    // A server-speaks-first port has no request head to wait for.
    let head = || {
        if opaque {
            HeadWatch::released()
        } else {
            HeadWatch::new()
        }
    };
    let mut first = [0u8; 1];
    // A client that says nothing (a server-speaks-first protocol) is plaintext.
    let opens_with_tls = matches!(
        tokio::time::timeout(context.detect_timeout, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE
    );
    if opens_with_tls && from_mesh_peer(&stream, context.detect_timeout).await {
        let Some(identity) = context.identity.current() else {
            context.metrics.inbound(InboundKind::Refused);
            return (0, 0);
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server.clone());
        // The handshake is held to the request head's deadline: a peer that stalls in it
        // holds a descriptor like a slow head does.
        let head_deadline = started + Duration::from_millis(limits.request_head_timeout_ms);
        let mut tls = match tokio::time::timeout_at(head_deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                context.metrics.inbound(InboundKind::Refused);
                tracing::warn!("inbound mTLS from {peer} refused: {error}");
                return (0, 0);
            }
            Err(_) => {
                context.metrics.inbound(InboundKind::Refused);
                context
                    .metrics
                    .timed_out(Direction::Inbound, Expired::RequestHead);
                return (0, 0);
            }
        };
        context.metrics.inbound(InboundKind::Tls);
        // The caller's SPIFFE ID, proven by the handshake: every request carries it.
        let caller = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| spiffe_id(leaf).ok())
            .map(|(id, _)| Caller::new(id));
        if !opaque {
            return serve_http(context, tls, app, caller, parsing, &limits, started).await;
        }
        if admit::check(context, caller.as_ref(), app.port(), None).is_err() {
            let _ = tls.shutdown().await;
            return (0, 0);
        }
        let copied = to_application(
            context,
            &mut tls,
            caller.as_ref(),
            app,
            &limits,
            started,
            head(),
        )
        .await
        .unwrap_or_else(|error| {
            let caller = caller.as_ref().map_or("an unidentified peer", |c| &c.id);
            tracing::warn!("inbound from {caller}: application on {app}: {error}");
            (0, 0)
        });
        let _ = tls.shutdown().await;
        return copied;
    }
    // Plaintext, or the TLS of a client outside the mesh: the bytes go to the application as they
    // are, when the mode allows (the metric counts both as plaintext: not mesh-authenticated).
    if mode == MtlsMode::Strict {
        context.metrics.inbound(InboundKind::Refused);
        return (0, 0);
    }
    context.metrics.inbound(InboundKind::Plaintext);
    if !opaque {
        return serve_http(context, stream, app, None, parsing, &limits, started).await;
    }
    if admit::check(context, None, app.port(), None).is_err() {
        return (0, 0);
    }
    to_application(context, &mut stream, None, app, &limits, started, head())
        .await
        .unwrap_or((0, 0))
}

/// A caller's connection on a port that is not opaque: HTTP/1.1 (and HTTP/2 when `parsing`
/// says) is served request by request, anything else is copied to the application as it is.
async fn serve_http<S>(
    context: &Arc<Context>,
    mut client: S,
    app: SocketAddr,
    caller: Option<Caller>,
    parsing: InboundParsing,
    limits: &Limits,
    started: Instant,
) -> (u64, u64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (protocol, prefix) = match sniff(&mut client, context.detect_timeout).await {
        Ok(found) => found,
        Err(read) => return (read.len() as u64, 0),
    };
    let bound = |caller| {
        Bound::Inbound(Arc::new(InboundTarget {
            app: Picked {
                endpoint: Arc::new(CompiledEndpoint {
                    addr: app,
                    identity: None,
                    stats: context.config.live.endpoints.stats(app),
                    limits: None,
                }),
                connect_timeout: APP_CONNECT_TIMEOUT,
            },
            caller,
        }))
    };
    // HTTP connections are counted in requests and responses, the rest in bytes.
    match protocol {
        Detected::Http1 => {
            h1::serve(context.clone(), client, bound(caller), prefix, started).await;
            (0, 0)
        }
        // Parsed when the policy decides per request, or to tell each request of a refused
        // caller why (403, gRPC PERMISSION_DENIED) rather than close on it.
        Detected::Http2
            if parsing == InboundParsing::Http
                || admit::refuses_connection(context, caller.as_ref(), app.port()) =>
        {
            let client = Prefixed::new(prefix, client);
            hyper_glue::serve(context.clone(), client, bound(caller), protocol, started).await;
            (0, 0)
        }
        _ => {
            if admit::check(context, caller.as_ref(), app.port(), None).is_err() {
                let _ = client.shutdown().await;
                return (prefix.len() as u64, 0);
            }
            // What detection read may be a slow HTTP/1 head (it waits only so long).
            let mut head = match protocol {
                Detected::Http2 => HeadWatch::released(),
                _ => HeadWatch::new(),
            };
            head.feed(&prefix);
            let mut client = Prefixed::new(prefix, client);
            let copied = to_application(
                context,
                &mut client,
                caller.as_ref(),
                app,
                limits,
                started,
                head,
            )
            .await;
            let _ = client.shutdown().await;
            copied.map_or((0, 0), |_| (client.received, client.sent))
        }
    }
}

/// Connects to the application on `app` over loopback and copies bytes both ways until either
/// side closes, a deadline passes, or a new config refuses `caller` (authorization is decided
/// again at each swap, as Linkerd does: a connection is not grandfathered in); fails only if
/// the connection cannot be made.
async fn to_application<S>(
    context: &Context,
    client: &mut S,
    caller: Option<&Caller>,
    app: SocketAddr,
    limits: &Limits,
    started: Instant,
    head: HeadWatch,
) -> std::io::Result<(u64, u64)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut swaps = context.config.subscribe();
    let mut upstream = TcpStream::connect(app).await?;
    // Bytes are passed on as they come (Nagle would hold small writes up to 40 ms).
    upstream.set_nodelay(true)?;
    let revoked = async {
        while swaps.changed().await.is_ok() {
            if admit::check(context, caller, app.port(), None).is_err() {
                return;
            }
        }
        std::future::pending().await
    };
    let spliced = tokio::select! {
        spliced = splice(client, &mut upstream, limits, started, head) => spliced,
        () = revoked => return Ok((0, 0)),
    };
    if let Some(expired) = spliced.expired {
        context.metrics.timed_out(Direction::Inbound, expired);
    }
    Ok((spliced.received, spliced.sent))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first flight of a rustls client offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from("payment.shop").expect("name");
        let mut connection = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut bytes = Vec::new();
        connection.write_tls(&mut bytes).expect("hello");
        bytes
    }

    #[test]
    fn a_mesh_peer_is_told_from_other_tls_by_its_alpn() {
        let mesh = client_hello(&[MESH_ALPN]);
        assert_eq!(mesh[0], TLS_HANDSHAKE);
        assert_eq!(offers_mesh_alpn(&mesh), Some(true));
        assert_eq!(
            offers_mesh_alpn(&client_hello(&[b"h2", b"http/1.1"])),
            Some(false)
        );
        assert_eq!(offers_mesh_alpn(&client_hello(&[])), Some(false));
        // Half a ClientHello: wait for the rest.
        assert_eq!(offers_mesh_alpn(&mesh[..mesh.len() / 2]), None);
        // Not TLS at all.
        assert_eq!(offers_mesh_alpn(b"\x16GET / HTTP/1.1\r\n\r\n"), Some(false));
    }
}
