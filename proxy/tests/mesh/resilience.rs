//! Retries, failover, outlier ejection and the circuit breaker, in the client pod's proxy, over
//! real mTLS to the server pod (issue 14). The server pod's applications here fail on purpose
//! and count what they receive (`GET /count`), so that retries are measured where they land:
//! 8101 fails 3 requests in 10 with 503 (never two in a row), 8104 fails every one, 8105 and
//! 8106 never fail, 8107 and 8109 always do, 8108 answers after 500 ms, 8112 after 300 ms
//! and tells the most requests it had at once (`GET /peak`); 9100 is gRPC answering every
//! other call `UNAVAILABLE`. The destinations calling them are in [`crate::configs`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use crate::apps::{ChannelBody, serve_http};
use crate::pods::Pod;

type Body = Either<Full<Bytes>, ChannelBody>;

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
}

/// An HTTP application on `port` whose `n`-th request fails with 503 when `fails(n)`.
async fn serve_failing(port: u16, fails: fn(u64) -> bool, delay: Duration) {
    let received = Arc::new(AtomicU64::new(0));
    serve_http(port, move |request: Request<Incoming>| {
        let received = received.clone();
        async move {
            if request.uri().path() == "/count" {
                return text(StatusCode::OK, received.load(Ordering::Relaxed).to_string());
            }
            let n = received.fetch_add(1, Ordering::Relaxed);
            let _ = request.into_body().collect().await;
            tokio::time::sleep(delay).await;
            if fails(n) {
                text(StatusCode::SERVICE_UNAVAILABLE, "fail".into())
            } else {
                text(StatusCode::OK, format!("ok {port}"))
            }
        }
    })
    .await;
}

/// An HTTP application on `port` that answers after `delay`, and tells the most requests it
/// had at once (`GET /peak`).
async fn serve_counting_peak(port: u16, delay: Duration) {
    let now = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    serve_http(port, move |request: Request<Incoming>| {
        let (now, peak) = (now.clone(), peak.clone());
        async move {
            if request.uri().path() == "/peak" {
                return text(StatusCode::OK, peak.load(Ordering::Relaxed).to_string());
            }
            peak.fetch_max(now.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            now.fetch_sub(1, Ordering::Relaxed);
            text(StatusCode::OK, format!("ok {port}"))
        }
    })
    .await;
}

/// gRPC that answers every other call `UNAVAILABLE` (trailers-only), the others `OK`.
async fn serve_flaky_grpc(port: u16) {
    let received = Arc::new(AtomicU64::new(0));
    serve_http(port, move |request: Request<Incoming>| {
        let received = received.clone();
        async move {
            let _ = request.into_body().collect().await;
            let grpc = |status: &str, body: Body| {
                let mut response = Response::new(body);
                let headers = response.headers_mut();
                headers.insert("content-type", "application/grpc".parse().expect("value"));
                if !status.is_empty() {
                    headers.insert("grpc-status", status.parse().expect("value"));
                }
                response
            };
            if received.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                return grpc("14", Either::Left(Full::new(Bytes::new())));
            }
            let (frames, body) = mpsc::channel(2);
            let _ = frames.try_send(Frame::data(Bytes::from_static(b"\0\0\0\0\x02ok")));
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("value"));
            let _ = frames.try_send(Frame::trailers(trailers));
            grpc("", Either::Right(ChannelBody(body)))
        }
    })
    .await;
}

/// Runs this module's applications (in the server pod).
pub fn spawn_apps() {
    let never = |_| false;
    let always = |_| true;
    let no_delay = Duration::ZERO;
    tokio::spawn(serve_failing(
        8101,
        |n| matches!(n % 10, 0 | 2 | 4),
        no_delay,
    ));
    tokio::spawn(serve_failing(8104, always, no_delay));
    tokio::spawn(serve_failing(8105, never, no_delay));
    tokio::spawn(serve_failing(8106, never, no_delay));
    tokio::spawn(serve_failing(8107, always, no_delay));
    tokio::spawn(serve_failing(8109, always, no_delay));
    tokio::spawn(serve_failing(8108, never, Duration::from_millis(500)));
    tokio::spawn(serve_counting_peak(8112, Duration::from_millis(300)));
    tokio::spawn(serve_flaky_grpc(9100));
}

/// `calls <method> <target> <path> <count> <body bytes>`: sequential requests on keep-alive
/// connections: `<status>=<n> …`, and `proxy-error=<n>` for answers the proxy made.
async fn calls(method: &str, target: SocketAddr, path: &str, count: usize, size: usize) -> String {
    let mut statuses = BTreeMap::<String, usize>::new();
    let mut sender = None;
    let body = Bytes::from(vec![b'x'; size]);
    for _ in 0..count {
        if sender
            .as_ref()
            .is_none_or(|s: &hyper::client::conn::http1::SendRequest<Full<Bytes>>| s.is_closed())
        {
            let stream = tokio::net::TcpStream::connect(target)
                .await
                .expect("connect");
            let (s, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(connection);
            sender = Some(s);
        }
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "flaky.shop")
            .body(Full::new(body.clone()))
            .expect("request");
        let key = match sender.as_mut().expect("sender").send_request(request).await {
            Ok(response) => {
                if response.headers().contains_key("braid-proxy-error") {
                    *statuses.entry("proxy-error".into()).or_default() += 1;
                }
                let status = response.status().as_u16().to_string();
                let _ = response.into_body().collect().await;
                status
            }
            Err(_) => "error".into(),
        };
        *statuses.entry(key).or_default() += 1;
    }
    let counts: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}={v}")).collect();
    counts.join(" ")
}

/// `count <target> [path]`: what the application behind it received (`GET /count`, or the
/// path given).
async fn count(target: SocketAddr, path: &str) -> String {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", "flaky.shop")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// `burst <target> <n>`: `n` GETs at once, each on its own connection: `ok=<n>
/// overloaded=<n> other=<n>` (overloaded: a 503 the proxy's circuit breaker answered).
async fn burst(target: SocketAddr, n: usize) -> String {
    let calls: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { calls("GET", target, "/", 1, 0).await }))
        .collect();
    let (mut ok, mut overloaded, mut other) = (0, 0, 0);
    for call in calls {
        match call.await.expect("call").as_str() {
            "200=1" => ok += 1,
            "503=1 proxy-error=1" => overloaded += 1,
            _ => other += 1,
        }
    }
    format!("ok={ok} overloaded={overloaded} other={other}")
}

/// `grpc-calls <target> <n>`: `n` unary calls on one h2c connection: `<grpc-status>=<n> …`.
async fn grpc_calls(target: SocketAddr, n: usize) -> String {
    let stream = tokio::net::TcpStream::connect(target)
        .await
        .expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let mut statuses = BTreeMap::<String, usize>::new();
    for _ in 0..n {
        let request = Request::post("http://grpc-flaky.shop/braid.Echo/Unary")
            .version(Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
            .expect("request");
        let status = match sender.send_request(request).await {
            Ok(response) => {
                let (head, trailers) = crate::client::head_and_trailers(response).await;
                crate::client::grpc_field(&head, trailers.as_ref(), "grpc-status")
            }
            Err(e) => format!("error:{e}"),
        };
        *statuses.entry(status).or_default() += 1;
    }
    let counts: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}={v}")).collect();
    counts.join(" ")
}

/// The client commands of this module, if `command` is one.
pub async fn command(command: &str, arg: impl Fn(usize) -> String) -> Option<String> {
    let addr = |i: usize| arg(i).parse::<SocketAddr>().expect("host:port");
    let number = |i: usize| arg(i).parse::<usize>().expect("a number");
    Some(match command {
        "calls" => calls(&arg(1), addr(2), &arg(3), number(4), number(5)).await,
        "count" => count(addr(1), &arg(2)).await,
        "burst" => burst(addr(1), number(2)).await,
        "grpc-calls" => grpc_calls(addr(1), number(2)).await,
        _ => return None,
    })
}

fn field(result: &str, key: &str) -> usize {
    crate::count(result, key)
}

/// Runs the checks.
pub fn check(client: &Pod) {
    let calls = |method: &str, target: &str, count: usize, size: usize| {
        let (count, size) = (count.to_string(), size.to_string());
        client.client(false, &["calls", method, target, "/", &count, &size])
    };
    let received = |target: &str| -> usize {
        client
            .client(false, &["count", target, "/count"])
            .parse()
            .expect("a count")
    };
    let metric = |name: &str| client.metric(name) as i64;

    // 30% of requests fail: retried, every one succeeds; the same backend without a retry
    // policy fails 30%.
    let retried = calls("GET", "10.96.1.1:80", 1_000, 0);
    assert!(field(&retried, "200") >= 995, "with retries: {retried}");
    let plain = calls("GET", "10.96.1.2:80", 1_000, 0);
    let served = field(&plain, "200");
    assert!((650..=750).contains(&served), "without retries: {plain}");

    // A backend that fails everything: a GET goes 1 + 2 times, a POST that reached it and a
    // 1 MiB PUT once each.
    let failing = "10.96.1.3:80";
    let before = received(failing);
    assert_eq!(calls("GET", failing, 1, 0), "503=1");
    assert_eq!(received(failing), before + 3, "a GET is retried twice");
    assert_eq!(calls("POST", failing, 1, 10), "503=1");
    assert_eq!(
        received(failing),
        before + 4,
        "a POST that reached the peer is not"
    );
    assert_eq!(calls("PUT", failing, 1, 1 << 20), "503=1");
    assert_eq!(received(failing), before + 5, "nor a body over 64 KiB");
    // Under steady failure the retries stay within the budget: 20% of the requests plus 10 a
    // second (over the 10 s window, or the run if longer).
    let before = received(failing);
    let exhausted = metric("braid_proxy_retries_total{kind=\"budget_exhausted\"}");
    let requests = 500;
    let started = std::time::Instant::now();
    assert_eq!(
        calls("GET", failing, requests, 0),
        format!("503={requests}")
    );
    let window = (started.elapsed().as_secs() as usize + 1).max(10);
    let extra = received(failing) - before - requests;
    let bound = (requests + 3) / 5 + 10 * window;
    assert!(
        extra <= bound,
        "{extra} retries for {requests} requests (budget {bound})"
    );
    assert!(
        extra >= requests / 5,
        "the budget's share was used: {extra}"
    );
    assert!(metric("braid_proxy_retries_total{kind=\"budget_exhausted\"}") > exhausted);
    println!("resilience: {requests} failing requests cost {extra} retries (budget {bound})");

    // With no retry policy, a connection refused fails over to the other endpoint.
    let failovers = metric("braid_proxy_retries_total{kind=\"failover\"}");
    assert_eq!(calls("GET", "10.96.1.8:80", 20, 0), "200=20");
    assert!(metric("braid_proxy_retries_total{kind=\"failover\"}") >= failovers + 10);

    // An endpoint whose proxy answers that its application is not listening (stopped, or not
    // started): the request goes to the other endpoint, POSTs too.
    let failovers = metric("braid_proxy_retries_total{kind=\"failover\"}");
    assert_eq!(calls("POST", "10.96.1.9:80", 20, 10), "200=20");
    assert!(metric("braid_proxy_retries_total{kind=\"failover\"}") >= failovers + 10);

    // A canary whose only pod fails every request: each failure is retried on the stable
    // backend (the canary has no other pod), so every request succeeds.
    let retries = metric("braid_proxy_retries_total{kind=\"retry\"}");
    assert_eq!(calls("GET", "10.96.1.10:80", 40, 0), "200=40");
    let retried = metric("braid_proxy_retries_total{kind=\"retry\"}") - retries;
    assert!(
        (10..=30).contains(&retried),
        "{retried} retries of 40 requests, half to the canary"
    );

    // Of three endpoints, the one that always fails is ejected after 3 failures (round robin:
    // within 9 requests) and gets nothing for its 2 s; back on probation, one failure ejects
    // it again.
    let ejections = metric("braid_proxy_outlier_ejections_total");
    let ejected_now =
        || metric("braid_proxy_outlier_ejected_endpoints{destination=\"eject.shop\"}");
    assert_eq!(ejected_now(), 0);
    let first = calls("GET", "10.96.1.4:80", 60, 0);
    assert_eq!(first, "200=57 503=3", "three failures, then none");
    assert_eq!(metric("braid_proxy_outlier_ejections_total"), ejections + 1);
    assert_eq!(ejected_now(), 1, "the gauge counts the endpoint out");
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(ejected_now(), 0, "back after its ejection time");
    let back = calls("GET", "10.96.1.4:80", 30, 0);
    assert_eq!(back, "200=29 503=1", "back, failed once, ejected again");
    assert_eq!(metric("braid_proxy_outlier_ejections_total"), ejections + 2);

    // Two endpoints that both fail, at most 50% ejected: one goes, the other stays. (Ports
    // of their own: an endpoint's outlier state is shared by every destination that lists it.)
    let ejections = metric("braid_proxy_outlier_ejections_total");
    assert_eq!(calls("GET", "10.96.1.5:80", 20, 0), "503=20");
    let log = client.proxy_log();
    let ejected: Vec<&str> = log.lines().filter(|l| l.contains("ejected")).collect();
    assert_eq!(
        metric("braid_proxy_outlier_ejections_total"),
        ejections + 1,
        "{ejected:#?}"
    );

    // Past maxRequests (2) in flight, requests are refused at once with the proxy's header.
    let open = metric("braid_proxy_circuit_breaker_open_total");
    assert_eq!(
        client.client(false, &["burst", "10.96.1.6:80", "6"]),
        "ok=2 overloaded=4 other=0"
    );
    assert_eq!(metric("braid_proxy_circuit_breaker_open_total"), open + 4);

    // maxConnections 2, maxPendingRequests 2: of 6 requests at once (300 ms each), 2 go on
    // the 2 connections, 2 wait and take them as they free, 2 are refused at once; the
    // application never has more than 2 at a time.
    let open = metric("braid_proxy_circuit_breaker_open_total");
    assert_eq!(
        client.client(false, &["burst", "10.96.1.14:80", "6"]),
        "ok=4 overloaded=2 other=0"
    );
    assert_eq!(metric("braid_proxy_circuit_breaker_open_total"), open + 2);
    let peak = client.client(false, &["count", "10.96.1.14:80", "/peak"]);
    assert_eq!(peak, "2", "requests at once behind maxConnections 2");

    // gRPC answered UNAVAILABLE every other call: each call succeeds on its retry.
    assert_eq!(
        client.client(false, &["grpc-calls", "10.96.1.7:9100", "10"]),
        "0=10"
    );
}
