//! Deadlines and the client's own errors on the fast path, over real loopback sockets (real
//! time: the deadlines are set to a few hundred milliseconds in the config).

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// A context towards `peer` whose head and idle deadlines are `head_ms` and `idle_ms`.
fn with_limits(peer: SocketAddr, head_ms: u64, idle_ms: u64) -> Arc<Context> {
    let mut document: serde_json::Value =
        serde_json::from_slice(&config(peer, None)).expect("json");
    document["limits"] = serde_json::json!({
        "requestHeadTimeoutMs": head_ms, "idleTimeoutMs": idle_ms});
    let context = Context::new(Duration::from_millis(100));
    context
        .config
        .offer(document.to_string().as_bytes())
        .expect("valid config");
    context
}

fn ok_peer() -> SocketAddr {
    peer(|_, mut stream| {
        while read_request(&mut stream).is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    })
    .0
}

fn timed_out(context: &Context, deadline: &str) -> bool {
    let mut text = String::new();
    context.metrics.render(&mut text);
    let series = format!(
        "braid_proxy_tcp_connections_timed_out_total{{direction=\"outbound\",deadline=\"{deadline}\"}} 1"
    );
    text.lines().any(|l| l == series)
}

#[tokio::test(flavor = "current_thread")]
async fn a_head_sent_too_slowly_is_closed_at_its_deadline() {
    let context = with_limits(ok_peer(), 300, 60_000);
    let mut app = App::connect(&context).await;
    let started = Instant::now();
    app.send("GET /slow HTTP/1.1\r\nhost: svc\r\n").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.send("x-a: b\r\n").await;
    assert!(app.closed().await, "closed without an answer");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(300) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
    assert!(timed_out(&context, "request_head"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_keep_alive_connection_is_closed_once_idle_and_not_while_used() {
    let context = with_limits(ok_peer(), 10_000, 400);
    let mut app = App::connect(&context).await;
    for _ in 0..4 {
        app.send(GET).await;
        assert_eq!(app.response(false).await.body, "ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quiet = Instant::now();
    assert!(app.closed().await);
    assert!(
        quiet.elapsed() >= Duration::from_millis(150),
        "{:?}",
        quiet.elapsed()
    );
    assert!(timed_out(&context, "idle"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_malformed_chunked_body_is_the_clients_fault_a_400() {
    let (mut app, _) = app_to(|_, mut stream| {
        // Reads whatever comes; answers nothing (the request never ends well).
        let mut sink = [0u8; 1024];
        while std::io::Read::read(&mut stream, &mut sink).unwrap_or(0) > 0 {}
    })
    .await;
    app.send("POST /u HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n")
        .await;
    let got = app.response(false).await;
    assert_eq!(got.status, 400, "{got:?}");
    assert!(got.body.contains("malformed request"), "{got:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn agreeing_content_lengths_reach_the_peer_as_one() {
    let (mut app, seen) = app_to_recording_peer().await;
    app.send("POST /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc")
        .await;
    assert_eq!(app.response(false).await.body, "ok");
    let seen = seen.lock().expect("log");
    assert_eq!(seen[0].matches("content-length").count(), 1, "{seen:?}");
    assert!(seen[0].ends_with("\r\n\r\nabc"), "{seen:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_waits_for_the_config_that_lists_its_endpoints() {
    let peer = ok_peer();
    let mut empty: serde_json::Value = serde_json::from_slice(&config(peer, None)).expect("json");
    empty["destinations"][0]["ports"][0]["endpoints"] = serde_json::json!([]);
    let context = Context::new(Duration::from_millis(100));
    context
        .config
        .offer(empty.to_string().as_bytes())
        .expect("valid config");
    let mut app = App::connect(&context).await;
    let asked = Instant::now();
    app.send(GET).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    context
        .config
        .offer(&config(peer, None))
        .expect("valid config");
    let got = app.response(false).await;
    assert_eq!((got.status, got.body.as_str()), (200, "ok"), "{got:?}");
    assert!(asked.elapsed() >= Duration::from_millis(300));

    // With no such config on its way, the request fails once the hold is over.
    context
        .config
        .offer(empty.to_string().as_bytes())
        .expect("valid config");
    let asked = Instant::now();
    app.send(GET).await;
    let got = app.response(false).await;
    assert_eq!(got.status, 503, "{got:?}");
    assert!(
        asked.elapsed() >= Duration::from_millis(2_900),
        "{:?}",
        asked.elapsed()
    );
}
