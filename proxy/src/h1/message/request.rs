//! Request heads: parsed in place, and the head the fast path forwards.

use std::fmt::Write as _;
use std::mem::MaybeUninit;

use super::*;

/// A request head parsed in place.
#[derive(Debug)]
pub struct Request<'h, 'b> {
    /// The method, e.g. `GET`.
    pub method: &'b str,
    /// The origin-form target (path and query).
    pub target: &'b str,
    /// The headers as received.
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, blank line included.
    pub head_len: usize,
    /// Body bytes that follow the head.
    pub body_len: u64,
    /// Whether the client keeps the connection open after the response.
    pub keep_alive: bool,
}

impl Request<'_, '_> {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The first value of header `name` (lower case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(self.headers, name)
    }

    /// Whether the request may be sent again after the connection failed under it: an
    /// idempotent method (RFC 9110 §9.2.2) and no body.
    pub fn replayable(&self) -> bool {
        self.body_len == 0 && is_idempotent(self.method)
    }

    /// Appends the head to send to the peer: the same request line and headers, without the
    /// hop-by-hop ones. `TE: trailers` is kept (gRPC needs it end to end). Agreeing
    /// `Content-Length` fields (`5, 5`, or the field twice) are folded into one, so that no
    /// server behind can read them otherwise.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for part in [self.method, " ", self.target, " HTTP/1.1\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
        let mut length_written = false;
        for h in self.headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                if !length_written {
                    let _ = write!(ByteWriter(out), "{}: {}\r\n", h.name, self.body_len);
                    length_written = true;
                }
                continue;
            }
            let hop_by_hop = is_hop_by_hop(h.name)
                || (h.name.eq_ignore_ascii_case("te")
                    && !h.value.eq_ignore_ascii_case(b"trailers"));
            if !hop_by_hop {
                push_header(out, h);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses the request head at the start of `buf`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> Parse<Request<'h, 'b>> {
    let mut request = httparse::Request::new(&mut []);
    let head_len = match request.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Parse::Partial,
        _ => return Parse::HandOver,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parse::HandOver;
    };
    let headers: &'h [httparse::Header<'b>] = request.headers;
    let coded = has(headers, "transfer-encoding");
    if coded && has(headers, "content-length") {
        return Parse::Refuse("both Content-Length and Transfer-Encoding");
    }
    let Ok(body_len) = content_length(headers) else {
        return Parse::Refuse("Content-Length fields that disagree or are not numbers");
    };
    let plain =
        target.starts_with('/') && !coded && !has(headers, "upgrade") && !has(headers, "expect");
    if !plain {
        return Parse::HandOver;
    }
    Parse::Done(Request {
        method,
        target,
        headers,
        head_len,
        body_len: body_len.unwrap_or(0),
        keep_alive: !lists_token(headers, "connection", "close"),
    })
}
