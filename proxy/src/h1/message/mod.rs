//! HTTP/1.1 messages as the fast path ([`crate::h1`]) sees them: request and
//! response heads parsed in place (httparse), the heads it forwards (hop-by-hop headers dropped),
//! how each body is delimited (RFC 9112 §6), and a scanner that finds the end of a chunked body
//! while its bytes pass through unchanged. Pure: no I/O.
//!
//! The fast path takes only plain requests: HTTP/1.1, an origin-form target, no body or a
//! `Content-Length` one. Anything else (HTTP/1.0, `Transfer-Encoding`, `Upgrade`, `Expect`,
//! conflicting lengths, a malformed or very large head) is [`Parse::HandOver`]: the connection
//! goes on under hyper, which handles or refuses it.

use std::mem::MaybeUninit;

mod chunked;
mod request;
mod response;
#[cfg(test)]
mod tests;

pub use chunked::{BadChunk, ChunkedScanner};
pub use request::{Request, parse_request};
pub use response::{BadResponse, Response, parse_response};

/// Headers a head may have on the fast path, as many as hyper allows (a request with more goes
/// to hyper, which refuses it; a response with more is a 502).
pub const MAX_HEADERS: usize = 100;

/// Room for one parsed header, left uninitialised until the parser fills it: a head is parsed
/// into `[HEADER_SLOT; MAX_HEADERS]` on the stack, with no per-request cost for the room.
pub const HEADER_SLOT: MaybeUninit<httparse::Header<'static>> = MaybeUninit::uninit();

/// A head larger than this goes to hyper, which applies its own limit.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The outcome of parsing a head at the start of a buffer.
#[derive(Debug)]
pub enum Parse<T> {
    /// More bytes are needed.
    Partial,
    /// A head the fast path takes.
    Done(T),
    /// Not for the fast path (see the module documentation).
    HandOver,
    /// A request no proxy may forward: its body's length is ambiguous, so a server behind
    /// could read it as two requests (RFC 9112 §6.3, request smuggling). Refused with 400.
    Refuse(&'static str),
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes.
    UntilClose,
}

/// Writes `fmt` output into a byte vector.
pub(crate) struct ByteWriter<'a>(pub(crate) &'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Whether a request with `method` may be sent again after the connection failed under it
/// (RFC 9110 §9.2.2); Go's HTTP client replays requests on the same rule.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "DELETE" | "PUT"
    )
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
///
/// `TE` is one too, but `TE: trailers` is kept: gRPC needs it end to end. `Proxy-Authorization`
/// is kept: a transparent proxy is not the one it is meant for.
pub const HOP_BY_HOP: [&str; 3] = ["connection", "keep-alive", "proxy-connection"];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

fn push_header(out: &mut Vec<u8>, h: &httparse::Header<'_>) {
    out.extend_from_slice(h.name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(h.value);
    out.extend_from_slice(b"\r\n");
}

fn header<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<&'b str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// Whether a comma-separated header (all its fields) lists `token`.
fn lists_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The body length its `Content-Length` fields give: `Ok(None)` without any, `Err` when one is
/// not a number or they disagree.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ()> {
    let mut found = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for value in h.value.split(|&b| b == b',') {
            let value = value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 18 {
                return Err(());
            }
            let n: u64 = std::str::from_utf8(value)
                .map_err(|_| ())?
                .parse()
                .map_err(|_| ())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn has(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case(name))
}
