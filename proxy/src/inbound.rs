//! The inbound listener (15006): every TCP connection to the pod arrives here through the
//! iptables redirect. A connection whose TLS ClientHello offers the mesh's ALPN protocol
//! ([`MESH_ALPN`]) is a mesh peer: the handshake requires a certificate of the mesh CA (a foreign
//! CA or no certificate fails it) and yields the caller's SPIFFE ID. Anything else (plaintext, or
//! TLS that a client outside the mesh speaks to the application itself) is accepted only when
//! the workload's mode is PERMISSIVE or DISABLE (and refused before any config is loaded). Either
//! way the bytes then go to the application on the original port over loopback, untouched: HTTP
//! stays HTTP end to end, with its keep-alive, HTTP/2 streams and upgrades.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use braid_proxy_config::{Limits, MtlsMode};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::context::Context;
use crate::deadline::{Expired, HeadWatch, splice};
use crate::identity::{MESH_ALPN, spiffe_id};
use crate::listen;
use crate::metrics::{Direction, InboundKind};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The most bytes peeked at for a ClientHello (a real one is under 2 KiB).
const CLIENT_HELLO_MAX: usize = 16 * 1024;

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

/// Accepts inbound connections until `listener` fails ([`listen::serve`]).
pub async fn serve(listener: TcpListener, context: Arc<Context>) {
    listen::serve(
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
    context: &Context,
    mut stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
) -> (u64, u64) {
    let started = Instant::now();
    let app = SocketAddr::from((Ipv4Addr::LOCALHOST, original.port()));
    let (limits, mode, opaque) = match context.config.current() {
        Some(loaded) => (
            loaded.config.limits,
            loaded.config.inbound.mtls_mode,
            loaded.config.opaque_ports.contains(&original.port()),
        ),
        None => (Limits::default(), MtlsMode::Strict, false),
    };
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
        // The caller's SPIFFE ID, proven by the handshake. Authorization rules (not enforced
        // yet) will decide on it; for now it names the caller when the application is down.
        let caller = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| spiffe_id(leaf).ok())
            .map_or_else(|| "an unidentified peer".to_string(), |(id, _)| id);
        let copied = to_application(context, &mut tls, app, &limits, started, head())
            .await
            .unwrap_or_else(|error| {
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
    to_application(context, &mut stream, app, &limits, started, head())
        .await
        .unwrap_or((0, 0))
}

/// Connects to the application on `app` over loopback and copies bytes both ways until either
/// side closes or a deadline passes; fails only if the connection cannot be made.
async fn to_application<S>(
    context: &Context,
    client: &mut S,
    app: SocketAddr,
    limits: &Limits,
    started: Instant,
    head: HeadWatch,
) -> std::io::Result<(u64, u64)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut upstream = TcpStream::connect(app).await?;
    // Bytes are passed on as they come (Nagle would hold small writes up to 40 ms).
    upstream.set_nodelay(true)?;
    let spliced = splice(client, &mut upstream, limits, started, head).await;
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
