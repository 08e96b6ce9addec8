//! HTTP with hyper, on both listeners: serves HTTP/2 connections (outbound, and inbound where
//! the workload's policy decides on requests), and the HTTP/1.1 ones the fast path
//! ([`crate::h1`]) handed over. Each request goes through the request
//! driver ([`crate::pipeline::drive()`]) with the config in force at that moment (so a weight
//! change applies to open keep-alive connections too); this module only reads its facts and
//! sends it with hyper's client. Upgrades (websockets) are forwarded on a dedicated connection
//! and then spliced.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Either;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::h1::message::HOP_BY_HOP;
use crate::pipeline::decide::{self, Picked, Plan, Rolls};
use crate::pipeline::{
    Bound, Deadline, Exchange, ExchangeCause, Failure, Held, Protocol, RequestRecord,
    UNPROCESSED_HEADER, UpstreamError, drive, respond,
};
use crate::policy::authz::HttpAccess;
use crate::policy::retry::REPLAY_BODY_LIMIT;
use crate::policy::routing::{RequestFacts, Table, Target};
use crate::state::context::Context;
use crate::state::follow::TargetMemo;
use crate::transport::deadline::{HeadWatch, Watch, Watched};
use crate::transport::detect::Detected;
use crate::upstream::{KeptBody, RequestBody, Upstreams};

pub use crate::upstream::ProxyBody;

/// Serves one client connection, its requests bound as `bound` says, as HTTP of the detected
/// version, until it ends or a deadline passes: hyper's own for HTTP/1.1 request heads (which
/// also counts the wait for the next request on a keep-alive connection), and the idle time,
/// with no byte either way, for both versions. The connection started at `started`.
pub async fn serve<S>(
    context: Arc<Context>,
    stream: S,
    bound: Bound,
    version: Detected,
    started: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = context.limits();
    let watch = Arc::new(Watch::new(started));
    let direction = bound.direction();
    let service = {
        let context = context.clone();
        // The connection's destination, looked up once per config (its streams share it).
        let memo = Arc::new(TargetMemo::default());
        hyper::service::service_fn(move |request| {
            let context = context.clone();
            let bound = bound.clone();
            let memo = memo.clone();
            async move { Ok::<_, Infallible>(handle(&context, &bound, &memo, request).await) }
        })
    };
    let io = TokioIo::new(Watched::client(
        stream,
        watch.clone(),
        HeadWatch::released(),
    ));
    // At the end of the pod: GOAWAY (HTTP/2), or close once the request under way is answered
    // (HTTP/1.1); the requests under way finish.
    let mut drain = context.drain.subscribe();
    let served = async {
        match version {
            Detected::Http2 => {
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service);
                until_drained(connection, &mut drain, |c| c.graceful_shutdown()).await;
            }
            _ => {
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(limits.request_head_timeout_ms))
                    .serve_connection(io, service)
                    .with_upgrades();
                until_drained(connection, &mut drain, |c| c.graceful_shutdown()).await;
            }
        }
    };
    tokio::select! {
        () = served => {}
        expired = watch.expired(&limits) => {
            context.metrics.timed_out(direction, expired);
        }
    }
}

/// Serves `connection` to its end; when the drain starts, asks it to shut down gracefully and
/// lets it finish.
async fn until_drained<C: Future>(
    connection: C,
    drain: &mut tokio::sync::watch::Receiver<bool>,
    shutdown: impl FnOnce(std::pin::Pin<&mut C>),
) {
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = drain.wait_for(|draining| *draining) => {}
    }
    shutdown(connection.as_mut());
    let _ = connection.await;
}

async fn handle(
    context: &Arc<Context>,
    bound: &Bound,
    memo: &TargetMemo,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut record = RequestRecord::start(&context.metrics, bound.direction());
    let protocol = Protocol::of(request.version(), request.headers());
    let mut exchange = HyperRequest {
        upstreams: &context.upstreams,
        request: Some(request.map(RequestBody::from)),
        kept: None,
    };
    let held = match bound {
        Bound::Outbound(original) => context.config.current().map(|config| {
            let target = memo.target(&config, *original);
            Held { config, target }
        }),
        Bound::Inbound(_) => None,
    };
    match drive(context, bound, held, &mut exchange).await {
        Ok(response) => {
            record.responded(response.status().as_u16());
            response
        }
        Err(failure) => {
            let response = respond::response(&failure, protocol);
            record.failed(response.status().as_u16(), &failure);
            response
        }
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        })
}

/// One request on hyper's path.
struct HyperRequest<'c> {
    upstreams: &'c Arc<Upstreams>,
    /// The request, until it is sent.
    request: Option<Request<RequestBody>>,
    /// Its head and whole body, kept to be sent again (a retry policy applies).
    kept: Option<(Request<()>, KeptBody)>,
}

impl HyperRequest<'_> {
    /// The request to send, without its hop-by-hop headers unless it is an `upgrade`.
    fn take(&mut self, upgrade: bool) -> Result<Request<RequestBody>, Failure> {
        let mut request = self.request.take().ok_or(Failure::ClientGone)?;
        if !upgrade {
            let headers = request.headers_mut();
            for name in HOP_BY_HOP {
                headers.remove(name);
            }
            if headers
                .get(header::TE)
                .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
            {
                headers.remove(header::TE);
            }
        }
        Ok(request)
    }
}

/// `response`, unless a mesh peer's proxy says in it that its application did not get the
/// request ([`crate::pipeline::UNPROCESSED_HEADER`]): then a failure that lets the request go
/// to another endpoint (when a copy of it was kept: hyper's client consumed it).
fn processed(
    response: Response<ProxyBody>,
    addr: std::net::SocketAddr,
    identity: Option<&str>,
) -> Result<Response<ProxyBody>, Failure> {
    if identity.is_some()
        && response.status().is_server_error()
        && response.headers().contains_key(UNPROCESSED_HEADER)
    {
        let cause = ExchangeCause::Unprocessed("its application is not listening");
        return Err(Failure::Upstream(UpstreamError::Exchange { addr, cause }));
    }
    Ok(response)
}

/// A copy of `request`'s line and headers.
fn head_of<B>(request: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    head
}

impl Exchange for HyperRequest<'_> {
    type Response = Response<ProxyBody>;

    fn access(&self) -> Option<HttpAccess<'_>> {
        self.request.as_ref().map(|request| HttpAccess {
            method: request.method().as_str(),
            path: request.uri().path(),
        })
    }

    fn plan(&mut self, table: &Table, target: Target) -> Result<Plan, Failure> {
        let request = self.request.as_ref().ok_or(Failure::ClientGone)?;
        let headers = request.headers();
        let header_value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let facts = RequestFacts {
            method: request.method().as_str(),
            path: request.uri().path(),
            header: &header_value,
        };
        decide::plan(table, target, &facts, Rolls::draw())
    }

    async fn send(
        &mut self,
        peer: &Picked,
        deadline: Option<Deadline>,
    ) -> Result<Response<ProxyBody>, Failure> {
        let endpoint = &*peer.endpoint;
        let (addr, identity) = (endpoint.addr, endpoint.identity.as_deref());
        let timeout = peer.connect_timeout;
        let (h2, upgrade) = {
            let request = self.request.as_ref().ok_or(Failure::ClientGone)?;
            let h2 = request.version() == Version::HTTP_2;
            (h2, !h2 && is_upgrade(request.headers()))
        };
        let upstreams = self.upstreams;
        // The connection first: a failure to connect leaves the request unsent, here, so that
        // it can go to another endpoint.
        if h2 {
            let connect = async {
                (upstreams.http2_sender(endpoint, timeout).await).map_err(Failure::of_upstream)
            };
            let mut sender = Deadline::bound(deadline, pin!(connect)).await?;
            let request = self.take(false)?;
            let send = async {
                match sender.send_request(request).await {
                    Ok(response) => Ok(response.map(Either::Left)),
                    Err(error) => Err(Failure::of_upstream(error.into())),
                }
            };
            let response = Deadline::bound(deadline, pin!(send)).await?;
            return processed(response, addr, identity);
        }
        let connect = async {
            (upstreams.http1_sender(endpoint, timeout).await).map_err(Failure::of_upstream)
        };
        let connection = Deadline::bound(deadline, pin!(connect)).await?;
        let mut request = self.take(upgrade)?;
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        // Boxed: its future is the largest of a hyper request's, and in place it would be
        // part of every HTTP/2 stream's (this path takes only what the fast path hands over).
        let send = async {
            (Box::pin(upstreams.send_http1(connection, addr, timeout, request, upgrade)).await)
                .map_err(Failure::of_upstream)
        };
        let mut response = processed(Deadline::bound(deadline, pin!(send)).await?, addr, identity)?;
        if let Some(downstream) = downstream_upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                if let (Ok(down), Ok(up)) = (downstream.await, upstream.await) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(down),
                        &mut TokioIo::new(up),
                    )
                    .await;
                }
            });
        }
        Ok(response)
    }

    fn answered(response: &Response<ProxyBody>) -> Option<(u16, Option<u8>)> {
        let grpc = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Some((response.status().as_u16(), grpc))
    }

    async fn keep_for_replay(&mut self) -> Result<bool, Failure> {
        let Some(request) = self.request.as_mut() else {
            return Ok(false);
        };
        if is_upgrade(request.headers()) {
            return Ok(false);
        }
        match request.body_mut().keep(REPLAY_BODY_LIMIT).await {
            Ok(Some(body)) => {
                self.kept = Some((head_of(request), body));
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(error) => Err(Failure::BadRequest(error.to_string())),
        }
    }

    fn rewind(&mut self, discarded: Option<Response<ProxyBody>>) -> bool {
        drop(discarded);
        if let Some((head, body)) = &self.kept {
            let mut again = Request::new(body.replay());
            *again.method_mut() = head.method().clone();
            *again.uri_mut() = head.uri().clone();
            *again.version_mut() = head.version();
            *again.headers_mut() = head.headers().clone();
            self.request = Some(again);
        }
        // Without a copy, the request is still here only if the attempt failed to connect
        // (a pooled connection's replay may have consumed it).
        self.request.is_some()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A gRPC call through hyper's path to `original`: its response head and whether its body
    /// ended at once (trailers-only).
    async fn call(context: &Arc<Context>, original: &str) -> (Response<Incoming>, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (served, _) = listener.accept().await.expect("accept");
        let original = original.parse().expect("addr");
        tokio::spawn(serve(
            context.clone(),
            served,
            Bound::Outbound(original),
            Detected::Http2,
            tokio::time::Instant::now(),
        ));
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        let request = Request::post("http://payment.shop/shop.Payment/Charge")
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02hi")))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let ended = hyper::body::Body::is_end_stream(response.body());
        (response, ended)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_grpc_caller_gets_the_cause_of_a_proxy_failure_as_its_grpc_status() {
        // A peer that accepts connections and never answers: the route's timeout passes.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let silent_port = silent.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let config = serde_json::json!({
            "version": 1,
            "workload": {"namespace": "shop", "name": "order",
                         "identity": "spiffe://cluster.local/ns/shop/sa/order"},
            "inbound": {"mtlsMode": "PERMISSIVE"},
            "destinations": [
                {"name": "empty.shop", "clusterIps": ["10.96.0.30"],
                 "ports": [{"port": 9000, "protocol": "http2", "endpoints": []}]},
                {"name": "slow.shop", "clusterIps": ["10.96.0.31"],
                 "ports": [{"port": 9000, "protocol": "http2",
                            "endpoints": [{"ip": "127.0.0.1", "port": silent_port}]}],
                 "routes": [{"backends": [{"destination": "slow.shop", "weight": 100}],
                             "timeoutMs": 100}]},
            ],
        });
        let context = Context::new(Duration::from_millis(100));
        context
            .config
            .offer(config.to_string().as_bytes())
            .expect("valid");
        for (original, code, message) in [
            // After the 3 s wait for a config that lists an endpoint.
            (
                "10.96.0.30:9000",
                "14",
                "empty.shop has no endpoint on port 9000",
            ),
            ("10.96.0.31:9000", "4", "no response within 100 ms"),
        ] {
            let (response, ended) = call(&context, original).await;
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "gRPC answers in grpc-status"
            );
            let headers = response.headers();
            assert_eq!(headers["grpc-status"], code, "{original}: {headers:?}");
            assert_eq!(headers["grpc-message"], message, "{original}");
            assert_eq!(headers[crate::pipeline::PROXY_ERROR_HEADER], message);
            assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
            assert!(ended, "trailers-only: the stream ends with the head");
            let body = response.into_body().collect().await.expect("body");
            assert!(body.to_bytes().is_empty());
        }
        let mut metrics = String::new();
        context.metrics.render(&mut metrics);
        for line in [
            "braid_proxy_request_failures_total{direction=\"outbound\",response_flag=\"UH\"} 1",
            "braid_proxy_request_failures_total{direction=\"outbound\",response_flag=\"UT\"} 1",
            "braid_proxy_responses_total{direction=\"outbound\",status=\"200\"} 2",
        ] {
            assert!(metrics.contains(line), "{line} missing:\n{metrics}");
        }
    }
}
