//! Response heads: parsed in place with their framing (RFC 9112 §6.3), and the head passed on.

use std::fmt::Write as _;
use std::mem::MaybeUninit;

use super::*;

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
    /// Whether the peer's proxy says it did not pass the request on (a 5xx it answered itself
    /// with [`crate::pipeline::UNPROCESSED_HEADER`]).
    pub fn unprocessed(&self) -> bool {
        self.status >= 500 && header(self.headers, crate::pipeline::UNPROCESSED_HEADER).is_some()
    }

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
