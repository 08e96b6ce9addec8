//! The inbound listener (15006): every TCP connection to the pod arrives here through the
//! iptables redirect. A connection that opens with a TLS record is a mesh peer: the handshake
//! requires a certificate of the mesh CA (a foreign CA or no certificate fails it) and yields
//! the caller's SPIFFE ID. Anything else is plaintext, accepted only when the workload's mode is
//! PERMISSIVE or DISABLE (and refused before any config is loaded). Either way the bytes then go
//! to the application on the original port over loopback, untouched: HTTP stays HTTP end to end,
//! with its keep-alive, HTTP/2 streams and upgrades.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use braid_proxy_config::MtlsMode;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::context::Context;
use crate::identity::spiffe_id;
use crate::metrics::{Direction, InboundKind};
use crate::outbound::{original_destination, splice};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Accepts inbound connections until `listener` fails.
pub async fn serve(listener: TcpListener, context: Arc<Context>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let context = context.clone();
        tokio::spawn(async move {
            let Ok(original) = original_destination(&stream) else {
                return;
            };
            let _ = stream.set_nodelay(true);
            context.metrics.opened(Direction::Inbound);
            let (received, sent) = handle(&context, stream, peer, original).await;
            context.metrics.closed(Direction::Inbound, received, sent);
        });
    }
}

async fn handle(
    context: &Context,
    mut stream: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
) -> (u64, u64) {
    let app = SocketAddr::from((Ipv4Addr::LOCALHOST, original.port()));
    let mut first = [0u8; 1];
    // A client that says nothing (a server-speaks-first protocol) is plaintext.
    let opens_with_tls = matches!(
        tokio::time::timeout(context.detect_timeout, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE
    );
    if opens_with_tls {
        let Some(identity) = context.identity.current() else {
            context.metrics.inbound(InboundKind::Refused);
            return (0, 0);
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server.clone());
        let mut tls = match acceptor.accept(stream).await {
            Ok(tls) => tls,
            Err(error) => {
                context.metrics.inbound(InboundKind::Refused);
                tracing::warn!("inbound mTLS from {peer} refused: {error}");
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
        let copied = splice(&mut tls, app).await.unwrap_or_else(|error| {
            tracing::warn!("inbound from {caller}: application on {app}: {error}");
            (0, 0)
        });
        let _ = tls.shutdown().await;
        return copied;
    }
    let mode = context
        .config
        .current()
        .map_or(MtlsMode::Strict, |loaded| loaded.config.inbound.mtls_mode);
    if mode == MtlsMode::Strict {
        context.metrics.inbound(InboundKind::Refused);
        return (0, 0);
    }
    context.metrics.inbound(InboundKind::Plaintext);
    splice(&mut stream, app).await.unwrap_or((0, 0))
}
