//! The HTTP/1.1 fast path over real loopback sockets: an application connection served by
//! [`serve`], a scripted peer (a plain-HTTP endpoint, as one outside the mesh is reached) on a
//! thread of its own.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::h1::message::ChunkedScanner;

const ORIGINAL: &str = "10.96.0.10:80";

/// Reads one request (head and body, as `Content-Length` or chunked coding delimit it) from a
/// blocking stream; `None` at the end of the stream.
fn read_request(stream: &mut std::net::TcpStream) -> Option<String> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let mut scanner = ChunkedScanner::default();
        loop {
            if stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            raw.push(byte[0]);
            if scanner.scan(&byte).ok()?.is_some() {
                break;
            }
        }
    } else if let Some(length) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
    {
        let mut body = vec![0u8; length.trim().parse().ok()?];
        stream.read_exact(&mut body).ok()?;
        raw.extend_from_slice(&body);
    }
    Some(String::from_utf8_lossy(&raw).into_owned())
}

/// A peer on 127.0.0.1 that runs `handler` on each connection (with its index); the count of
/// connections it accepted.
fn peer<F>(handler: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, std::net::TcpStream) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let index = count.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            std::thread::spawn(move || handler(index, stream));
        }
    });
    (addr, accepted)
}

/// A context whose config routes [`ORIGINAL`] to `peer` in plaintext, with `policy` if given.
fn context(peer: SocketAddr, policy: Option<serde_json::Value>) -> Arc<Context> {
    let context = Context::new(Duration::from_millis(100));
    context
        .config
        .offer(&config(peer, policy))
        .expect("valid config");
    context
}

/// A config that routes [`ORIGINAL`] to `peer` in plaintext, with `policy` if given.
fn config(peer: SocketAddr, policy: Option<serde_json::Value>) -> Vec<u8> {
    let mut destination = serde_json::json!({
        "name": "svc.ns", "clusterIps": ["10.96.0.10"],
        "ports": [{"port": 80, "protocol": "http",
                   "endpoints": [{"ip": "127.0.0.1", "port": peer.port()}]}],
    });
    if let Some(policy) = policy {
        destination["policy"] = policy;
    }
    serde_json::json!({
        "version": 1,
        "workload": {"namespace": "ns", "name": "w", "identity": "spiffe://t/ns/ns/sa/w"},
        "inbound": {"mtlsMode": "PERMISSIVE"},
        "destinations": [destination],
    })
    .to_string()
    .into_bytes()
}

/// The application's side of a connection served by the fast path.
struct App {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// A response as the application got it.
#[derive(Debug)]
struct Got {
    status: u16,
    head: String,
    body: String,
}

impl App {
    async fn connect(context: &Arc<Context>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let stream = tokio::net::TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (served, _) = listener.accept().await.expect("accept");
        let original = ORIGINAL.parse().expect("addr");
        tokio::spawn(serve(
            context.clone(),
            served,
            Bound::Outbound(original),
            Vec::new(),
            tokio::time::Instant::now(),
        ));
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &str) {
        self.stream.write_all(raw.as_bytes()).await.expect("write");
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..read]);
        read > 0
    }

    /// The next response (an interim one counts as one); its body as the bytes on the wire.
    async fn response(&mut self, to_head: bool) -> Got {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = response.parse(&self.buf) {
                let status = response.code.expect("status");
                let head = String::from_utf8_lossy(&self.buf[..head_len]).to_ascii_lowercase();
                let body_len = self.body_len(&head, head_len, status, to_head).await;
                let body =
                    String::from_utf8_lossy(&self.buf[head_len..head_len + body_len]).into_owned();
                self.buf.drain(..head_len + body_len);
                return Got { status, head, body };
            }
            assert!(self.fill().await, "closed before a response head");
        }
    }

    async fn body_len(&mut self, head: &str, head_len: usize, status: u16, to_head: bool) -> usize {
        if to_head || status < 200 || status == 204 {
            return 0;
        }
        if head.contains("transfer-encoding: chunked") {
            loop {
                let mut scanner = ChunkedScanner::default();
                if let Ok(Some(end)) = scanner.scan(&self.buf[head_len..]) {
                    return end;
                }
                assert!(self.fill().await, "closed in a chunked body");
            }
        }
        if let Some(length) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
        {
            let length: usize = length.trim().parse().expect("length");
            while self.buf.len() < head_len + length {
                assert!(self.fill().await, "closed in a body");
            }
            return length;
        }
        while self.fill().await {}
        self.buf.len() - head_len
    }

    async fn closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

/// An application connection served by the fast path, towards a peer that runs `handler`; the
/// count of connections the peer accepted.
async fn app_to<F>(handler: F) -> (App, Arc<AtomicUsize>)
where
    F: Fn(usize, std::net::TcpStream) + Send + Sync + 'static,
{
    let (addr, connections) = peer(handler);
    (App::connect(&context(addr, None)).await, connections)
}

/// An application connection towards a peer that answers every request `200 ok`; the
/// requests as the peer read them.
async fn app_to_recording_peer() -> (App, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let (app, _) = app_to(move |_, mut stream| {
        while let Some(request) = read_request(&mut stream) {
            log.lock().expect("log").push(request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        }
    })
    .await;
    (app, seen)
}

/// A request without body.
const GET: &str = "GET /a HTTP/1.1\r\nhost: svc\r\n\r\n";

mod forward;
mod limits;
