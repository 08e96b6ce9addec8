//! A minimal HTTP/1.1 client: `braid-shop get URL` (so that test pods need no curl), and the
//! calls the order service makes to the others.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use std::io::Write as _;
use tokio::net::TcpStream;

/// Fetches `url` and writes the body to stdout; fails on a non-2xx status.
pub async fn get_and_print(url: &str) -> anyhow::Result<()> {
    let (status, body) = fetch(url).await?;
    std::io::stdout().write_all(&body)?;
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    Ok(())
}

/// GETs `url` on a new connection; the status and body.
pub async fn fetch(url: &str) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported, not {url:?}");
    }
    let host = uri.host().context("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        TcpStream::connect((host, port)),
    )
    .await
    .with_context(|| format!("connecting to {host}:{port} timed out"))?
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
