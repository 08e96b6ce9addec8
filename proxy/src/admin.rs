//! The admin server (port 15020), kept off the data path: `/live` (the process runs), `/ready`
//! (a config is in force), `/metrics` (Prometheus text) and `/config` (hash, generation and a
//! summary of the config in force, and the last refusal if any).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::reload::ConfigState;

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Answers one admin request.
pub fn answer(state: &ConfigState, path: &str) -> Response<Full<Bytes>> {
    let current = state.current();
    match path {
        "/live" => respond(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => match current {
            Some(_) => respond(StatusCode::OK, "text/plain", "ready\n".into()),
            None => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no config loaded yet\n".into(),
            ),
        },
        "/metrics" => {
            let generation = current.as_ref().map_or(0, |c| c.generation);
            let errors = state.reload_errors.load(Ordering::Relaxed);
            let body = format!(
                "# HELP braid_proxy_config_generation Generation of the config in force (0: none yet).\n\
                 # TYPE braid_proxy_config_generation gauge\nbraid_proxy_config_generation {generation}\n\
                 # HELP braid_proxy_config_reload_errors_total Config files refused.\n\
                 # TYPE braid_proxy_config_reload_errors_total counter\nbraid_proxy_config_reload_errors_total {errors}\n"
            );
            respond(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        "/config" => {
            let last_error = state
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let summary = match current {
                Some(loaded) => serde_json::json!({
                    "hash": loaded.hash,
                    "generation": loaded.generation,
                    "workload": loaded.config.workload,
                    "mtlsMode": loaded.config.inbound.mtls_mode,
                    "destinations": loaded.config.destinations.len(),
                    "lastError": last_error,
                }),
                None => serde_json::json!({"generation": 0, "lastError": last_error}),
            };
            respond(
                StatusCode::OK,
                "application/json",
                summary.to_string() + "\n",
            )
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such admin endpoint: {path}\n"),
        ),
    }
}

/// Serves the admin endpoints on `listener` forever.
pub async fn serve(listener: TcpListener, state: Arc<ConfigState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = answer(&state, request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
