//! Requests on the fast path over real loopback sockets, against a scripted peer.

use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use super::*;

#[tokio::test(flavor = "current_thread")]
async fn requests_on_one_connection_share_one_peer_connection_without_hop_by_hop_headers() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (mut app, connections) = app_to(move |_, mut stream| {
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nkeep-alive: timeout=5\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        ];
        for answer in answers {
            let Some(request) = read_request(&mut stream) else {
                return;
            };
            log.lock().expect("log").push(request);
            stream.write_all(answer).expect("write");
        }
    })
    .await;
    app.send("GET /a HTTP/1.1\r\nhost: svc\r\nconnection: keep-alive\r\nkeep-alive: 5\r\n\r\n")
        .await;
    let first = app.response(false).await;
    assert_eq!((first.status, first.body.as_str()), (200, "hello"));
    app.send(GET).await;
    let second = app.response(false).await;
    assert_eq!(
        second.body, "5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        "the chunks as they came"
    );
    assert!(!second.head.contains("keep-alive"), "{}", second.head);
    app.send("HEAD /a HTTP/1.1\r\nhost: svc\r\n\r\n").await;
    let third = app.response(true).await;
    assert!(third.head.contains("content-length: 5") && third.body.is_empty());

    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one pooled connection"
    );
    let seen = seen.lock().expect("log");
    assert_eq!(
        seen[0], "GET /a HTTP/1.1\r\nhost: svc\r\n\r\n",
        "hop-by-hop headers dropped"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_in_pieces_and_a_pipelined_request_keep_their_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (mut app, _) = app_to(move |_, mut stream| {
        while let Some(request) = read_request(&mut stream) {
            let body = request
                .split_once("\r\n\r\n")
                .map_or("", |(_, b)| b)
                .to_string();
            log.lock().expect("log").push(request);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).expect("write");
        }
    })
    .await;
    app.send("POST /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 10\r\n\r\n01234")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.send(&format!("56789{GET}")).await;
    assert_eq!(app.response(false).await.body, "0123456789");
    assert_eq!(app.response(false).await.body, "");
    let seen = seen.lock().expect("log");
    assert_eq!(seen.len(), 2);
    assert!(seen[0].ends_with("\r\n\r\n0123456789") && seen[1].starts_with("GET /a "));
}

#[tokio::test(flavor = "current_thread")]
async fn a_response_delimited_by_close_closes_the_application_connection() {
    let (mut app, _) = app_to(|_, mut stream| {
        read_request(&mut stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end");
    })
    .await;
    app.send(GET).await;
    let got = app.response(false).await;
    assert!(got.head.contains("connection: close"), "{}", got.head);
    assert_eq!(got.body, "until the end");
    assert!(app.closed().await);
}

#[tokio::test(flavor = "current_thread")]
async fn interim_responses_pass_before_the_final_one() {
    let (mut app, _) = app_to(|_, mut stream| {
        read_request(&mut stream);
        let _ = stream.write_all(
            b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        );
        read_request(&mut stream);
    })
    .await;
    app.send(GET).await;
    let interim = app.response(false).await;
    assert_eq!(interim.status, 103);
    assert!(interim.head.contains("link: </s.css>"));
    let last = app.response(false).await;
    assert_eq!((last.status, last.body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_malformed_response_is_a_502_and_the_connection_goes_on() {
    let (mut app, connections) = app_to(|index, mut stream| {
        while read_request(&mut stream).is_some() {
            let answer: &[u8] = if index == 0 {
                b"SPDY/9 200\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            };
            let _ = stream.write_all(answer);
        }
    })
    .await;
    app.send(GET).await;
    let bad = app.response(false).await;
    assert_eq!(bad.status, 502);
    assert!(bad.body.starts_with("braid-proxy: "), "{}", bad.body);
    app.send(GET).await;
    assert_eq!(app.response(false).await.status, 200);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the bad connection was not reused"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_pooled_connection_the_peer_closed_while_idle_is_not_used() {
    // The peer closes each connection after one response, without saying so.
    let (mut app, connections) = app_to(|_, mut stream| {
        read_request(&mut stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    })
    .await;
    app.send(GET).await;
    assert_eq!(app.response(false).await.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Not replayable: it must not meet the closed connection.
    app.send("POST /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 1\r\n\r\nx")
        .await;
    assert_eq!(app.response(false).await.status, 200);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

/// A peer that answers a first request, then closes that connection when the next request
/// arrives on it (as one whose idle timer fired just then), and answers on a new connection.
fn closing_on_second_request() -> impl Fn(usize, std::net::TcpStream) + Send + Sync + 'static {
    |index, mut stream| {
        read_request(&mut stream);
        if index == 0 {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            read_request(&mut stream);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        } else {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_get_that_meets_a_connection_closed_under_it_goes_again_on_a_new_one() {
    let (mut app, connections) = app_to(closing_on_second_request()).await;
    app.send(GET).await;
    assert_eq!(app.response(false).await.body, "ok");
    tokio::time::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(50)).await;
    app.send(GET).await;
    assert_eq!(app.response(false).await.body, "again");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_post_that_meets_a_connection_closed_under_it_is_not_sent_again() {
    let (mut app, connections) = app_to(closing_on_second_request()).await;
    app.send(GET).await;
    assert_eq!(app.response(false).await.body, "ok");
    tokio::time::sleep(REPLAY_AFTER_IDLE + Duration::from_millis(50)).await;
    app.send("POST /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 0\r\n\r\n")
        .await;
    assert_eq!(app.response(false).await.status, 502);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn a_chunked_upload_goes_on_under_hyper() {
    let (mut app, seen) = app_to_recording_peer().await;
    app.send(
        "POST /u HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(app.response(false).await.body, "ok");
    app.send(GET).await;
    assert_eq!(
        app.response(false).await.body,
        "ok",
        "hyper serves what follows"
    );
    let seen = seen.lock().expect("log");
    assert!(
        seen[0].contains("abc") && seen[1].starts_with("GET /a "),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_does_not_keep_a_replaced_config() {
    let (addr, _) = peer(|_, mut stream| {
        while read_request(&mut stream).is_some() {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    });
    let context = context(addr, None);
    let mut app = App::connect(&context).await;
    app.send(GET).await;
    assert_eq!(app.response(false).await.status, 200);
    // The connection now waits for its next request.
    let replaced = context.config.current().expect("a config");
    let policy = serde_json::to_value(braid_proxy_config::ClientPolicy {
        request_timeout_ms: Some(1_000),
        ..Default::default()
    })
    .expect("policy");
    context
        .config
        .offer(&config(addr, Some(policy)))
        .expect("valid config");
    assert_eq!(Arc::strong_count(&replaced), 1, "only this test holds it");
    app.send(GET).await;
    assert_eq!(app.response(false).await.status, 200);
}

#[tokio::test(flavor = "current_thread")]
async fn an_application_that_hangs_up_cancels_its_request_at_the_peer() {
    let (peer_saw_close, closed) = std::sync::mpsc::channel();
    let (mut app, _) = app_to(move |_, mut stream| {
        read_request(&mut stream);
        // No answer: the request is still in the works when the application goes.
        let mut byte = [0u8; 1];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let _ = peer_saw_close.send(matches!(stream.read(&mut byte), Ok(0)));
    })
    .await;
    app.send(GET).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(app);
    let saw_close = tokio::task::spawn_blocking(move || closed.recv().expect("peer reports"))
        .await
        .expect("joined");
    assert!(
        saw_close,
        "the peer's connection was closed, not left waiting"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn no_response_within_the_request_timeout_is_a_504() {
    let (addr, _) = peer(|_, mut stream| {
        read_request(&mut stream);
        std::thread::sleep(Duration::from_secs(2));
    });
    let policy = serde_json::to_value(braid_proxy_config::ClientPolicy {
        request_timeout_ms: Some(200),
        ..Default::default()
    })
    .expect("policy");
    let context = context(addr, Some(policy));
    let mut app = App::connect(&context).await;
    app.send(GET).await;
    let got = app.response(false).await;
    assert_eq!(got.status, 504, "{got:?}");
    assert!(
        !got.head.contains("connection: close"),
        "the request was read whole"
    );
}
