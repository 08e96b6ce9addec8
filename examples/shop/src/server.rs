//! The HTTP server: every answer says which pod, role and version served it, so tests and the
//! demo can count where traffic went.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::args::{Misbehave, ServeSettings};

/// What every answer reports about the process that served it.
struct Identity {
    pod: String,
    role: String,
    version: String,
    files: Option<PathBuf>,
    upstreams: Vec<(String, String)>,
    delay: std::time::Duration,
    misbehave: Misbehave,
    /// Requests (not `/healthz`) and connections so far, to spread the misbehaviour evenly.
    requests: AtomicU64,
    connections: AtomicU64,
}

/// Whether the `n`-th (from 0) of a series is one of `percent` spread evenly over it.
fn chosen(n: u64, percent: u64) -> bool {
    (n + 1) * percent / 100 > n * percent / 100
}

/// How long in-flight requests may take to finish once SIGTERM came.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves until SIGTERM or SIGINT, then stops accepting, closes idle connections and lets
/// requests under way finish (for up to [`SHUTDOWN_GRACE`]), as a well-behaved service does.
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
        misbehave: settings.misbehave,
        requests: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    eprintln!(
        "braid-shop: {} {} listening on {}{}",
        identity.role,
        identity.version,
        settings.listen,
        if identity.misbehave == Misbehave::default() {
            String::new()
        } else {
            format!(" (misbehaving: {:?})", identity.misbehave)
        }
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let (stopping, _) = tokio::sync::watch::channel(false);
    let open = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let n = identity.connections.fetch_add(1, Ordering::Relaxed);
        if chosen(n, identity.misbehave.reset_percent) {
            drop(stream);
            continue;
        }
        let identity = Arc::clone(&identity);
        let mut stop = stopping.subscribe();
        let open = Arc::clone(&open);
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let identity = Arc::clone(&identity);
                async move { Ok::<_, Infallible>(answer(&identity, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            // A client that hangs up mid-request is its own business.
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { stop.wait_for(|stopping| *stopping).await.is_ok() } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    stopping.send_replace(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    eprintln!(
        "braid-shop: stopped ({} connections still open)",
        open.load(Ordering::Relaxed)
    );
    Ok(())
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
    let n = identity.requests.fetch_add(1, Ordering::Relaxed);
    if chosen(n, identity.misbehave.hang_percent) {
        return std::future::pending().await;
    }
    if chosen(n, identity.misbehave.fail_percent) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "braid-shop: failing on purpose (--fail-percent)\n",
        );
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

#[cfg(test)]
mod tests {
    use super::chosen;

    #[test]
    fn a_percentage_is_spread_evenly() {
        let picks = |percent| (0..100).filter(|&n| chosen(n, percent)).collect::<Vec<_>>();
        assert_eq!(picks(0), Vec::<u64>::new());
        assert_eq!(picks(100).len(), 100);
        assert_eq!(picks(50), (0..50).map(|i| 2 * i + 1).collect::<Vec<_>>());
        assert_eq!(picks(30).len(), 30);
        assert_eq!(picks(25)[..2], [3, 7]);
        // Over any window of 10, 30% takes exactly 3.
        for start in 0..90 {
            assert_eq!((start..start + 10).filter(|&n| chosen(n, 30)).count(), 3);
        }
    }
}
