//! Protocol detection from the first bytes a client sends: [`detect`] is pure, so that every
//! case is a unit test. Its shell, [`sniff`] (used by both listeners), reads until [`detect`]
//! stops answering [`Detected::NeedMore`], or until the detection timeout, after which the
//! connection is opaque TCP (a server-speaks-first protocol sends nothing, so it must not wait
//! long).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The most bytes read to detect a protocol (the HTTP/2 preface is 24).
const DETECT_BYTES: usize = 64;

/// Reads the first bytes of `stream` for up to `timeout`: the protocol they show and the bytes
/// read (to replay); `None` when the client closed (or failed) before saying enough, with the
/// bytes it sent.
pub async fn sniff<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Detected, Vec<u8>), Vec<u8>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut prefix = Vec::new();
    let mut buf = [0u8; DETECT_BYTES];
    loop {
        let read = tokio::time::timeout_at(
            deadline,
            stream.read(&mut buf[..DETECT_BYTES - prefix.len()]),
        )
        .await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(prefix),
            Ok(Ok(n)) => prefix.extend_from_slice(&buf[..n]),
            Err(_) => return Ok((Detected::Opaque, prefix)),
        }
        match detect(&prefix) {
            Detected::NeedMore if prefix.len() < DETECT_BYTES => continue,
            Detected::NeedMore => return Ok((Detected::Opaque, prefix)),
            found => return Ok((found, prefix)),
        }
    }
}

/// What the first bytes of a connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.x: a request line `METHOD SP ...`.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, gRPC): the connection preface.
    Http2,
    /// Anything else: bytes are forwarded untouched.
    Opaque,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest method token accepted as HTTP/1 (longer ones are treated as opaque).
const MAX_METHOD: usize = 16;

/// Classifies `prefix`, the bytes received so far.
pub fn detect(prefix: &[u8]) -> Detected {
    let preface_part = &H2_PREFACE[..prefix.len().min(H2_PREFACE.len())];
    if prefix.starts_with(preface_part) {
        return if prefix.len() >= H2_PREFACE.len() {
            Detected::Http2
        } else {
            Detected::NeedMore
        };
    }
    // An HTTP/1 method is a token of upper-case letters followed by a space.
    let method_len = prefix.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match prefix.get(method_len) {
        // A method longer than MAX_METHOD is opaque whether or not its space has arrived yet
        // (found by the detection fuzz target: 17 letters read alone were opaque, with the
        // space after them HTTP/1).
        Some(b' ') if method_len > 0 && method_len <= MAX_METHOD => Detected::Http1,
        Some(_) => Detected::Opaque,
        None if method_len > MAX_METHOD => Detected::Opaque,
        None => Detected::NeedMore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines_are_http1() {
        for line in [
            "GET / HTTP/1.1\r\n",
            "POST /orders",
            "DELETE x",
            "OPTIONS *",
        ] {
            assert_eq!(detect(line.as_bytes()), Detected::Http1, "{line}");
        }
    }

    #[test]
    fn the_h2_preface_is_http2_only_when_complete() {
        assert_eq!(detect(H2_PREFACE), Detected::Http2);
        assert_eq!(detect(&H2_PREFACE[..10]), Detected::NeedMore);
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend([0, 0, 0, 4]);
        assert_eq!(detect(&with_frames), Detected::Http2);
    }

    #[test]
    fn partial_methods_need_more_and_binary_is_opaque() {
        assert_eq!(detect(b""), Detected::NeedMore);
        assert_eq!(detect(b"GE"), Detected::NeedMore);
        assert_eq!(detect(b"PRI"), Detected::NeedMore);
        // A TLS ClientHello, a Redis command, lower-case text: all opaque.
        assert_eq!(detect(&[0x16, 0x03, 0x01]), Detected::Opaque);
        assert_eq!(detect(b"*1\r\n$4\r\nPING"), Detected::Opaque);
        assert_eq!(detect(b"get / HTTP/1.1"), Detected::Opaque);
        // Diverging from the preface after "PRI " makes it an (odd) HTTP/1 method.
        assert_eq!(detect(b"PRI * HTTP/1.1\r\n"), Detected::Http1);
        assert_eq!(detect(&[b'A'; 40]), Detected::Opaque);
        // However the bytes arrive, a too-long method is opaque.
        assert_eq!(detect(b"GEGETGDDDGDDDDDDDE T"), Detected::Opaque);
        assert_eq!(detect(b"GEGETGDDDGDDDDDDD"), Detected::Opaque);
    }
}
