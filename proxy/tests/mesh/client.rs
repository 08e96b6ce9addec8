//! The client "pod"'s application side: each command makes real connections from inside the
//! client namespace (through the iptables redirect, unless run as UID 1337) and prints one
//! `result:` line for the test to read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Frame;
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::apps::ChannelBody;
use crate::attack;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("host:port")
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 connection to `target` (its task spawned), if one can be made.
pub async fn http1(target: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(target).await.ok()?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// `count` sequential GETs on keep-alive connections (reopened if closed); counts responses by
/// their first word (`v1`, `v2`, or the status of a failure).
async fn http_count(target: SocketAddr, path: &str, count: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let mut sender: Option<Sender> = None;
    for _ in 0..count {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = http1(target).await;
        }
        let outcome = match sender.as_mut() {
            None => "connect-failed".to_string(),
            Some(sender) => {
                let request = Request::get(path)
                    .header("host", "payment.shop")
                    .body(Empty::new())
                    .expect("request");
                match sender.send_request(request).await {
                    Err(e) => format!("error:{e}"),
                    Ok(response) if !response.status().is_success() => {
                        let status = response.status().as_u16();
                        let body = response.into_body().collect().await.map(|b| b.to_bytes());
                        format!(
                            "status:{status}:{}",
                            String::from_utf8_lossy(&body.unwrap_or_default()).trim()
                        )
                    }
                    Ok(response) => match response.into_body().collect().await {
                        Ok(body) => String::from_utf8_lossy(&body.to_bytes())
                            .split(' ')
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                        Err(e) => format!("body-error:{e}"),
                    },
                }
            }
        };
        *counts.entry(outcome).or_default() += 1;
    }
    counts
}

/// `count` concurrent GETs multiplexed on one h2c connection.
async fn h2(target: SocketAddr, count: usize) -> String {
    let Ok(stream) = TcpStream::connect(target).await else {
        return "connect-failed".into();
    };
    let Ok((sender, connection)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
    else {
        return "handshake-failed".into();
    };
    tokio::spawn(connection);
    let mut tasks = Vec::new();
    for i in 0..count {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let request = Request::get(format!("http://payment.shop/h2/{i}"))
                .version(Version::HTTP_2)
                .body(Empty::<Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.ok()?;
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some(String::from_utf8_lossy(&body).into_owned())
        }));
    }
    let mut ok = 0;
    let mut sample = String::new();
    for task in tasks {
        if let Ok(Some(body)) = task.await
            && body.ends_with("HTTP/2.0")
        {
            ok += 1;
            sample = body;
        }
    }
    format!("ok={ok} sample={sample}")
}

fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = vec![0u8];
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    Bytes::from(frame)
}

/// An h2c connection for gRPC calls to `target` (its task spawned), or what failed.
async fn grpc_connection(
    target: SocketAddr,
) -> Result<hyper::client::conn::http2::SendRequest<ChannelBody>, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|_| "connect-failed".to_string())?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|_| "handshake-failed".to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// A response's head and trailers (its body read and dropped).
pub async fn head_and_trailers(
    response: hyper::Response<hyper::body::Incoming>,
) -> (hyper::http::response::Parts, Option<hyper::HeaderMap>) {
    let (head, body) = response.into_parts();
    let trailers = body
        .collect()
        .await
        .ok()
        .and_then(|c| c.trailers().cloned());
    (head, trailers)
}

/// A gRPC field (`grpc-status`, `grpc-message`) from the head of a trailers-only response or
/// from the trailers; `-` when neither has it.
pub fn grpc_field(
    head: &hyper::http::response::Parts,
    trailers: Option<&hyper::HeaderMap>,
    name: &str,
) -> String {
    head.headers
        .get(name)
        .or_else(|| trailers.and_then(|t| t.get(name)))
        .map_or("-", |v| v.to_str().unwrap_or("?"))
        .to_string()
}

/// One unary gRPC call: `http=<status> grpc-status=<code> message=<grpc-message>
/// proxy-error=<yes|no>`, from the response head (a trailers-only response) or its trailers.
async fn grpc_status(target: SocketAddr) -> String {
    let mut sender = match grpc_connection(target).await {
        Ok(sender) => sender,
        Err(failed) => return failed,
    };
    let request = Request::post("http://grpc.shop/braid.Echo/Unary")
        .version(Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(ChannelBody({
            let (frames, body) = mpsc::channel(1);
            let _ = frames.try_send(Frame::data(grpc_frame(b"hello")));
            body
        }))
        .expect("request");
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(e) => return format!("error:{e}"),
    };
    let (head, trailers) = head_and_trailers(response).await;
    let field = |name: &str| grpc_field(&head, trailers.as_ref(), name);
    format!(
        "http={} grpc-status={} message={} proxy-error={}",
        head.status.as_u16(),
        field("grpc-status"),
        field("grpc-message"),
        if head.headers.contains_key("braid-proxy-error") {
            "yes"
        } else {
            "no"
        }
    )
}

/// gRPC unary and bidirectional streaming against the echo service.
async fn grpc(target: SocketAddr) -> String {
    let mut sender = match grpc_connection(target).await {
        Ok(sender) => sender,
        Err(failed) => return failed,
    };
    let grpc_request = |method: &str| {
        Request::post(format!("http://grpc.shop/braid.Echo/{method}"))
            .version(Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
    };
    // Unary.
    let (unary_sender, unary_body) = mpsc::channel(1);
    let _ = unary_sender.send(Frame::data(grpc_frame(b"hello"))).await;
    drop(unary_sender);
    let request = grpc_request("Unary")
        .body(ChannelBody(unary_body))
        .expect("request");
    let unary = match sender.send_request(request).await {
        Ok(response) => match response.into_body().collect().await {
            Ok(collected) => {
                let status = collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .map(|v| v.to_str().unwrap_or_default().to_string());
                let body = collected.to_bytes();
                if body == grpc_frame(b"hello") && status.as_deref() == Some("0") {
                    "ok".to_string()
                } else {
                    format!("bad(body={body:?},status={status:?})")
                }
            }
            Err(e) => format!("body-error:{e}"),
        },
        Err(e) => format!("error:{e}"),
    };
    // Streaming: each echo must arrive before the next message is sent.
    let (stream_sender, stream_body) = mpsc::channel(4);
    let request = grpc_request("Stream")
        .body(ChannelBody(stream_body))
        .expect("request");
    let streaming = async {
        let _ = stream_sender.send(Frame::data(grpc_frame(b"one"))).await;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let mut body = response.into_body();
        let mut echoed = Vec::new();
        for next in [&b"two"[..], b"three"] {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .map_err(|_| "no echo before the next message: not streamed")?;
            let data = frame
                .ok_or("ended early")?
                .map_err(|e| e.to_string())?
                .into_data()
                .map_err(|_| "trailers too early")?;
            echoed.push(data);
            let _ = stream_sender.send(Frame::data(grpc_frame(next))).await;
        }
        drop(stream_sender);
        let mut status = None;
        while let Some(Ok(frame)) = body.frame().await {
            match frame.into_data() {
                Ok(data) => echoed.push(data),
                Err(frame) => {
                    status = frame
                        .into_trailers()
                        .ok()
                        .and_then(|t| t.get("grpc-status").map(|v| v.as_bytes().to_vec()));
                }
            }
        }
        let all: Vec<u8> = echoed.concat();
        let expected: Vec<u8> =
            [grpc_frame(b"one"), grpc_frame(b"two"), grpc_frame(b"three")].concat();
        if all == expected && status.as_deref() == Some(b"0") {
            Ok::<_, String>("ok".to_string())
        } else {
            Err(format!("bad(echoed={all:?},status={status:?})"))
        }
    };
    let streaming = streaming.await.unwrap_or_else(|e| e);
    format!("unary={unary} stream={streaming}")
}

/// A websocket handshake (RFC 6455's example key) and one masked frame echoed back.
async fn websocket(target: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(target).await else {
        return "connect-failed".into();
    };
    let handshake = "GET /chat HTTP/1.1\r\nHost: ws.shop\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    if stream.write_all(handshake.as_bytes()).await.is_err() {
        return "write-failed".into();
    }
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return format!("closed: {}", String::from_utf8_lossy(&head)),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let accepted = head.starts_with("http/1.1 101")
        && head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=");
    // A masked text frame "Hello" (RFC 6455 §5.7).
    let frame = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let _ = stream.write_all(&frame).await;
    let mut echoed = [0u8; 11];
    let echo = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed)).await;
    format!(
        "upgraded={accepted} echo={}",
        matches!(echo, Ok(Ok(_))) && echoed == frame
    )
}

/// Raw TCP: optionally read the server's banner first, then echo a line.
async fn tcp(target: SocketAddr, banner: bool) -> String {
    let Ok(mut stream) = TcpStream::connect(target).await else {
        return "connect-failed".into();
    };
    let mut greeting = String::new();
    if banner {
        let mut buf = [0u8; 6];
        match tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => greeting = String::from_utf8_lossy(&buf).trim().to_string(),
            _ => return "no-banner".into(),
        }
    }
    let _ = stream.write_all(b"ping\n").await;
    let mut buf = [0u8; 5];
    let echo = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await;
    format!(
        "banner={greeting} echo={}",
        matches!(echo, Ok(Ok(_))) && &buf == b"ping\n"
    )
}

/// One plaintext HTTP/1.1 GET with `Connection: close`; the status line or `refused`.
async fn plain(target: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(target).await else {
        return "connect-failed".into();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    match response.lines().next() {
        Some(status) if !status.is_empty() => format!(
            "{status} body={}",
            response.split("\r\n\r\n").nth(1).unwrap_or_default().trim()
        ),
        _ => "refused".into(),
    }
}

/// One HTTP/1.1 GET over TLS with the given certificate (the client trusts `ca`).
async fn tls(target: SocketAddr, dir: &str) -> String {
    let read = |f: &str| std::fs::read(format!("{dir}/{f}")).expect("pem");
    let identity =
        braid_proxy::tls::identity::load(&read("tls.crt"), &read("tls.key"), &read("ca.crt"))
            .expect("identity");
    let Ok(stream) = TcpStream::connect(target).await else {
        return "connect-failed".into();
    };
    let connector = tokio_rustls::TlsConnector::from(identity.client.clone());
    let server = rustls::pki_types::ServerName::IpAddress(target.ip().into());
    let mut tls = match connector.connect(server, stream).await {
        Ok(tls) => tls,
        Err(e) => return format!("refused: {e}"),
    };
    let peer_expiry = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| braid_proxy::tls::identity::spiffe_id(leaf).ok())
        .map_or(0, |(_, not_after)| not_after);
    let _ = tls
        .write_all(b"GET /tls HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut response = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await {
        Ok(Err(e)) if response.is_empty() => format!("refused: {e}"),
        _ => match String::from_utf8_lossy(&response).lines().next() {
            Some(line) if !line.is_empty() => format!("{line} peer-expiry={peer_expiry}"),
            _ => "refused: no response".into(),
        },
    }
}

/// Steady load for `seconds`: 4 workers, half on keep-alive connections, half opening a new
/// connection per request.
async fn load(target: SocketAddr, seconds: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let failures = Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let failures = failures.clone();
        workers.push(tokio::spawn(async move {
            let mut ok = 0usize;
            while Instant::now() < deadline {
                let counts = if worker % 2 == 0 {
                    http_count(target, "/load", 20).await
                } else {
                    http_count(target, "/load", 1).await
                };
                for (outcome, n) in counts {
                    if outcome == "v1" || outcome == "v2" {
                        ok += n;
                    } else {
                        *failures.lock().expect("lock").entry(outcome).or_default() += n;
                    }
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for worker in workers {
        ok += worker.await.unwrap_or(0);
    }
    let failures = failures.lock().expect("lock");
    format!(
        "ok={ok} failed={} {failures:?}",
        failures.values().sum::<usize>()
    )
}

/// Runs one command and prints its `result:` line.
pub async fn run(args: &[String]) {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let result = match arg(0) {
        "http" => {
            let counts = http_count(addr(arg(1)), arg(2), arg(3).parse().expect("count")).await;
            counts
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
        "h2" => h2(addr(arg(1)), arg(2).parse().expect("count")).await,
        "grpc" => grpc(addr(arg(1))).await,
        "grpc-status" => grpc_status(addr(arg(1))).await,
        "ws" => websocket(addr(arg(1))).await,
        "tcp" => tcp(addr(arg(1)), arg(2) == "banner").await,
        "plain" => plain(addr(arg(1)), arg(2)).await,
        "tls" => tls(addr(arg(1)), arg(2)).await,
        "load" => load(addr(arg(1)), arg(2).parse().expect("seconds")).await,
        "exchange" => {
            let count = arg(3).parse().expect("count");
            crate::inbound::exchange(addr(arg(1)), arg(2), count, arg(4)).await
        }
        "raw" => attack::raw(addr(arg(1))).await,
        "slowloris" => {
            let (count, seconds) = (arg(2).parse().expect("count"), arg(3).parse().expect("s"));
            attack::slowloris(addr(arg(1)), count, seconds).await
        }
        "connect-burst" => {
            let count = arg(2).parse().expect("count");
            let within = |i: usize| Duration::from_millis(arg(i).parse().expect("ms"));
            attack::connect_burst(addr(arg(1)), count, within(3), within(4)).await
        }
        "steady" => attack::steady(addr(arg(1)), arg(2).parse().expect("seconds")).await,
        "flood" => {
            let (hold, extra) = (
                arg(2).parse().expect("hold"),
                arg(3).parse().expect("extra"),
            );
            attack::flood(addr(arg(1)), hold, extra).await
        }
        other => match crate::authz::command(other, |i| arg(i).to_string()).await {
            Some(result) => result,
            None => match crate::resilience::command(other, |i| arg(i).to_string()).await {
                Some(result) => result,
                None => crate::drain::command(other, |i| arg(i).to_string())
                    .await
                    .unwrap_or_else(|| format!("unknown command {other}")),
            },
        },
    };
    // One line, whatever the result holds (admin bodies are multi-line).
    println!("result: {}", result.replace('\n', "\\n"));
}
