//! Outbound HTTP with hyper: serves the application's HTTP/2 connections, and the HTTP/1.1 ones
//! the fast path ([`crate::h1_forward`]) handed over, and forwards each request on its own: the
//! route of the config in force at that moment (so a weight change applies to open keep-alive
//! connections too), a weighted backend, an endpoint chosen by the destination's balancer, fault
//! injection and the request timeout (`plan`, `inject` and `choose_endpoint`, which the
//! fast path shares). Upgrades (websockets) are forwarded on a dedicated connection and then
//! spliced.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::balance;
use crate::context::Context;
use crate::deadline::{HeadWatch, Watch, Watched};
use crate::detect::Detected;
use crate::h1_message::HOP_BY_HOP;
use crate::routing::{RequestFacts, Target};
use crate::upstream::UpstreamError;

pub use crate::upstream::ProxyBody;

/// How long a request to a backend with no endpoint listed yet waits for a config that lists
/// one before it fails with 503 (Linkerd queues such requests for up to 3 s too): the endpoint
/// list lags pod readiness by the operator's write and the kubelet's volume sync.
pub(crate) const HOLD_FOR_ENDPOINTS: Duration = Duration::from_secs(3);

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    #[error("no proxy config loaded yet")]
    NotReady,
    #[error("{0} is no longer a meshed destination")]
    Gone(SocketAddr),
    #[error("route of {0} has no backend with weight")]
    NoBackend(String),
    #[error("{name} has no endpoint on port {port}")]
    NoEndpoints { name: String, port: u16 },
    #[error("upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("no response within {0} ms")]
    Timeout(u64),
    #[error("fault injected")]
    Abort(u16),
    /// The client's request was malformed (its body, for one): the client's fault, not the
    /// peer's.
    #[error("malformed request: {0}")]
    BadRequest(String),
}

impl Failure {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::NotReady | Self::NoBackend(_) | Self::NoEndpoints { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Gone(_) | Self::Upstream(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Abort(status) => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// The failure of sending a request to its peer: the client's when reading the client's
    /// request body failed (a malformed chunk, a body cut short), else the peer's.
    fn of_upstream(error: UpstreamError) -> Self {
        match &error {
            UpstreamError::Http(e) if request_body_failed(e) => Self::BadRequest(e.to_string()),
            _ => Self::Upstream(error),
        }
    }

    pub(crate) fn response(&self) -> Response<ProxyBody> {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!(
            "braid-proxy: {self}\n"
        )))));
        *response.status_mut() = self.status();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    }
}

/// Serves one application connection to `original` as HTTP of the detected version, until it
/// ends or a deadline passes: hyper's own for HTTP/1.1 request heads (which also counts the
/// wait for the next request on a keep-alive connection), and the idle time, with no byte
/// either way, for both versions. The connection started at `started`.
pub async fn serve<S>(
    context: Arc<Context>,
    stream: S,
    original: SocketAddr,
    version: Detected,
    started: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = context.limits();
    let watch = Arc::new(Watch::new(started));
    let service = {
        let context = context.clone();
        hyper::service::service_fn(move |request| {
            let context = context.clone();
            async move { Ok::<_, Infallible>(handle(&context, original, request).await) }
        })
    };
    let io = TokioIo::new(Watched::client(
        stream,
        watch.clone(),
        HeadWatch::released(),
    ));
    let served = async {
        let _ = match version {
            Detected::Http2 => {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            }
            _ => {
                hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_millis(limits.request_head_timeout_ms))
                    .serve_connection(io, service)
                    .with_upgrades()
                    .await
            }
        };
    };
    tokio::select! {
        () = served => {}
        expired = watch.expired(&limits) => {
            context.metrics.timed_out(crate::metrics::Direction::Outbound, expired);
        }
    }
}

async fn handle(
    context: &Arc<Context>,
    original: SocketAddr,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    context.metrics.request();
    let response = forward(context, original, request)
        .await
        .unwrap_or_else(|failure| failure.response());
    context
        .metrics
        .response(response.status().as_u16(), started.elapsed());
    response
}

/// Whether hyper's client failed because the request body it was sending did: that body is
/// the application's request as hyper's server reads it, so its error is a hyper error too.
fn request_body_failed(error: &hyper::Error) -> bool {
    std::error::Error::source(error).is_some_and(|cause| cause.is::<hyper::Error>())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("upgrade"))
        })
}

async fn forward(
    context: &Arc<Context>,
    original: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Failure> {
    let hold_until = tokio::time::Instant::now() + HOLD_FOR_ENDPOINTS;
    loop {
        let loaded = context.config.current().ok_or(Failure::NotReady)?;
        let table = &loaded.table;
        let target = table.lookup(original).ok_or(Failure::Gone(original))?;

        let Plan {
            backend,
            timeout_ms,
            fault,
        } = {
            let headers = request.headers();
            let header_value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let facts = RequestFacts {
                method: request.method().as_str(),
                path: request.uri().path(),
                header: &header_value,
            };
            plan(table, target, &facts)?
        };
        // No endpoint listed yet for the backend: wait for the next config (see the fast path).
        if table.endpoints(backend).is_empty() && tokio::time::Instant::now() < hold_until {
            let generation = loaded.generation;
            drop(loaded);
            context.config.newer_than(generation, hold_until).await;
            continue;
        }
        inject(fault).await?;

        let (endpoint, connect_timeout, stats) = choose_endpoint(context, table, backend)?;
        let addr = SocketAddr::new(endpoint.ip, endpoint.port);
        let identity = endpoint.identity.as_deref();
        let in_flight = stats.start();

        let upgrade = request.version() != Version::HTTP_2 && is_upgrade(request.headers());
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
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let upstreams = context.upstreams.clone();
        let send = async {
            if request.version() == Version::HTTP_2 {
                upstreams
                    .send_http2(addr, identity, connect_timeout, request)
                    .await
                    .map(|response| response.map(Either::Left))
            } else {
                upstreams
                    .send_http1(addr, identity, connect_timeout, request, upgrade)
                    .await
            }
        };
        let mut response = match timeout_ms {
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), send)
                .await
                .map_err(|_| Failure::Timeout(ms))?
                .map_err(Failure::of_upstream)?,
            None => send.await.map_err(Failure::of_upstream)?,
        };
        drop(in_flight);
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
        return Ok(response);
    }
}

/// What the config says for one request to a meshed destination.
pub(crate) struct Plan<'t> {
    /// Where it goes: the destination itself or a backend of its route.
    pub backend: Target,
    /// Its timeout, if any.
    pub timeout_ms: Option<u64>,
    /// The fault to inject, if any.
    pub fault: Option<&'t braid_proxy_config::Fault>,
}

/// The route `request` takes to `target`, a backend drawn by weight, its timeout and fault.
pub(crate) fn plan<'t>(
    table: &'t crate::routing::Table,
    target: Target,
    request: &RequestFacts<'_>,
) -> Result<Plan<'t>, Failure> {
    let policy = &table.destinations[target.destination].policy;
    let Some(route) = table.route(target, request) else {
        return Ok(Plan {
            backend: target,
            timeout_ms: policy.request_timeout_ms,
            fault: policy.fault.as_ref(),
        });
    };
    let total = route.total_weight();
    let backend = (total > 0)
        .then(|| route.backend(fastrand::u32(0..total), target.port))
        .flatten()
        .ok_or_else(|| Failure::NoBackend(table.destinations[target.destination].name.clone()))?;
    Ok(Plan {
        backend,
        timeout_ms: route.timeout_ms.or(policy.request_timeout_ms),
        fault: route.fault.as_ref(),
    })
}

/// Injects `fault`: an abort is returned as the failure to answer with; a delay is waited out.
pub(crate) async fn inject(fault: Option<&braid_proxy_config::Fault>) -> Result<(), Failure> {
    let Some(fault) = fault else { return Ok(()) };
    if let Some(abort) = &fault.abort
        && fastrand::u32(0..100) < abort.percent
    {
        return Err(Failure::Abort(abort.status));
    }
    if let Some(delay) = &fault.delay
        && fastrand::u32(0..100) < delay.percent
    {
        tokio::time::sleep(Duration::from_millis(delay.duration_ms)).await;
    }
    Ok(())
}

/// Picks an endpoint of `backend` with its destination's balancer; with the connect timeout and
/// the endpoint's live numbers.
pub(crate) fn choose_endpoint<'t>(
    context: &Context,
    table: &'t crate::routing::Table,
    backend: Target,
) -> Result<
    (
        &'t braid_proxy_config::Endpoint,
        Duration,
        Arc<balance::EndpointStats>,
    ),
    Failure,
> {
    let destination = &table.destinations[backend.destination];
    let endpoints = table.endpoints(backend);
    if endpoints.is_empty() {
        return Err(Failure::NoEndpoints {
            name: destination.name.clone(),
            port: backend.port,
        });
    }
    let balancer = destination.policy.load_balancer;
    let cursor = destination.cursor.fetch_add(1, Ordering::Relaxed);
    let load = |i: usize| {
        let endpoint = &endpoints[i];
        context
            .upstreams
            .stats(SocketAddr::new(endpoint.ip, endpoint.port))
            .load()
    };
    let n = endpoints.len();
    let chosen = balance::pick(
        balancer,
        n,
        load,
        cursor,
        fastrand::usize(..),
        fastrand::usize(..),
    );
    let endpoint = &endpoints[chosen];
    Ok((
        endpoint,
        Duration::from_millis(destination.policy.connect_timeout_ms),
        context
            .upstreams
            .stats(SocketAddr::new(endpoint.ip, endpoint.port)),
    ))
}
