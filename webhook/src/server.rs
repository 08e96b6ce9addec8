//! The HTTPS server: `/mutate` (POST an AdmissionReview), `/healthz`, `/readyz`, `/metrics`.
//! The accept loop terminates TLS with the reloading certificate and hands each connection to
//! hyper (HTTP/1.1 or HTTP/2, as ALPN chose).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::inject::InjectSettings;
use crate::review::review;

/// Label of the admissions counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Shared state of the handlers.
pub struct AppState {
    /// Injection settings, replaced when the Mesh changes.
    pub settings: RwLock<InjectSettings>,
    registry: Registry,
    admissions: Family<ResultLabel, Counter>,
    latency: Histogram,
}

impl AppState {
    /// State with the given settings and fresh metrics.
    pub fn new(settings: InjectSettings) -> Arc<Self> {
        let mut registry = Registry::with_prefix("braid_webhook");
        let admissions = Family::<ResultLabel, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "admissions",
            "AdmissionReviews answered, by result",
            admissions.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer an AdmissionReview",
            latency.clone(),
        );
        Arc::new(Self {
            settings: RwLock::new(settings),
            registry,
            admissions,
            latency,
        })
    }
}

async fn mutate(State(state): State<Arc<AppState>>, body: Bytes) -> impl IntoResponse {
    let started = Instant::now();
    let settings = state
        .settings
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (answer, outcome) = review(&body, &settings);
    state
        .admissions
        .get_or_create(&ResultLabel {
            result: outcome.as_str(),
        })
        .inc();
    state.latency.observe(started.elapsed().as_secs_f64());
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
}

async fn metrics(State(state): State<Arc<AppState>>) -> String {
    let mut text = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut text, &state.registry);
    text
}

/// The routes.
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves `router` over TLS on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, %peer, "TLS handshake failed");
                    return;
                }
            };
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
}
