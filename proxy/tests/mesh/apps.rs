//! The applications of the server "pod": plain programs that know nothing of the mesh.
//! 8081 and 8082: HTTP/1.1 and h2c (`v1`/`v2 <path> <version>`); 9000: gRPC echo, unary and
//! streaming (h2c); 8090: websocket echo; 7000: TCP echo; 7001: TCP, server speaks first;
//! 7002: TCP echo that no config names (passthrough); 7003: accepts and never answers; 7004:
//! the counting TCP sink of [`crate::authz`]; 8095: the recorder of [`crate::inbound`];
//! 8101–8108 and 9100: the failing applications of [`crate::resilience`].

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A body fed by a channel: frames arrive as they are sent (for gRPC streaming).
pub struct ChannelBody(pub mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

type AppBody = Either<Full<Bytes>, ChannelBody>;

fn text(status: StatusCode, body: String) -> Response<AppBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
}

async fn versioned(version: &'static str, request: Request<Incoming>) -> Response<AppBody> {
    text(
        StatusCode::OK,
        format!("{version} {} {:?}", request.uri().path(), request.version()),
    )
}

/// gRPC echo: `/braid.Echo/Unary` answers the one message; `/braid.Echo/Stream` echoes each
/// message as it arrives. Both end with `grpc-status: 0` trailers.
async fn grpc(request: Request<Incoming>) -> Response<AppBody> {
    // As gRPC servers may, insist on `te: trailers`: the proxy must pass it through.
    if request
        .headers()
        .get("te")
        .is_none_or(|te| te != "trailers")
    {
        return text(StatusCode::BAD_REQUEST, "te: trailers missing".into());
    }
    let (sender, receiver) = mpsc::channel(16);
    let mut body = request.into_body();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data()
                && sender.send(Frame::data(data)).await.is_err()
            {
                return;
            }
        }
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
        let _ = sender.send(Frame::trailers(trailers)).await;
    });
    let mut response = Response::new(Either::Right(ChannelBody(receiver)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// The `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &str) -> String {
    let digest = Sha1::digest(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
    base64(&digest)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        out.extend(std::iter::repeat_n('=', 3 - chunk.len()));
    }
    out
}

async fn websocket(mut request: Request<Incoming>) -> Response<Empty<Bytes>> {
    let key = request
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", websocket_accept(&key))
        .body(Empty::new())
        .unwrap_or_default()
}

/// Serves HTTP/1.1 and h2c on `port` with `handler`, upgrades included.
pub async fn serve_http<F, Fut, B>(port: u16, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind(("0.0.0.0", port)).await.expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn serve_tcp(port: u16, banner: Option<&'static [u8]>) {
    let listener = TcpListener::bind(("0.0.0.0", port)).await.expect("bind");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if let Some(banner) = banner {
                let _ = stream.write_all(banner).await;
            }
            let (mut reader, mut writer) = stream.split();
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        });
    }
}

/// Accepts connections and never answers (a hung application).
async fn serve_silent(port: u16) {
    let listener = TcpListener::bind(("0.0.0.0", port)).await.expect("bind");
    let mut held = Vec::new();
    while let Ok((stream, _)) = listener.accept().await {
        held.push(stream);
    }
}

/// Runs every application until killed.
pub async fn run() {
    tokio::spawn(serve_http(8081, |r| versioned("v1", r)));
    tokio::spawn(serve_http(8082, |r| versioned("v2", r)));
    tokio::spawn(serve_http(9000, grpc));
    tokio::spawn(serve_http(8090, websocket));
    tokio::spawn(serve_tcp(7000, None));
    tokio::spawn(serve_tcp(7001, Some(b"HELLO\n")));
    tokio::spawn(crate::inbound::serve_recorder());
    tokio::spawn(serve_silent(7003));
    tokio::spawn(crate::authz::serve_sink());
    crate::resilience::spawn_apps();
    serve_tcp(7002, None).await;
}
