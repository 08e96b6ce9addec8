//! `make bench` part: admission latency and throughput of braid-webhook over HTTPS, the process
//! pinned to one core (`taskset -c 1`). Open loop at a fixed rate (500 reviews/s by default):
//! each request has a scheduled send time and its latency counts from then, so a stall cannot
//! hide the requests queued behind it. Then a closed loop for throughput. The baseline, in the
//! same run and through the same connections: the webhook's `/healthz`, which does no work, so
//! the ratio is what reviewing a pod costs over TLS and HTTP alone. Needs the test cluster's
//! kubeconfig (the webhook watches the Mesh). Writes bench/results/webhook.md.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const ADDR: &str = "127.0.0.1:18443";
const CONNECTIONS: usize = 8;

struct Webhook(Child);

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("openssl {} failed", args.join(" "));
    }
    Ok(())
}

fn make_certs(dir: &Path) -> anyhow::Result<()> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.crt"),
        "-subj",
        "/CN=bench-ca",
    ])?;
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &path("tls.key"),
        "-out",
        &path("tls.csr"),
        "-subj",
        "/CN=127.0.0.1",
    ])?;
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("tls.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        &path("tls.crt"),
        "-extfile",
        &path("ext"),
    ])
}

fn review_body() -> Vec<u8> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "payment-v1-5f6f55995b-", "namespace": "shop",
                     "labels": {"app": "payment", "pod-template-hash": "5f6f55995b"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "payment-v1-5f6f55995b", "uid": "u", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "braid.local/braid-shop:dev", "ports": [{"containerPort": 8080}],
                                 "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}}]}
    });
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
           "request": {"uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                       "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "shop",
                       "operation": "CREATE", "userInfo": {}, "object": pod}})
    .to_string()
    .into_bytes()
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(config: Arc<rustls::ClientConfig>) -> anyhow::Result<Tls> {
    let stream = TcpStream::connect(ADDR).await?;
    stream.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await?)
}

/// One HTTP/1.1 request on a kept-alive connection; reads the whole response.
async fn request(stream: &mut Tls, request: &[u8], buffer: &mut Vec<u8>) -> anyhow::Result<()> {
    stream.write_all(request).await?;
    buffer.clear();
    loop {
        let mut chunk = [0u8; 16384];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            bail!("connection closed");
        }
        buffer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(buffer);
        if let Some(end) = text.find("\r\n\r\n") {
            if !text.starts_with("HTTP/1.1 200") {
                bail!(
                    "unexpected response: {}",
                    text.lines().next().unwrap_or_default()
                );
            }
            let length = text[..end].lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>())
            });
            let length = length.context("no content-length")??;
            if buffer.len() >= end + 4 + length {
                return Ok(());
            }
        }
    }
}

fn http_request(path: &str, body: &[u8]) -> Vec<u8> {
    let method = if body.is_empty() { "GET" } else { "POST" };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Open loop: `rate` requests per second for `duration`, spread over the connections.
async fn open_loop(
    config: &Arc<rustls::ClientConfig>,
    request_bytes: Vec<u8>,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let request_bytes = Arc::new(request_bytes);
    let mut workers = Vec::new();
    for worker in 0..CONNECTIONS {
        let mut stream = connect(config.clone()).await?;
        let request_bytes = request_bytes.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut buffer = Vec::with_capacity(16384);
            for i in (worker..total).step_by(CONNECTIONS) {
                let scheduled = start + interval * i as u32;
                tokio::time::sleep_until(scheduled.into()).await;
                request(&mut stream, &request_bytes, &mut buffer).await?;
                latencies.push(scheduled.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await??);
    }
    all.sort();
    Ok(all)
}

/// Closed loop: as fast as the connections go, for `duration`; returns requests per second.
async fn closed_loop(
    config: &Arc<rustls::ClientConfig>,
    request_bytes: Vec<u8>,
    duration: Duration,
) -> anyhow::Result<f64> {
    let request_bytes = Arc::new(request_bytes);
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = connect(config.clone()).await?;
        let request_bytes = request_bytes.clone();
        workers.push(tokio::spawn(async move {
            let (mut count, mut buffer) = (0u64, Vec::new());
            while Instant::now() < deadline {
                request(&mut stream, &request_bytes, &mut buffer).await?;
                count += 1;
            }
            anyhow::Ok(count)
        }));
    }
    let mut count = 0;
    for worker in workers {
        count += worker.await??;
    }
    Ok(count as f64 / duration.as_secs_f64())
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rate: u32 = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = std::env::temp_dir().join("braid-bench-webhook");
    std::fs::create_dir_all(&dir)?;
    make_certs(&dir)?;
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/braid-webhook");
    let webhook = Webhook(
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(&binary)
            .arg("serve")
            .env("BRAID_WEBHOOK_ADDR", ADDR)
            .env("BRAID_WEBHOOK_CERT_DIR", &dir)
            .env("BRAID_NATIVE_SIDECAR", "true")
            .env("RUST_LOG", "warn")
            .spawn()
            .with_context(|| {
                format!("cannot start {} (make images builds it)", binary.display())
            })?,
    );
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(dir.join("ca.crt"))? {
        roots.add(cert?)?;
    }
    let config = Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let started = Instant::now();
    while connect(config.clone()).await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the webhook did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _: SocketAddr = ADDR.parse()?;
    let duration = Duration::from_secs(seconds);
    let mutate = http_request("/mutate", &review_body());
    let health = http_request("/healthz", b"");
    let _ = open_loop(&config, mutate.clone(), rate, Duration::from_secs(2)).await?; // warm-up
    let base = open_loop(&config, health.clone(), rate, duration).await?;
    let reviews = open_loop(&config, mutate.clone(), rate, duration).await?;
    let base_throughput = closed_loop(&config, health, Duration::from_secs(5)).await?;
    let throughput = closed_loop(&config, mutate, Duration::from_secs(5)).await?;
    drop(webhook);

    let row = |name: &str, l: &[Duration], t: f64| {
        format!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            l.len(),
            quantile(l, 0.5),
            quantile(l, 0.99),
            quantile(l, 0.999),
            t
        )
    };
    let report = format!(
        "# Admission webhook\n\nbraid-webhook pinned to one core (`taskset -c 1`) of a {}-core machine, HTTPS (TLS 1.3, \
         ECDSA P-256), {CONNECTIONS} kept-alive HTTP/1.1 connections from a client on the same machine. Open loop at \
         {rate} requests/s for {seconds} s (latency from each request's scheduled time); throughput from a 5 s closed loop.\n\n\
         | endpoint | requests | p50 ms | p99 ms | p99.9 ms | max requests/s |\n|---|---|---|---|---|---|\n{}{}\n\
         Ratios to the baseline (`/healthz`, same connections, same run): p99 {:.2}×, throughput {:.2}×. Target: p99 under 5 ms at 500/s.\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        row("/healthz (baseline)", &base, base_throughput),
        row("/mutate (a Deployment's pod)", &reviews, throughput),
        quantile(&reviews, 0.99) / quantile(&base, 0.99).max(0.001),
        throughput / base_throughput,
    );
    std::fs::create_dir_all("bench/results")?;
    std::fs::write("bench/results/webhook.md", &report)?;
    print!("{report}");
    Ok(())
}
