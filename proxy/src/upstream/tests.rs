//! Tests of the peer connections and pools, against real loopback servers.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::mpsc;

use http_body_util::Empty;

use super::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Reads one request head (the requests here have no body).
fn read_head(stream: &mut std::net::TcpStream) {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        seen.push(byte[0]);
    }
}

/// `n` empty bodies of the type the proxy forwards (hyper's `Incoming`), taken from the
/// responses of a throwaway server.
async fn incoming_bodies(n: usize) -> Vec<Incoming> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        for _ in 0..n {
            read_head(&mut stream);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    for _ in 0..n {
        let request = Request::get("/")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        bodies.push(response.into_body());
    }
    bodies
}

/// Sends `request` with hyper's HTTP/1.1 client the way the proxy does: a connection first,
/// then the request on it.
async fn send(
    upstreams: &Arc<Upstreams>,
    addr: SocketAddr,
    timeout: Duration,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, UpstreamError> {
    send_limited(upstreams, &endpoint(addr, None), timeout, request).await
}

/// A plaintext endpoint at `addr`, with `limits` if any.
fn endpoint(addr: SocketAddr, limits: Option<Arc<ConnectionLimits>>) -> CompiledEndpoint {
    CompiledEndpoint {
        addr,
        identity: None,
        stats: Arc::default(),
        limits,
    }
}

/// [`send`] to `endpoint`, under its limits.
async fn send_limited(
    upstreams: &Arc<Upstreams>,
    endpoint: &CompiledEndpoint,
    timeout: Duration,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, UpstreamError> {
    let addr = endpoint.addr;
    let connection = upstreams.http1_sender(endpoint, timeout).await?;
    let request = request.map(RequestBody::from);
    upstreams
        .send_http1(connection, addr, timeout, request, false)
        .await
}

/// A peer that answers one request, closes that connection while it is idle when told to,
/// then answers one more request on a new connection (if one comes).
fn closing_peer() -> (SocketAddr, mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (close_first, closed) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (mut first, _) = listener.accept().expect("accept");
        read_head(&mut first);
        first.write_all(OK).expect("write");
        closed.recv().expect("signal");
        drop(first);
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            if let Ok((mut second, _)) = listener.accept() {
                second.set_nonblocking(false).expect("blocking");
                read_head(&mut second);
                return second.write_all(OK).is_ok();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    (addr, close_first, peer)
}

/// Sends a first request, lets the peer close the pooled connection, and sends a second
/// with `method` before the proxy's thread can notice; the second's result.
async fn after_the_peer_closed(method: hyper::Method) -> Result<u16, UpstreamError> {
    let (addr, close_first, peer) = closing_peer();
    let upstreams = Arc::new(Upstreams::default());
    let mut bodies = incoming_bodies(2).await.into_iter();
    let mut request = |method: hyper::Method| {
        Request::builder()
            .method(method)
            .uri("/")
            .header("host", "peer")
            .body(bodies.next().expect("body"))
            .expect("request")
    };
    let timeout = Duration::from_secs(5);
    let first = send(&upstreams, addr, timeout, request(hyper::Method::GET))
        .await
        .expect("first");
    assert_eq!(first.status(), 200);
    close_first.send(()).expect("signal");
    // Block the runtime so that the pooled connection's task cannot read the peer's FIN
    // before the next request takes the connection (the race under test), for longer than
    // a busy connection's idle time.
    std::thread::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(50));
    let second = send(&upstreams, addr, timeout, request(method))
        .await
        .map(|response| response.status().as_u16());
    let _ = peer.join();
    second
}

#[tokio::test(flavor = "current_thread")]
async fn idle_pooled_connections_are_closed_after_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        read_head(&mut stream);
        let _ = stream.write_all(OK);
        // Held open until the proxy closes it.
        let _ = stream.read(&mut [0u8; 1]);
    });
    let upstreams = Arc::new(Upstreams::default());
    let body = incoming_bodies(1).await.pop().expect("body");
    let request = Request::get("/").header("host", "peer").body(body);
    let response = send(
        &upstreams,
        addr,
        Duration::from_secs(5),
        request.expect("request"),
    )
    .await
    .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(upstreams.idle_connections(), 1);
    upstreams.close_idle(POOL_IDLE_TIMEOUT);
    assert_eq!(upstreams.idle_connections(), 1, "closed before its time");
    upstreams.close_idle(Duration::ZERO);
    assert_eq!(upstreams.idle_connections(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn an_idempotent_request_on_a_connection_the_peer_closed_goes_again_on_a_new_one() {
    let second = after_the_peer_closed(hyper::Method::GET).await;
    assert_eq!(second.expect("served on a new connection"), 200);
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_that_may_not_go_twice_is_not_sent_again() {
    let second = after_the_peer_closed(hyper::Method::POST).await;
    assert!(second.is_err(), "a POST was replayed: {second:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn past_max_connections_a_request_waits_for_a_pooled_one_and_past_max_pending_is_refused() {
    // A peer that answers each request after 100 ms, and counts its connections.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::spawn({
        let accepted = accepted.clone();
        move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::spawn(move || {
                    loop {
                        read_head(&mut stream);
                        std::thread::sleep(Duration::from_millis(100));
                        if stream.write_all(OK).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    let limits = Arc::new(ConnectionLimits {
        name: "slow.shop".into(),
        max_connections: 1,
        max_pending: 1,
        state: Arc::default(),
    });
    let endpoint = Arc::new(endpoint(addr, Some(limits.clone())));
    let upstreams = Arc::new(Upstreams::default());
    let calls: Vec<_> = incoming_bodies(3)
        .await
        .into_iter()
        .map(|body| {
            let (upstreams, endpoint) = (upstreams.clone(), endpoint.clone());
            let request = Request::get("/").header("host", "peer").body(body);
            tokio::spawn(async move {
                let request = request.expect("request");
                let timeout = Duration::from_secs(5);
                match send_limited(&upstreams, &endpoint, timeout, request).await {
                    Ok(response) => response.status().to_string(),
                    Err(error) => error.to_string(),
                }
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.expect("call"));
    }
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            "200 OK",
            "200 OK",
            "overloaded: slow.shop: 1 requests waiting for a connection \
             (circuit breaker maxPendingRequests)"
        ]
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the waiting request took the first one's connection"
    );
    assert_eq!(limits.state.connections(), 1, "pooled, still counted");
    upstreams.close_idle(Duration::ZERO);
    tokio::time::timeout(Duration::from_secs(5), async {
        while limits.state.connections() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("closed, no longer counted");
}
