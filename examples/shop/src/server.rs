//! The HTTP server: every answer says which pod, role and version served it, so tests and the
//! demo can count where traffic went.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::args::ServeSettings;

/// What every answer reports about the process that served it.
struct Identity {
    pod: String,
    role: String,
    version: String,
    files: Option<PathBuf>,
    upstreams: Vec<(String, String)>,
    delay: std::time::Duration,
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(settings: ServeSettings) -> anyhow::Result<()> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let identity = Arc::new(Identity {
        pod: pod_name(),
        role: settings.role,
        version: settings.version,
        files: settings.files,
        upstreams: settings.upstreams,
        delay: std::time::Duration::from_millis(settings.delay_ms),
    });
    eprintln!(
        "braid-shop: {} {} listening on {}",
        identity.role, identity.version, settings.listen
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let identity = Arc::clone(&identity);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let identity = Arc::clone(&identity);
                async move { Ok::<_, Infallible>(answer(&identity, &request).await) }
            });
            // A client that hangs up mid-request is its own business.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(identity: &Identity, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    if let Some(name) = path.strip_prefix("/files/") {
        return match &identity.files {
            Some(dir) => serve_file(dir, name).await,
            None => text(
                StatusCode::NOT_FOUND,
                "this server has no --files directory\n",
            ),
        };
    }
    if !identity.delay.is_zero() {
        tokio::time::sleep(identity.delay).await;
    }
    let mut body = serde_json::json!({
        "pod": identity.pod,
        "role": identity.role,
        "version": identity.version,
        "path": path,
    });
    for (name, url) in &identity.upstreams {
        match crate::client::fetch(url).await {
            Ok((status, answer)) if status.is_success() => {
                body["calls"][name] = serde_json::from_slice(&answer).unwrap_or_default();
            }
            Ok((status, answer)) => {
                let message = format!(
                    "{name} answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
                return json(
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!({"error": message}).to_string(),
                );
            }
            Err(error) => {
                let message = format!("{name}: {error:#}");
                return json(
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!({"error": message}).to_string(),
                );
            }
        }
    }
    json(StatusCode::OK, body.to_string())
}

async fn serve_file(dir: &Path, name: &str) -> Response<Full<Bytes>> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return text(
            StatusCode::BAD_REQUEST,
            "a file name has no '/' and no leading '.'\n",
        );
    }
    match tokio::fs::read(dir.join(name)).await {
        Ok(contents) => Response::new(Full::new(Bytes::from(contents))),
        Err(error) => text(StatusCode::NOT_FOUND, &format!("{name}: {error}\n")),
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body + "\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
}

/// The pod's name: the UTS hostname, which the kubelet sets to the pod name.
fn pod_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}
