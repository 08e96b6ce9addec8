//! The `braid-operator` binary: wires settings, logging, the Kubernetes client, leader election,
//! the reconcile loop and the HTTP endpoints (`/metrics`, `/healthz`, `/readyz` on
//! `BRAID_METRICS_ADDR`, default `0.0.0.0:9090`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::routing::get;
use braid_operator::{caches, leader, metrics::Metrics, readback, run};
use tokio::sync::{Notify, watch};

/// Settings from the environment, all read before anything starts.
struct Settings {
    metrics_addr: SocketAddr,
    namespace: String,
    pod_name: String,
    leader_election: bool,
}

fn settings() -> anyhow::Result<Settings> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let metrics_addr = var("BRAID_METRICS_ADDR", "0.0.0.0:9090");
    Ok(Settings {
        metrics_addr: metrics_addr
            .parse()
            .with_context(|| format!("BRAID_METRICS_ADDR={metrics_addr:?} is not host:port"))?,
        namespace: var("POD_NAMESPACE", braid_api::CONTROL_PLANE_NAMESPACE),
        pod_name: var("POD_NAME", "braid-operator-local"),
        leader_election: match var("BRAID_LEADER_ELECTION", "true").as_str() {
            "true" => true,
            "false" => false,
            other => anyhow::bail!("BRAID_LEADER_ELECTION={other:?}: expected true or false"),
        },
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = match settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("braid-operator: {error:#}");
            std::process::exit(64);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client")?;

    let pod_name = settings.pod_name.clone();
    let changed = Arc::new(Notify::new());
    let (caches, watches) = caches::Caches::start(&client, changed.clone());
    let metrics = Arc::new(Metrics::default());
    let (leading_tx, leading) = watch::channel(!settings.leader_election);
    let ready = Arc::new(AtomicBool::new(false));

    let http = {
        let metrics = metrics.clone();
        let ready = ready.clone();
        let app = axum::Router::new()
            .route("/metrics", get(move || async move { metrics.encode() }))
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(move || async move {
                    if ready.load(Ordering::Relaxed) {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "caches not synced",
                        )
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind(settings.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.metrics_addr))?;
        async move { axum::serve(listener, app).await }
    };
    tokio::spawn(http);
    tokio::spawn(watches);
    if settings.leader_election {
        tokio::spawn(leader::run(
            client.clone(),
            settings.namespace,
            "braid-operator".into(),
            pod_name.clone(),
            leading_tx,
        ));
    }
    caches.ready().await?;
    ready.store(true, Ordering::Relaxed);
    tracing::info!("caches synced");
    changed.notify_one();
    let proxies = Arc::new(readback::Readback::default());
    tokio::spawn(readback::read_loop(
        proxies.clone(),
        caches.pods(),
        changed.clone(),
        leading.clone(),
        metrics.clone(),
        client.clone(),
    ));
    tokio::select! {
        () = run::reconcile_loop(client, caches, changed, leading, metrics, proxies, pod_name) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        () = terminate() => tracing::info!("terminated"),
    }
    Ok(())
}

async fn terminate() {
    if let Ok(mut signal) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        signal.recv().await;
    } else {
        std::future::pending::<()>().await;
    }
}
