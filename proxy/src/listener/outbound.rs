//! The outbound listener (15001): every TCP connection the application opens arrives here through
//! the iptables redirect. The original destination decides what happens: an address the config
//! does not know passes through untouched; a meshed one is detected (HTTP/1.1, HTTP/2, else
//! opaque) and sent to a peer's proxy over mTLS, per request for HTTP (HTTP/1.1 on
//! [`crate::h1`]'s fast path, HTTP/2 and the rest with hyper in [`crate::hyper_glue`]) or per
//! connection for opaque TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::pipeline::{Bound, Deadline, Exchange, Failure, Picked, Plan, drive};
use crate::policy::authz::HttpAccess;
use crate::policy::routing::{Table, Target};
use crate::state::context::Context;
use crate::telemetry::metrics::Direction;
use crate::transport::deadline::{HeadWatch, splice};
use crate::transport::detect::{Detected, sniff};
use crate::transport::prefixed::Prefixed;
use crate::{h1, hyper_glue, listener};

/// Accepts outbound connections until `listener` fails ([`crate::listener::serve`]).
pub async fn serve(listener: TcpListener, context: Arc<Context>) {
    listener::serve(
        listener,
        Direction::Outbound,
        context,
        |context, stream, _peer, original| async move { handle(&context, stream, original).await },
    )
    .await;
}

async fn handle(context: &Arc<Context>, mut stream: TcpStream, original: SocketAddr) -> (u64, u64) {
    let started = Instant::now();
    let opaque = context.config.current().and_then(|loaded| {
        let target = loaded.table.lookup(original)?;
        Some(loaded.table.is_opaque(target))
    });
    let Some(opaque) = opaque else {
        return passthrough(context, stream, original, started).await;
    };
    let (protocol, prefix) = if opaque {
        (Detected::Opaque, Vec::new())
    } else {
        match sniff(&mut stream, context.detect_timeout).await {
            Ok(found) => found,
            Err(read) => return (read.len() as u64, 0),
        }
    };
    // HTTP connections are counted in requests and responses, opaque ones in bytes.
    match protocol {
        Detected::Http1 => {
            h1::serve(
                context.clone(),
                stream,
                Bound::Outbound(original),
                prefix,
                started,
            )
            .await;
            (0, 0)
        }
        Detected::Http2 => {
            let stream = Prefixed::new(prefix, stream);
            hyper_glue::serve(
                context.clone(),
                stream,
                Bound::Outbound(original),
                protocol,
                started,
            )
            .await;
            (0, 0)
        }
        _ => {
            // What detection read may be a slow HTTP/1 head (it waits only so long).
            let mut head = HeadWatch::new();
            head.feed(&prefix);
            let mut stream = Prefixed::new(prefix, stream);
            opaque_to_mesh(context, &mut stream, original, started, head).await;
            (stream.received, stream.sent)
        }
    }
}

/// Connects to `original` directly (it is not meshed) and copies both ways.
async fn passthrough(
    context: &Context,
    mut stream: TcpStream,
    original: SocketAddr,
    started: Instant,
) -> (u64, u64) {
    let Ok(mut upstream) = TcpStream::connect(original).await else {
        return (0, 0);
    };
    // Bytes are passed on as they come: Nagle's algorithm would hold a small write back until
    // the previous one is acknowledged, up to the peer's delayed-ACK timer (40 ms), which stalled
    // multiplexed HTTP/2 streams.
    let _ = upstream.set_nodelay(true);
    let limits = context.limits();
    let spliced = splice(
        &mut stream,
        &mut upstream,
        &limits,
        started,
        HeadWatch::new(),
    )
    .await;
    if let Some(expired) = spliced.expired {
        context.metrics.timed_out(Direction::Outbound, expired);
    }
    (spliced.received, spliced.sent)
}

/// Opaque TCP to a meshed destination: one endpoint per connection, over mTLS, chosen by the
/// request driver like a request's (it holds the connection for a config that lists an
/// endpoint, and lets the config go once one is chosen).
async fn opaque_to_mesh(
    context: &Arc<Context>,
    stream: &mut Prefixed<TcpStream>,
    original: SocketAddr,
    started: Instant,
    head: HeadWatch,
) {
    let mut connection = Opaque {
        context,
        stream,
        started,
        head: Some(head),
    };
    if let Err(failure) = drive(context, &Bound::Outbound(original), None, &mut connection).await {
        tracing::warn!("outbound to {original}: {failure}");
    }
}

/// An opaque connection, as the request driver sees it.
struct Opaque<'a> {
    context: &'a Context,
    stream: &'a mut Prefixed<TcpStream>,
    started: Instant,
    head: Option<HeadWatch>,
}

impl Exchange for Opaque<'_> {
    type Response = ();

    fn access(&self) -> Option<HttpAccess<'_>> {
        None
    }

    fn plan(&mut self, _table: &Table, target: Target) -> Result<Plan, Failure> {
        // No route applies to a byte stream; a request timeout or fault neither.
        Ok(Plan {
            backend: target,
            timeout: None,
            fault: None,
            route: None,
        })
    }

    async fn send(&mut self, picked: &Picked, _deadline: Option<Deadline>) -> Result<(), Failure> {
        let upstreams = &self.context.upstreams;
        let mut upstream = (upstreams.stream_to(&picked.endpoint, picked.connect_timeout, false))
            .await?
            .stream;
        let limits = self.context.limits();
        let head = self.head.take().unwrap_or_else(HeadWatch::released);
        let spliced = splice(self.stream, &mut upstream, &limits, self.started, head).await;
        if let Some(expired) = spliced.expired {
            self.context.metrics.timed_out(Direction::Outbound, expired);
        }
        let _ = upstream.shutdown().await;
        Ok(())
    }

    fn answered((): &()) -> Option<(u16, Option<u8>)> {
        None
    }

    async fn keep_for_replay(&mut self) -> Result<bool, Failure> {
        // Nothing is read before the connection is made: a failover can always go again.
        Ok(true)
    }

    fn rewind(&mut self, _discarded: Option<()>) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::time::Duration;

    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn an_open_opaque_connection_does_not_keep_a_replaced_config() {
        let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = peer.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let (mut stream, _) = peer.accept().expect("accept");
            let mut byte = [0u8; 1];
            while stream.read(&mut byte).unwrap_or(0) == 1 {
                let _ = stream.write_all(&byte);
            }
        });
        let config = |name: &str| {
            serde_json::json!({
                "version": 1,
                "workload": {"namespace": "ns", "name": name, "identity": "spiffe://t/ns/ns/sa/w"},
                "inbound": {"mtlsMode": "PERMISSIVE"},
                "destinations": [{"name": "db.ns", "clusterIps": ["10.96.0.20"],
                    "ports": [{"port": 5432, "protocol": "tcp",
                               "endpoints": [{"ip": "127.0.0.1", "port": port}]}]}],
            })
            .to_string()
            .into_bytes()
        };
        let context = Context::new(Duration::from_millis(100));
        context.config.offer(&config("w")).expect("valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut app = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (served, _) = listener.accept().await.expect("accept");
        let original = "10.96.0.20:5432".parse().expect("addr");
        let task = tokio::spawn({
            let context = context.clone();
            async move { handle(&context, served, original).await }
        });
        app.write_all(b"x").await.expect("write");
        let mut echo = [0u8; 1];
        app.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"x", "the connection is open");

        let replaced = context.config.current().expect("a config");
        context.config.offer(&config("w2")).expect("valid");
        assert_eq!(Arc::strong_count(&replaced), 1, "only this test holds it");
        drop(app);
        assert_eq!(task.await.expect("served"), (1, 1));
    }
}
