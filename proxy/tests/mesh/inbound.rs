//! The HTTP-aware inbound side, on the two pods of the mesh test. The server pod's recorder
//! (port 8095, [`serve_recorder`]) answers each request with the bytes it received for it, and
//! `/seen` with the request lines of every request it was given. Callers send raw bytes
//! straight to the server pod (the client command `exchange`, unredirected): plaintext under
//! PERMISSIVE, mTLS with a mesh certificate under STRICT. They show:
//!
//! - pipelined keep-alive requests (with and without a body) reach the application byte for
//!   byte, each answered in order;
//! - a chunked upload reaches it as a chunked request with the same body, and the request
//!   after it on the same connection is served;
//! - a request whose length is ambiguous (both `Content-Length` and `Transfer-Encoding`, or two
//!   `Content-Length`s) is refused with 400 and the proxy's error header, and neither it nor
//!   anything behind it reaches the application (no request smuggling);
//! - the inbound proxy counts the requests it parsed.
//!
//! (HTTP/2, gRPC and websockets through the inbound side are the main scenario's: the server
//! pod's policy decides on requests, so its proxy serves HTTP/2 request by request too.)

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::pods::{Ca, Pod, SERVER_IP};

/// The recorder's port.
pub const RECORDER_PORT: u16 = 8095;

/// The end of a request at the start of `buf`, as the recorder reads it: head, then a
/// `Content-Length` body or a chunked one (ended by its last chunk; no trailers in this test).
fn request_end(buf: &[u8]) -> Option<usize> {
    let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
    if text.contains("transfer-encoding: chunked") {
        let end = buf[head..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head + end + 5);
    }
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head + length).then_some(head + length)
}

/// The recorder: every request is answered with its own bytes; `GET /seen` with the request
/// lines of all requests so far, one per line.
pub async fn serve_recorder() {
    let listener = TcpListener::bind(("0.0.0.0", RECORDER_PORT))
        .await
        .expect("bind");
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(end) = request_end(&buf) {
                    let request: Vec<u8> = buf.drain(..end).collect();
                    let line = String::from_utf8_lossy(&request)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let body = if line.starts_with("GET /seen ") {
                        seen.lock().expect("lock").join("\n").into_bytes()
                    } else {
                        seen.lock().expect("lock").push(line);
                        request
                    };
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    if stream.write_all(head.as_bytes()).await.is_err()
                        || stream.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
}

/// Reads `count` responses (or what comes before the connection ends, 5 s at most): each as
/// `<status> <proxy-error header or -> <body, CRLF as ¶>`, joined by ` | `.
async fn responses<S: AsyncRead + Unpin>(stream: &mut S, count: usize) -> String {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while out.len() < count {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(&buf) {
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head + length {
                // CRLF as `¶`, so that a body is one line of the result.
                let body = String::from_utf8_lossy(&buf[head..head + length]).replace("\r\n", "¶");
                out.push(format!(
                    "{} {} {body}",
                    response.code.unwrap_or(0),
                    header("braid-proxy-error").unwrap_or_else(|| "-".into()),
                ));
                buf.drain(..head + length);
                continue;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    // Whether the proxy closed the connection after the last response.
    let closed = matches!(
        tokio::time::timeout(Duration::from_millis(500), stream.read(&mut chunk)).await,
        Ok(Ok(0) | Err(_))
    );
    format!("{} closed={closed}", out.join(" | "))
}

/// The client command `exchange <addr> <identity dir or -> <count> <payload, escaped>`: sends
/// the payload in one write (plaintext, or mTLS with the mesh certificate in the directory)
/// and reports `count` responses.
pub async fn exchange(target: SocketAddr, dir: &str, count: usize, payload: &str) -> String {
    let payload = unescape(payload);
    let Ok(stream) = TcpStream::connect(target).await else {
        return "connect-failed".into();
    };
    if dir == "-" {
        return send(stream, &payload, count).await;
    }
    let read = |f: &str| std::fs::read(format!("{dir}/{f}")).expect("pem");
    let identity =
        braid_proxy::tls::identity::load(&read("tls.crt"), &read("tls.key"), &read("ca.crt"))
            .expect("identity");
    let connector = tokio_rustls::TlsConnector::from(identity.client.clone());
    let server = rustls::pki_types::ServerName::IpAddress(target.ip().into());
    match connector.connect(server, stream).await {
        Ok(tls) => send(tls, &payload, count).await,
        Err(e) => format!("refused: {e}"),
    }
}

async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    payload: &[u8],
    count: usize,
) -> String {
    if stream.write_all(payload).await.is_err() {
        return "write-failed".into();
    }
    responses(&mut stream, count).await
}

/// `\r` and `\n` in a command-line argument as the bytes.
fn unescape(text: &str) -> Vec<u8> {
    text.replace("\\r", "\r").replace("\\n", "\n").into_bytes()
}

/// Runs the checks with the server pod in `mode` (its config already in force).
pub fn check(client: &Pod, server: &Pod, ca: &Ca, root: &std::path::Path, mode: &str) {
    let dir = if mode == "STRICT" {
        ca.identity_dir(
            &root.join("inbound-caller"),
            "spiffe://cluster.local/ns/shop/sa/order",
        )
    } else {
        "-".into()
    };
    let recorder = format!("{SERVER_IP}:{RECORDER_PORT}");
    let exchange = |count: &str, payload: &str| {
        client.client(true, &["exchange", &recorder, &dir, count, payload])
    };
    let get_a = "GET /a HTTP/1.1\\r\\nhost: payment\\r\\n\\r\\n";
    let post_b = "POST /b HTTP/1.1\\r\\nhost: payment\\r\\ncontent-length: 5\\r\\n\\r\\nhello";
    let get_c = "GET /c HTTP/1.1\\r\\nhost: payment\\r\\n\\r\\n";
    let pipelined = exchange("3", &format!("{get_a}{post_b}{get_c}"));
    let echoed = |request: &str| format!("200 - {}", request.replace("\\r\\n", "¶"));
    assert_eq!(
        pipelined,
        format!(
            "{} | {} | {} closed=false",
            echoed(get_a),
            echoed(post_b),
            echoed(get_c)
        ),
        "{mode}: pipelined keep-alive requests reach the application as sent"
    );

    let chunked = "POST /chunked HTTP/1.1\\r\\nhost: payment\\r\\ntransfer-encoding: chunked\\r\\n\\r\\n5\\r\\nhello\\r\\n6\\r\\n world\\r\\n0\\r\\n\\r\\n";
    let after = "GET /after-chunked HTTP/1.1\\r\\nhost: payment\\r\\n\\r\\n";
    let result = exchange("2", &format!("{chunked}{after}"));
    let (first, rest) = result.split_once(" | ").unwrap_or((&result, ""));
    // The body of the chunked request the application got, decoded.
    let decoded: String = first
        .split("¶¶")
        .nth(1)
        .unwrap_or_default()
        .split('¶')
        .skip(1)
        .step_by(2)
        .collect();
    assert!(
        first.starts_with("200 - POST /chunked HTTP/1.1¶")
            && first
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            && decoded == "hello world",
        "{mode}: a chunked upload reaches the application whole: {result}"
    );
    assert_eq!(
        rest,
        format!("{} closed=false", echoed(after)),
        "{mode}: {result}"
    );

    for (name, smuggler) in [
        (
            "CL+TE",
            "POST /cl-te HTTP/1.1\\r\\nhost: payment\\r\\ncontent-length: 4\\r\\ntransfer-encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\nGET /smuggled HTTP/1.1\\r\\nhost: payment\\r\\n\\r\\n",
        ),
        (
            "CL+CL",
            "POST /cl-cl HTTP/1.1\\r\\nhost: payment\\r\\ncontent-length: 3\\r\\ncontent-length: 41\\r\\n\\r\\nabcGET /smuggled HTTP/1.1\\r\\nhost: payment\\r\\n\\r\\n",
        ),
    ] {
        let refused = exchange("2", smuggler);
        assert!(
            refused.starts_with("400 malformed request: ")
                && refused.ends_with("closed=true")
                && !refused.contains(" | "),
            "{mode}: {name} must be refused, once, and the connection closed: {refused}"
        );
    }
    let seen = exchange("1", "GET /seen HTTP/1.1\\r\\nhost: payment\\r\\n\\r\\n");
    assert!(
        seen.contains("POST /b HTTP/1.1") && !seen.contains("smuggled") && !seen.contains("/cl-"),
        "{mode}: an ambiguous request reached the application: {seen}"
    );
    let inbound = server.metric("braid_proxy_requests_total{direction=\"inbound\"}");
    assert!(
        inbound >= 7.0,
        "{mode}: the inbound side parsed {inbound} requests"
    );
    let refusals = server
        .metric("braid_proxy_request_failures_total{direction=\"inbound\",response_flag=\"DPE\"}");
    assert!(refusals >= 2.0, "{mode}: {refusals} refusals counted");
}
