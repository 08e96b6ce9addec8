//! Authorization and rate limits, enforced by the server pod's proxy on real mTLS callers
//! (issue 13). The client pod's proxy is `order`; a caller with another identity (`loadgen`)
//! is the test itself, dialling the server pod over mTLS with a certificate of the mesh CA.
//! Shown: the allowed identity is served and the other refused with 403 over HTTP/1.1 and
//! HTTP/2, gRPC with PERMISSION_DENIED, a TCP connection closed before any byte reaches the
//! application (which counts what it received); dry-run serves and counts; a policy change in
//! the file applies to the next request on an open connection, which stays open; a limit of
//! 50 req/s under 200 req/s serves 50 ± 10% per second and answers the rest 429 with
//! `Retry-After`; websockets through an allowed path still work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::configs::{LOADGEN, ORDER, server_config_with};
use crate::pods::{Ca, Pod, SERVER_IP, eventually, publish};

/// The TCP sink's port: it counts every byte it receives; a connection from loopback that
/// sends `report` gets the count instead.
pub const SINK_PORT: u16 = 7004;

/// The sink application (see [`SINK_PORT`]).
pub async fn serve_sink() {
    let listener = TcpListener::bind(("0.0.0.0", SINK_PORT))
        .await
        .expect("bind");
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    while let Ok((mut stream, peer)) = listener.accept().await {
        let received = received.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let mut first = true;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if first && peer.ip().is_loopback() && buf[..n].starts_with(b"report") {
                    let count = received.load(std::sync::atomic::Ordering::Relaxed);
                    let _ = stream.write_all(format!("{count}\n").as_bytes()).await;
                    return;
                }
                first = false;
                received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                let _ = stream.write_all(&buf[..n]).await;
            }
        });
    }
}

/// `sink-report`: the bytes the sink received (run in the server pod).
async fn sink_report() -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", SINK_PORT)).await else {
        return "connect-failed".into();
    };
    let _ = stream.write_all(b"report\n").await;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer.trim().to_string()
}

/// `h2-status`: one GET over h2c: `status=<code> proxy-error=<value or ->`.
async fn h2_status(target: SocketAddr, path: &str) -> String {
    let Ok(stream) = TcpStream::connect(target).await else {
        return "connect-failed".into();
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
    else {
        return "handshake-failed".into();
    };
    tokio::spawn(connection);
    let request = Request::get(format!("http://payment.shop{path}"))
        .version(Version::HTTP_2)
        .body(Empty::<Bytes>::new())
        .expect("request");
    match sender.send_request(request).await {
        Ok(response) => format!(
            "status={} proxy-error={}",
            response.status().as_u16(),
            response
                .headers()
                .get("braid-proxy-error")
                .map_or("-", |v| v.to_str().unwrap_or("?"))
        ),
        Err(e) => format!("error:{e}"),
    }
}

/// One GET on a keep-alive HTTP/1.1 connection: the status and the `retry-after` header.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> Option<(u16, bool)> {
    let request = Request::get(path)
        .header("host", "payment.shop")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    response.into_body().collect().await.ok()?;
    Some((status, retry_after))
}

/// `rate`: GETs at `per_second` for `seconds`, spread over 4 keep-alive connections:
/// `ok=<n> limited=<n> retry-after=<n> other=<n>`.
async fn rate(target: SocketAddr, per_second: u32, seconds: u64) -> String {
    let workers = 4;
    let period = Duration::from_secs(1) * workers / per_second;
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..workers {
        tasks.push(tokio::spawn(async move {
            let mut counts = BTreeMap::<&str, usize>::new();
            let mut sender = None;
            // The workers' ticks are staggered: one request every `period / workers`.
            tokio::time::sleep(period / workers * worker).await;
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < until {
                ticks.tick().await;
                if sender
                    .as_ref()
                    .is_none_or(|s: &hyper::client::conn::http1::SendRequest<_>| s.is_closed())
                {
                    sender = crate::client::http1(target).await;
                }
                let outcome = match sender.as_mut() {
                    Some(sender) => get(sender, "/limited").await,
                    None => None,
                };
                let key = match outcome {
                    Some((200, _)) => "ok",
                    Some((429, retry_after)) => {
                        if retry_after {
                            *counts.entry("retry-after").or_default() += 1;
                        }
                        "limited"
                    }
                    _ => "other",
                };
                *counts.entry(key).or_default() += 1;
            }
            counts
        }));
    }
    let mut total = BTreeMap::<&str, usize>::new();
    for task in tasks {
        for (key, n) in task.await.unwrap_or_default() {
            *total.entry(key).or_default() += n;
        }
    }
    ["ok", "limited", "retry-after", "other"]
        .iter()
        .map(|key| format!("{key}={}", total.get(key).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sequence`: `count` GETs on one keep-alive connection, alternating `/keep` and `/gone`,
/// `pause_ms` apart: `connections=<n> <path>:<status> ...`.
async fn sequence(target: SocketAddr, count: usize, pause_ms: u64) -> String {
    let mut connections = 0;
    let mut sender = None;
    let mut seen = Vec::new();
    for i in 0..count {
        if sender
            .as_ref()
            .is_none_or(|s: &hyper::client::conn::http1::SendRequest<_>| s.is_closed())
        {
            sender = crate::client::http1(target).await;
            connections += 1;
        }
        let path = if i % 2 == 0 { "/keep" } else { "/gone" };
        let status = match sender.as_mut() {
            Some(sender) => get(sender, path).await.map_or(0, |(status, _)| status),
            None => 0,
        };
        seen.push(format!("{path}:{status}"));
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    }
    format!("connections={connections} {}", seen.join(" "))
}

/// The client commands of this module, if `command` is one.
pub async fn command(command: &str, arg: impl Fn(usize) -> String) -> Option<String> {
    let addr = |i: usize| arg(i).parse::<SocketAddr>().expect("host:port");
    Some(match command {
        "sink-report" => sink_report().await,
        "h2-status" => h2_status(addr(1), &arg(2)).await,
        "rate" => {
            rate(
                addr(1),
                arg(2).parse().expect("rps"),
                arg(3).parse().expect("s"),
            )
            .await
        }
        "sequence" => {
            sequence(
                addr(1),
                arg(2).parse().expect("count"),
                arg(3).parse().expect("ms"),
            )
            .await
        }
        _ => return None,
    })
}

/// Puts `inbound` (merged into the server's STRICT config) in force as `version`.
fn in_force(server: &Pod, version: u32, inbound: serde_json::Value) {
    let generation = || server.metric("braid_proxy_config_generation");
    let before = generation();
    publish(
        &server.dir.join("config"),
        version,
        &[("proxy.json", &server_config_with("STRICT", inbound))],
    );
    eventually("the policy in force", || generation() > before);
}

/// Runs the checks; `version` is the server config directory's next free `publish` version;
/// returns the next free one.
pub fn check(client: &Pod, server: &Pod, ca: &Ca, root: &std::path::Path, version: u32) -> u32 {
    let order_dir = ca.identity_dir(&root.join("authz-order"), ORDER);
    let loadgen_dir = ca.identity_dir(&root.join("authz-loadgen"), LOADGEN);
    let direct = format!("{SERVER_IP}:8081");
    let as_caller = |dir: &str| client.client(true, &["tls", &direct, dir]);
    let sink_report = || server.client(true, &["sink-report"]);
    let tcp_to_sink = || client.client(false, &["tcp", "10.96.0.24:7004"]);

    // Only order may call: order is served on every protocol, loadgen is refused.
    let only = |id: &str| {
        serde_json::json!({"policy": "shop/payment",
        "authorization": [{"identities": [id]}]})
    };
    in_force(server, version, only(ORDER));
    assert_eq!(
        client.client(false, &["http", "10.96.0.11:80", "/a", "3"]),
        "v1=3"
    );
    assert_eq!(
        client.client(false, &["h2-status", "10.96.0.11:80", "/a"]),
        "status=200 proxy-error=-"
    );
    assert_eq!(
        client.client(false, &["grpc", "10.96.0.20:9000"]),
        "unary=ok stream=ok"
    );
    assert_eq!(tcp_to_sink(), "banner= echo=true");
    assert_eq!(
        sink_report(),
        "5",
        "the allowed connection's bytes reached the sink"
    );
    assert!(as_caller(&order_dir).starts_with("HTTP/1.1 200"));
    let refused = as_caller(&loadgen_dir);
    assert!(
        refused.starts_with("HTTP/1.1 403 Forbidden"),
        "loadgen over HTTP/1.1: {refused}"
    );

    // Only loadgen may call: now order is the other identity.
    in_force(server, version + 1, only(LOADGEN));
    let http = client.client(false, &["http", "10.96.0.11:80", "/a", "1"]);
    assert_eq!(
        http, "status:403:braid-proxy: denied by policy shop/payment: no ALLOW rule matches=1",
        "order over HTTP/1.1"
    );
    assert_eq!(
        client.client(false, &["h2-status", "10.96.0.11:80", "/a"]),
        "status=403 proxy-error=denied by policy shop/payment: no ALLOW rule matches",
        "order over HTTP/2"
    );
    assert_eq!(
        client.client(false, &["grpc-status", "10.96.0.20:9000"]),
        "http=200 grpc-status=7 message=denied by policy shop/payment: no ALLOW rule matches proxy-error=yes"
    );
    assert_eq!(
        tcp_to_sink(),
        "banner= echo=false",
        "a denied connection gets nothing back"
    );
    assert_eq!(
        sink_report(),
        "5",
        "no byte of the denied connection reached the sink"
    );
    assert!(
        as_caller(&loadgen_dir).starts_with("HTTP/1.1 200"),
        "loadgen is served now"
    );
    let denied = |protocol: &str| {
        server.metric(&format!(
            "braid_proxy_inbound_authz_total{{protocol=\"{protocol}\",decision=\"deny\",\
             policy=\"shop/payment\",rule=\"\",reason=\"no_allow_rule\"}}"
        ))
    };
    assert!(denied("http") >= 3.0, "{}", server.admin("/metrics"));
    assert_eq!(denied("tcp"), 1.0, "{}", server.admin("/metrics"));

    // Dry run: the same policy lets order through, and counts what it would have refused.
    let mut dry = only(LOADGEN);
    dry["authorizationMode"] = "DryRun".into();
    in_force(server, version + 2, dry);
    assert_eq!(
        client.client(false, &["http", "10.96.0.11:80", "/dry", "4"]),
        "v1=4"
    );
    let would_deny = server.metric(
        "braid_proxy_inbound_authz_total{protocol=\"http\",decision=\"would_deny\",\
         policy=\"shop/payment\",rule=\"\",reason=\"no_allow_rule\"}",
    );
    assert_eq!(would_deny, 4.0, "{}", server.admin("/metrics"));
    assert!(server.proxy_log().contains("dry run: GET /dry on port 8081 from spiffe://cluster.local/ns/shop/sa/order would be denied"));

    // A change of policy applies to the next request of an open connection, which stays open.
    let everything = serde_json::json!({"policy": "shop/payment",
        "authorization": [{"identities": [ORDER]}]});
    in_force(server, version + 3, everything);
    let connections = || server.metric("braid_proxy_inbound_connections_total{accepted=\"mtls\"}");
    let sequence = client.spawn_client(false, &["sequence", "10.96.0.11:80", "16", "250"]);
    std::thread::sleep(Duration::from_millis(1_200));
    let opened = connections();
    let narrower = serde_json::json!({"policy": "shop/payment",
        "authorization": [{"identities": [ORDER], "paths": ["/keep", "/chat"]}]});
    in_force(server, version + 4, narrower);
    let sequence = crate::pods::finished(sequence);
    assert!(
        sequence.starts_with("connections=1 /keep:200 /gone:200 "),
        "{sequence}"
    );
    assert!(sequence.ends_with("/keep:200 /gone:403"), "{sequence}");
    assert_eq!(
        connections(),
        opened,
        "the caller's connection was not dropped: {sequence}"
    );
    // Websockets through an allowed path.
    assert_eq!(
        client.client(false, &["ws", "10.96.0.21:80"]),
        "upgraded=true echo=true"
    );

    // 50 requests per second, 200 offered for 4 s: 50 ± 10% served per second, the rest 429.
    let limited = serde_json::json!({"policy": "shop/payment",
        "rateLimit": {"requestsPerSecond": 50, "burst": 5}});
    in_force(server, version + 5, limited);
    let outcome = client.client(false, &["rate", "10.96.0.11:80", "200", "4"]);
    let field = |key: &str| crate::count(&outcome, key);
    let per_second = (field("ok") as f64 - 5.0) / 4.0;
    println!("mesh: rate limit 50/s under 200/s: {per_second:.1}/s served ({outcome})");
    assert!((45.0..=55.0).contains(&per_second), "{outcome}");
    assert!(
        field("limited") >= 500,
        "the rest is answered 429: {outcome}"
    );
    assert_eq!(
        field("limited"),
        field("retry-after"),
        "every 429 says when: {outcome}"
    );
    assert_eq!(field("other"), 0, "{outcome}");
    version + 6
}
