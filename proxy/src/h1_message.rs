//! HTTP/1.1 messages as the outbound fast path ([`crate::h1_forward`]) sees them: request and
//! response heads parsed in place (httparse), the heads it forwards (hop-by-hop headers dropped),
//! how each body is delimited (RFC 9112 §6), and a scanner that finds the end of a chunked body
//! while its bytes pass through unchanged. Pure: no I/O.
//!
//! The fast path takes only plain requests: HTTP/1.1, an origin-form target, no body or a
//! `Content-Length` one. Anything else (HTTP/1.0, `Transfer-Encoding`, `Upgrade`, `Expect`,
//! conflicting lengths, a malformed or very large head) is [`Parse::HandOver`]: the connection
//! goes on under hyper, which handles or refuses it.

use std::fmt::Write as _;
use std::mem::MaybeUninit;

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

/// A response head parsed in place.
#[derive(Debug)]
pub struct Response<'h, 'b> {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: &'b str,
    /// The headers as received.
    pub headers: &'h [httparse::Header<'b>],
    /// Bytes of the head, blank line included.
    pub head_len: usize,
    /// How its body is delimited.
    pub framing: Framing,
    /// Whether the connection to the peer may carry another request after this response.
    pub reusable: bool,
}

impl Response<'_, '_> {
    /// Whether this is an interim (1xx) response: the final one follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// Appends the head to send to the application: HTTP/1.1, the same status and headers
    /// without the hop-by-hop ones (and without `Content-Length` when a transfer coding
    /// delimits the body), and `connection: close` when `close`.
    pub fn encode(&self, close: bool, out: &mut Vec<u8>) {
        let _ = write!(
            ByteWriter(out),
            "HTTP/1.1 {} {}\r\n",
            self.status,
            self.reason
        );
        let coded = self.framing == Framing::Chunked || self.framing == Framing::UntilClose;
        for h in self.headers {
            let dropped =
                is_hop_by_hop(h.name) || (coded && h.name.eq_ignore_ascii_case("content-length"));
            if !dropped {
                push_header(out, h);
            }
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
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

/// Why a response from the peer cannot be forwarded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadResponse {
    /// Not HTTP/1.x, or a malformed head.
    #[error("malformed response head")]
    Malformed,
    /// The head did not end within [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    /// `Content-Length` fields that are not numbers or disagree.
    #[error("invalid Content-Length")]
    Length,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    #[error("unrequested protocol switch")]
    Switch,
}

/// Parses the response head at the start of `buf`, the answer to a request whose method was
/// `HEAD` when `to_head`. `Ok(None)`: more bytes are needed.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<httparse::Header<'b>>],
    to_head: bool,
) -> Result<Option<Response<'h, 'b>>, BadResponse> {
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        headers,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(BadResponse::TooLarge),
        Err(_) => return Err(BadResponse::Malformed),
    };
    // A status is three digits, 100 to 599 in use (RFC 9110 §15); `000` would be forwarded as
    // `0`, which no client parses.
    let (Some(version), Some(status @ 100..=999)) = (response.version, response.code) else {
        return Err(BadResponse::Malformed);
    };
    if status == 101 {
        return Err(BadResponse::Switch);
    }
    let headers: &'h [httparse::Header<'b>] = response.headers;
    let length = content_length(headers).map_err(|_| BadResponse::Length)?;
    let coded = has(headers, "transfer-encoding");
    let framing = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if coded {
        // The last coding must be chunked for the length to be known; a Content-Length next to
        // it is ignored (RFC 9112 §6.3).
        let last = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty());
        if last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let reusable = version == 1
        && framing != Framing::UntilClose
        && !(coded && length.is_some())
        && !lists_token(headers, "connection", "close");
    Ok(Some(Response {
        status,
        reason: response.reason.unwrap_or(""),
        headers,
        head_len,
        framing,
        reusable,
    }))
}

/// Where a chunked body ends, found as its bytes pass by (RFC 9112 §7.1): sizes, extensions,
/// data, the last chunk and the trailer section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChunkedScanner {
    /// At the start of a chunk-size line.
    #[default]
    Start,
    /// In a chunk size.
    Size {
        /// Its value so far.
        value: u64,
        /// Its hex digits so far.
        digits: u8,
    },
    /// In a chunk extension, up to its CR.
    Extension {
        /// The chunk's size.
        value: u64,
    },
    /// After the CR that ends a size line.
    SizeLf {
        /// The chunk's size.
        value: u64,
    },
    /// In chunk data: bytes left.
    Data(u64),
    /// After chunk data: its CR.
    DataCr,
    /// After chunk data: its LF.
    DataLf,
    /// At the start of a trailer line (or of the blank line that ends the message).
    TrailerStart,
    /// In a trailer field line, up to its LF.
    Trailer,
    /// After the CR of the blank line that ends the message.
    EndLf,
    /// The message ended.
    Done,
}

/// A chunked body that is not valid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub struct BadChunk;

impl ChunkedScanner {
    /// Takes the next `bytes` of the body: `Some(n)` when the message ends after the first `n`
    /// of them (the rest belongs to what follows), `None` when it goes on.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Self::Start => match hex(b) {
                    Some(d) => Self::Size {
                        value: d,
                        digits: 1,
                    },
                    None => return Err(BadChunk),
                },
                Self::Size { value, digits } => match (hex(b), b) {
                    (Some(_), _) if digits >= 15 => return Err(BadChunk),
                    (Some(d), _) => Self::Size {
                        value: value * 16 + d,
                        digits: digits + 1,
                    },
                    (None, b';' | b' ' | b'\t') => Self::Extension { value },
                    (None, b'\r') => Self::SizeLf { value },
                    _ => return Err(BadChunk),
                },
                Self::Extension { value } => match b {
                    b'\r' => Self::SizeLf { value },
                    b'\n' => return Err(BadChunk),
                    _ => Self::Extension { value },
                },
                Self::SizeLf { value } => match (b, value) {
                    (b'\n', 0) => Self::TrailerStart,
                    (b'\n', n) => Self::Data(n),
                    _ => return Err(BadChunk),
                },
                Self::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    *self = if take == left {
                        Self::DataCr
                    } else {
                        Self::Data(left - take)
                    };
                    continue;
                }
                Self::DataCr if b == b'\r' => Self::DataLf,
                Self::DataLf if b == b'\n' => Self::Start,
                Self::DataCr | Self::DataLf => return Err(BadChunk),
                Self::TrailerStart if b == b'\r' => Self::EndLf,
                Self::TrailerStart | Self::Trailer if b == b'\n' => {
                    if *self == Self::TrailerStart {
                        return Err(BadChunk);
                    }
                    Self::TrailerStart
                }
                Self::TrailerStart | Self::Trailer => Self::Trailer,
                Self::EndLf if b == b'\n' => {
                    *self = Self::Done;
                    return Ok(Some(i + 1));
                }
                Self::EndLf => return Err(BadChunk),
                Self::Done => return Ok(Some(i)),
            };
            i += 1;
        }
        Ok((*self == Self::Done).then_some(0))
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &[u8], check: impl FnOnce(Parse<Request<'_, '_>>)) {
        let mut headers = [HEADER_SLOT; MAX_HEADERS];
        check(parse_request(raw, &mut headers));
    }

    #[test]
    fn a_plain_request_is_taken_and_forwarded_without_hop_by_hop_headers() {
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: s\r\nConnection: keep-alive\r\nTE: gzip\r\n\
                    Keep-Alive: 5\r\nx-user: ann\r\n\r\nNEXT";
        request(raw, |parsed| {
            let Parse::Done(r) = parsed else {
                panic!("not taken: {parsed:?}")
            };
            assert_eq!((r.method, r.path(), r.body_len), ("GET", "/a/b", 0));
            assert_eq!(r.head_len, raw.len() - 4);
            assert!(r.keep_alive && r.replayable());
            assert_eq!(r.header("X-User"), Some("ann"));
            let mut out = Vec::new();
            r.encode(&mut out);
            assert_eq!(
                String::from_utf8(out).expect("text"),
                "GET /a/b?x=1 HTTP/1.1\r\nHost: s\r\nx-user: ann\r\n\r\n"
            );
        });
    }

    #[test]
    fn te_trailers_is_kept_and_connection_close_is_seen() {
        request(
            b"POST /p HTTP/1.1\r\nTE: trailers\r\nConnection: Keep-Alive, close\r\ncontent-length: 3\r\n\r\nabc",
            |parsed| {
                let Parse::Done(r) = parsed else {
                    panic!("not taken")
                };
                assert!(!r.keep_alive && !r.replayable());
                assert_eq!(r.body_len, 3);
                let mut out = Vec::new();
                r.encode(&mut out);
                let out = String::from_utf8(out).expect("text");
                assert!(out.contains("TE: trailers\r\n") && !out.contains("Connection"));
            },
        );
    }

    #[test]
    fn agreeing_content_lengths_are_forwarded_as_one() {
        for raw in [
            &b"POST /p HTTP/1.1\r\nContent-Length: 3\r\nx: y\r\ncontent-length: 3\r\n\r\nabc"[..],
            b"POST /p HTTP/1.1\r\nContent-Length: 3, 3\r\nx: y\r\n\r\nabc",
        ] {
            request(raw, |parsed| {
                let Parse::Done(r) = parsed else {
                    panic!("not taken: {parsed:?}")
                };
                let mut out = Vec::new();
                r.encode(&mut out);
                assert_eq!(
                    String::from_utf8(out).expect("text"),
                    "POST /p HTTP/1.1\r\nContent-Length: 3\r\nx: y\r\n\r\n"
                );
            });
        }
    }

    #[test]
    fn a_request_whose_length_is_ambiguous_is_refused_not_forwarded() {
        for raw in [
            &b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ncontent-length: 1, 2\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 0\r\n\r\n",
        ] {
            request(raw, |parsed| {
                assert!(
                    matches!(parsed, Parse::Refuse(_)),
                    "{}: {parsed:?}",
                    String::from_utf8_lossy(raw)
                )
            });
        }
    }

    #[test]
    fn anything_but_a_plain_request_goes_to_hyper() {
        for raw in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET http://s/ HTTP/1.1\r\nHost: s\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            request(raw, |parsed| {
                assert!(
                    matches!(parsed, Parse::HandOver),
                    "{}: {parsed:?}",
                    String::from_utf8_lossy(raw)
                )
            });
        }
        request(b"GET / HTTP/1.1\r\nHost:", |parsed| {
            assert!(matches!(parsed, Parse::Partial))
        });
        let huge = [b"GET / HTTP/1.1\r\nx: ".as_slice(), &[b'a'; MAX_HEAD_BYTES]].concat();
        request(&huge, |parsed| assert!(matches!(parsed, Parse::HandOver)));
    }

    fn response(raw: &[u8], to_head: bool) -> Result<Option<(Framing, bool, String)>, BadResponse> {
        let mut headers = [HEADER_SLOT; MAX_HEADERS];
        Ok(parse_response(raw, &mut headers, to_head)?.map(|r| {
            let mut out = Vec::new();
            r.encode(false, &mut out);
            (r.framing, r.reusable, String::from_utf8(out).expect("text"))
        }))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let ok = |raw: &str, to_head| {
            response(raw.as_bytes(), to_head)
                .expect("valid")
                .expect("complete")
        };
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false).0,
            Framing::Length(5)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true).0,
            Framing::Empty
        );
        assert_eq!(
            ok("HTTP/1.1 204 No Content\r\n\r\n", false).0,
            Framing::Empty
        );
        assert_eq!(ok("HTTP/1.1 304 NM\r\n\r\n", false).0, Framing::Empty);
        let (framing, reusable, _) = ok(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!((framing, reusable), (Framing::Chunked, true));
        let (framing, reusable, _) = ok("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((framing, reusable), (Framing::UntilClose, false));
        let (framing, reusable, _) =
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!((framing, reusable), (Framing::UntilClose, false));
        assert!(
            !ok(
                "HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n",
                false
            )
            .1
        );
        assert!(!ok("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false).1);
        assert_eq!(ok("HTTP/1.1 100 Continue\r\n\r\n", false).0, Framing::Empty);
    }

    #[test]
    fn a_transfer_coding_wins_over_content_length_which_is_dropped() {
        let (framing, reusable, head) = response(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nTransfer-Encoding: chunked\r\nConnection: x\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!((framing, reusable), (Framing::Chunked, false));
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn bad_responses_are_named() {
        assert_eq!(response(b"HTTP/1.1 200 OK\r\n", false), Ok(None));
        assert_eq!(
            response(b"HTTX/1.1 200\r\n\r\n", false),
            Err(BadResponse::Malformed)
        );
        // Found by the response-head fuzz target: `000` went on as `HTTP/1.1 0`.
        assert_eq!(
            response(b"HTTP/1.1 000 Continue\r\n\r\n", false),
            Err(BadResponse::Malformed)
        );
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n", false),
            Err(BadResponse::Length)
        );
        assert_eq!(
            response(b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n", false),
            Err(BadResponse::Switch)
        );
    }

    /// Feeds `body` to a scanner in pieces of `step` bytes; where it said the body ended.
    fn end_of(body: &[u8], step: usize) -> Result<Option<usize>, BadChunk> {
        let mut scanner = ChunkedScanner::default();
        let mut offset = 0;
        for piece in body.chunks(step) {
            if let Some(n) = scanner.scan(piece)? {
                return Ok(Some(offset + n));
            }
            offset += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn the_chunked_scanner_finds_the_end_in_any_split() {
        let body =
            b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nGET / HTTP/1.1";
        let end = body.len() - b"GET / HTTP/1.1".len();
        for step in 1..=body.len() {
            assert_eq!(end_of(body, step), Ok(Some(end)), "step {step}");
        }
        assert_eq!(end_of(b"0\r\n\r\n", 2), Ok(Some(5)));
        assert_eq!(end_of(b"5\r\nhel", 3), Ok(None));
    }

    #[test]
    fn the_chunked_scanner_refuses_malformed_bodies() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloX",
            b"5\n",
            b"1234567890abcdef0\r\n",
            b"0\r\n\n",
            b"3 ;e\n",
        ] {
            assert_eq!(
                end_of(bad, 1),
                Err(BadChunk),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// One of `seeds` with a few random edits: bytes flipped, cut, or HTTP's own bytes inserted.
    fn mutated(rng: &mut fastrand::Rng, seeds: &[&[u8]]) -> Vec<u8> {
        const SPICE: &[u8] = b"\r\n:;, 0aF-\t";
        let mut bytes = seeds[rng.usize(..seeds.len())].to_vec();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..=bytes.len());
            match rng.u8(..4) {
                0 if at < bytes.len() => bytes[at] = rng.u8(..),
                1 => bytes.truncate(at),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, SPICE[rng.usize(..SPICE.len())]),
            }
        }
        bytes
    }

    #[test]
    fn mutated_messages_never_panic_and_what_is_taken_is_forwarded_as_parsed() {
        let requests: [&[u8]; 3] = [
            b"GET /a?b HTTP/1.1\r\nHost: s\r\nConnection: close\r\nTE: trailers\r\n\r\n",
            b"POST /p HTTP/1.1\r\ncontent-length: 3\r\nx: y\r\n\r\nabc",
            b"PUT / HTTP/1.1\r\nContent-Length: 0, 0\r\nKeep-Alive: 1\r\n\r\n",
        ];
        let responses: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            b"HTTP/1.0 103 Early\r\nConnection: keep-alive\r\n\r\n",
        ];
        let bodies: [&[u8]; 2] = [
            b"5;x=1\r\nhello\r\n0\r\nt: 1\r\n\r\n",
            b"a\r\n0123456789\r\n0\r\n\r\n",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        // How many requests, responses and chunked bodies were taken whole (and so checked).
        let mut taken = [0; 3];
        for _ in 0..20_000 {
            let raw = mutated(&mut rng, &requests);
            let mut headers = [HEADER_SLOT; MAX_HEADERS];
            if let Parse::Done(request) = parse_request(&raw, &mut headers) {
                taken[0] += 1;
                assert!(request.head_len <= raw.len());
                let mut out = Vec::new();
                request.encode(&mut out);
                let mut again = [HEADER_SLOT; MAX_HEADERS];
                let Parse::Done(forwarded) = parse_request(&out, &mut again) else {
                    panic!(
                        "forwarded head not taken: {:?}",
                        String::from_utf8_lossy(&out)
                    );
                };
                assert_eq!(
                    (
                        forwarded.method,
                        forwarded.target,
                        forwarded.body_len,
                        forwarded.head_len
                    ),
                    (request.method, request.target, request.body_len, out.len())
                );
            }

            let raw = mutated(&mut rng, &responses);
            let mut headers = [HEADER_SLOT; MAX_HEADERS];
            if let Ok(Some(response)) = parse_response(&raw, &mut headers, false) {
                taken[1] += 1;
                assert!(response.head_len <= raw.len());
                let mut out = Vec::new();
                response.encode(false, &mut out);
                let mut again = [HEADER_SLOT; MAX_HEADERS];
                let forwarded = parse_response(&out, &mut again, false)
                    .expect("forwarded head valid")
                    .expect("forwarded head complete");
                assert_eq!(
                    (forwarded.status, forwarded.framing),
                    (response.status, response.framing)
                );
            }

            // The end of a chunked body does not depend on how its bytes were split.
            let body = mutated(&mut rng, &bodies);
            let whole = end_of(&body, body.len().max(1));
            assert_eq!(end_of(&body, rng.usize(1..=body.len().max(1))), whole);
            if let Ok(Some(end)) = whole {
                taken[2] += 1;
                assert!(end <= body.len());
            }
        }
        assert!(
            taken.iter().all(|&n| n > 2_000),
            "too few inputs taken: {taken:?}"
        );
    }
}
