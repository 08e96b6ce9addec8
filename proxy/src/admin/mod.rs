//! The admin server (port 15020), kept off the data path: `/live` (the process runs), `/ready`
//! (a config and an identity are in force), `/metrics` (Prometheus text), `/config` (hash,
//! generation and a summary of the config in force, and the last refusal if any) and
//! `/app-health/<container>/<kind>`, which performs the application's original HTTP probe (the
//! webhook rewrote it to point here, see `BRAID_APP_PROBES`) over loopback and answers with its
//! status.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use braid_sidecar::{AppProbe, AppProbes};

use crate::state::context::Context;

/// How long an application probe may take.
const APP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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
pub async fn answer(context: &Context, probes: &AppProbes, path: &str) -> Response<Full<Bytes>> {
    let current = context.config.current();
    let identity = context.identity.current();
    match path {
        "/live" => respond(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => match (&current, &identity) {
            (Some(_), Some(_)) => respond(StatusCode::OK, "text/plain", "ready\n".into()),
            (None, _) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no config loaded yet\n".into(),
            ),
            (_, None) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no identity loaded yet\n".into(),
            ),
        },
        "/metrics" => {
            let generation = current.as_ref().map_or(0, |c| c.generation);
            let errors = context.config.reload_errors.load(Ordering::Relaxed);
            let identity_errors = context.identity.reload_errors.load(Ordering::Relaxed);
            let expiry = identity.as_ref().map_or(0, |i| i.not_after);
            let mut body = format!(
                "# HELP braid_proxy_config_generation Generation of the config in force (0: none yet).\n\
                 # TYPE braid_proxy_config_generation gauge\nbraid_proxy_config_generation {generation}\n\
                 # HELP braid_proxy_config_reload_errors_total Config files refused.\n\
                 # TYPE braid_proxy_config_reload_errors_total counter\nbraid_proxy_config_reload_errors_total {errors}\n\
                 # HELP braid_proxy_identity_reload_errors_total Identity file sets refused.\n\
                 # TYPE braid_proxy_identity_reload_errors_total counter\nbraid_proxy_identity_reload_errors_total {identity_errors}\n\
                 # HELP braid_proxy_certificate_expiry_seconds When the workload certificate expires (Unix time; 0: none).\n\
                 # TYPE braid_proxy_certificate_expiry_seconds gauge\nbraid_proxy_certificate_expiry_seconds {expiry}\n"
            );
            context.metrics.render(&mut body);
            if let Some(loaded) = &current {
                crate::telemetry::resilience::render_ejected_now(&loaded.table, &mut body);
            }
            context.config.live.policy.render(&mut body);
            respond(StatusCode::OK, "text/plain; version=0.0.4", body)
        }
        "/config" => {
            let last_error = context.config.last_error();
            let mut summary = match current {
                Some(loaded) => serde_json::json!({
                    "hash": loaded.hash,
                    "generation": loaded.generation,
                    "ignoredFields": loaded.ignored,
                    "workload": loaded.config.workload,
                    "mtlsMode": loaded.config.inbound.mtls_mode,
                    "destinations": loaded.config.destinations.len(),
                    "limits": loaded.config.limits,
                    "lastError": last_error,
                }),
                None => serde_json::json!({"generation": 0, "lastError": last_error}),
            };
            summary["identity"] = identity.map(|i| i.spiffe_id.clone()).into();
            respond(
                StatusCode::OK,
                "application/json",
                summary.to_string() + "\n",
            )
        }
        _ => match path.strip_prefix("/app-health/") {
            Some(key) => match probes.get(key) {
                Some(probe) => app_probe(probe).await,
                None => respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!("no application probe {key}\n"),
                ),
            },
            None => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no such admin endpoint: {path}\n"),
            ),
        },
    }
}

/// Performs an application probe over loopback. HTTP probes answer with the application's own
/// status; for HTTPS ones the proxy only checks that the port accepts connections (the kubelet
/// does not verify the certificate either, and the proxy carries no TLS client for it).
async fn app_probe(probe: &AppProbe) -> Response<Full<Bytes>> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, probe.port));
    let attempt = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        if probe.scheme.eq_ignore_ascii_case("HTTPS") {
            return Ok(StatusCode::OK);
        }
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = Request::get(probe.path.as_str())
            .header(hyper::header::HOST, format!("localhost:{}", probe.port))
            .header(hyper::header::USER_AGENT, "braid-proxy/app-health")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response.status())
    };
    match tokio::time::timeout(APP_PROBE_TIMEOUT, attempt).await {
        Ok(Ok(status)) => respond(
            status,
            "text/plain",
            format!("application answered {status}\n"),
        ),
        Ok(Err(error)) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("application probe on {addr}{}: {error}\n", probe.path),
        ),
        Err(_) => {
            let message = format!("application probe timed out after {APP_PROBE_TIMEOUT:?}\n");
            respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", message)
        }
    }
}

/// Serves the admin endpoints on `listener` forever.
pub async fn serve(listener: TcpListener, context: Arc<Context>, probes: Arc<AppProbes>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let context = context.clone();
        let probes = probes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let context = context.clone();
                let probes = probes.clone();
                async move { Ok::<_, Infallible>(answer(&context, &probes, request.uri().path()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_needs_both_config_and_identity() {
        let context = Context::new(Duration::from_millis(100));
        let probes = AppProbes::new();
        let ready = answer(&context, &probes, "/ready").await;
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let config = br#"{"version":1,"workload":{"namespace":"a","name":"b","identity":"spiffe://cluster.local/ns/a/sa/b"},"inbound":{"mtlsMode":"STRICT"}}"#;
        context.config.offer(config).expect("valid");
        let ready = answer(&context, &probes, "/ready").await;
        assert_eq!(
            ready.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "identity still missing"
        );
        let (cert, key, ca) =
            crate::tls::identity::tests::issue("spiffe://cluster.local/ns/a/sa/b");
        context
            .identity
            .offer(&[cert.into_bytes(), key.into_bytes(), ca.into_bytes()])
            .expect("valid");
        let ready = answer(&context, &probes, "/ready").await;
        assert_eq!(ready.status(), StatusCode::OK);
        let missing = answer(&context, &probes, "/app-health/shop/liveness").await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
