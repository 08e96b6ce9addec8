//! The one place that turns a [`Failure`] into the proxy's own reply, for the protocol of the
//! request: an HTTP status with a short text body, or, for a gRPC call, a trailers-only
//! response (HTTP 200, `grpc-status` and `grpc-message`) with the gRPC code the cause calls for
//! — not the code a client would derive from an HTTP status (a 504 would reach it as
//! `UNAVAILABLE`, not `DEADLINE_EXCEEDED`). Every reply carries [`PROXY_ERROR_HEADER`], so that
//! the proxy's answer is never taken for the application's (Linkerd's `l5d-proxy-error`).

use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode, Version};

use super::failure::{Failure, Kind};
use crate::policy::retry::sent_nothing;
use crate::upstream::ProxyBody;

/// The response header that says the proxy produced the response, and why.
pub const PROXY_ERROR_HEADER: &str = "braid-proxy-error";

/// The response header that says nothing of the request reached an application (the proxy
/// could not connect to it, or to its peer): a caller's proxy that reads it from a mesh peer
/// sends the request to another endpoint ([`crate::pipeline::Kind::Unprocessed`]), as it
/// would after a refused connection — the application behind a stopping pod is gone before
/// every caller's endpoint list says so.
pub const UNPROCESSED_HEADER: &str = "braid-proxy-unprocessed";

/// The protocol a reply must speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Plain HTTP (either version).
    Http,
    /// gRPC: HTTP/2 with a `content-type` of `application/grpc` or `application/grpc+...`.
    Grpc,
}

impl Protocol {
    /// The protocol of a request of `version` with these headers.
    pub fn of(version: Version, headers: &HeaderMap) -> Self {
        let grpc = version == Version::HTTP_2
            && headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|value| is_grpc_content_type(value.as_bytes()));
        if grpc { Self::Grpc } else { Self::Http }
    }
}

fn is_grpc_content_type(value: &[u8]) -> bool {
    let Some(rest) = value
        .get(..16)
        .filter(|start| start.eq_ignore_ascii_case(b"application/grpc"))
        .map(|_| &value[16..])
    else {
        return false;
    };
    rest.is_empty() || rest[0] == b'+' || rest[0] == b';'
}

/// gRPC status codes the proxy answers with (grpc/doc/statuscodes.md).
pub mod grpc {
    /// The caller did not say more.
    pub const UNKNOWN: u8 = 2;
    /// The deadline passed.
    pub const DEADLINE_EXCEEDED: u8 = 4;
    /// Not allowed.
    pub const PERMISSION_DENIED: u8 = 7;
    /// Out of quota (rate limited).
    pub const RESOURCE_EXHAUSTED: u8 = 8;
    /// Not implemented.
    pub const UNIMPLEMENTED: u8 = 12;
    /// An internal error (a protocol violation).
    pub const INTERNAL: u8 = 13;
    /// The service cannot be reached now; a retry may succeed.
    pub const UNAVAILABLE: u8 = 14;
    /// Not authenticated.
    pub const UNAUTHENTICATED: u8 = 16;
}

/// The gRPC code for a failure.
pub fn grpc_status(failure: &Failure) -> u8 {
    match failure.kind() {
        Kind::Timeout => grpc::DEADLINE_EXCEEDED,
        Kind::BadRequest | Kind::BadResponse => grpc::INTERNAL,
        Kind::Fault => grpc_of_http(failure.status()),
        Kind::Denied => grpc::PERMISSION_DENIED,
        Kind::RateLimited => grpc::RESOURCE_EXHAUSTED,
        _ => grpc::UNAVAILABLE,
    }
}

/// The gRPC code of an HTTP status, as gRPC's own HTTP mapping has it
/// (grpc/doc/http-grpc-status-mapping.md): what an injected HTTP abort means to a gRPC client.
pub fn grpc_of_http(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => grpc::INTERNAL,
        401 => grpc::UNAUTHENTICATED,
        403 => grpc::PERMISSION_DENIED,
        404 => grpc::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => grpc::UNAVAILABLE,
        _ => grpc::UNKNOWN,
    }
}

/// The failure's message as a header value: printable ASCII only (anything else becomes `?`).
fn header_text(failure: &Failure) -> HeaderValue {
    let text: String = failure
        .to_string()
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

/// The failure's message percent-encoded for `grpc-message` (gRPC's PROTOCOL-HTTP2 rule:
/// printable ASCII except `%` as is, the rest as `%XX` of their UTF-8 bytes).
fn grpc_message(failure: &Failure) -> HeaderValue {
    let mut encoded = String::new();
    for byte in failure.to_string().bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    HeaderValue::try_from(encoded).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

/// The reply to `failure` for hyper's server.
pub fn response(failure: &Failure, protocol: Protocol) -> Response<ProxyBody> {
    let mut response = match protocol {
        Protocol::Http => {
            let body = format!("braid-proxy: {failure}\n");
            let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
            *response.status_mut() = failure.status();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        Protocol::Grpc => {
            // Trailers-only: the status travels in the one HEADERS frame, which ends the stream.
            let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(
                "grpc-status",
                HeaderValue::from(u16::from(grpc_status(failure))),
            );
            headers.insert("grpc-message", grpc_message(failure));
            response
        }
    };
    response
        .headers_mut()
        .insert(PROXY_ERROR_HEADER, header_text(failure));
    if sent_nothing(failure.kind()) {
        response
            .headers_mut()
            .insert(UNPROCESSED_HEADER, HeaderValue::from_static("true"));
    }
    if let Some(seconds) = retry_after(failure) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The `Retry-After` of a rate-limited request, in whole seconds (at least 1).
fn retry_after(failure: &Failure) -> Option<u64> {
    match failure {
        Failure::RateLimited(limited) => {
            Some(limited.retry_after.as_secs_f64().ceil().max(1.0) as u64)
        }
        _ => None,
    }
}

/// The reply to `failure` on the HTTP/1.1 fast path, written to `out`; with `connection: close`
/// when `close`.
pub fn encode_h1(failure: &Failure, close: bool, out: &mut Vec<u8>) {
    let status = failure.status();
    let text = format!("braid-proxy: {failure}\n");
    let error = header_text(failure);
    let _ = write!(
        crate::h1::message::ByteWriter(out),
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{PROXY_ERROR_HEADER}: {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text.len(),
        error.to_str().unwrap_or("error"),
    );
    if let Some(seconds) = retry_after(failure) {
        let _ = write!(
            crate::h1::message::ByteWriter(out),
            "retry-after: {seconds}\r\n"
        );
    }
    if sent_nothing(failure.kind()) {
        let _ = write!(
            crate::h1::message::ByteWriter(out),
            "{UNPROCESSED_HEADER}: true\r\n"
        );
    }
    let _ = write!(
        crate::h1::message::ByteWriter(out),
        "{}\r\n{text}",
        if close { "connection: close\r\n" } else { "" },
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn headers(content_type: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers
    }

    #[test]
    fn grpc_is_http2_with_a_grpc_content_type() {
        for (version, content_type, protocol) in [
            (Version::HTTP_2, "application/grpc", Protocol::Grpc),
            (Version::HTTP_2, "application/grpc+proto", Protocol::Grpc),
            (
                Version::HTTP_2,
                "Application/GRPC;charset=utf-8",
                Protocol::Grpc,
            ),
            (Version::HTTP_2, "application/grpc-web", Protocol::Http),
            (Version::HTTP_2, "application/json", Protocol::Http),
            (Version::HTTP_11, "application/grpc", Protocol::Http),
        ] {
            assert_eq!(
                Protocol::of(version, &headers(content_type)),
                protocol,
                "{content_type}"
            );
        }
    }

    #[test]
    fn a_grpc_caller_gets_the_code_of_the_cause_in_a_trailers_only_response() {
        let no_endpoint = Failure::NoEndpoints {
            name: "payment.shop".into(),
            port: 9090,
        };
        let reply = response(&no_endpoint, Protocol::Grpc);
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(reply.headers()["grpc-status"], "14");
        assert_eq!(
            reply.headers()["grpc-message"],
            "payment.shop has no endpoint on port 9090"
        );
        assert_eq!(
            reply.headers()[PROXY_ERROR_HEADER],
            "payment.shop has no endpoint on port 9090"
        );
        assert!(
            hyper::body::Body::is_end_stream(reply.body()),
            "trailers-only: no body"
        );
        let timeout = response(
            &Failure::Timeout(Duration::from_millis(100)),
            Protocol::Grpc,
        );
        assert_eq!(
            timeout.headers()["grpc-status"],
            "4",
            "DEADLINE_EXCEEDED, not UNAVAILABLE"
        );
        assert_eq!(grpc_status(&Failure::Abort(403)), grpc::PERMISSION_DENIED);
        assert_eq!(grpc_status(&Failure::Abort(500)), grpc::UNKNOWN);
        assert_eq!(
            grpc_status(&Failure::BadRequest("x".into())),
            grpc::INTERNAL
        );
    }

    #[test]
    fn a_reply_says_when_nothing_reached_an_application() {
        let refused = Failure::Upstream(super::super::failure::UpstreamError::Connect {
            addr: "127.0.0.1:8080".parse().expect("addr"),
            cause: super::super::failure::ConnectCause::Refused,
        });
        let reply = response(&refused, Protocol::Http);
        assert_eq!(reply.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(reply.headers()[UNPROCESSED_HEADER], "true");
        let mut out = Vec::new();
        encode_h1(&refused, false, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.contains("\r\nbraid-proxy-unprocessed: true\r\n"),
            "{text}"
        );
        // A timeout may have reached the application: not said.
        let timeout = response(&Failure::Timeout(Duration::from_secs(1)), Protocol::Http);
        assert!(!timeout.headers().contains_key(UNPROCESSED_HEADER));
    }

    #[test]
    fn an_http_caller_gets_the_status_and_the_proxy_error_header() {
        let reply = response(
            &Failure::Timeout(Duration::from_millis(100)),
            Protocol::Http,
        );
        assert_eq!(reply.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            reply.headers()[PROXY_ERROR_HEADER],
            "no response within 100 ms"
        );
        let mut out = Vec::new();
        encode_h1(&Failure::NotReady, true, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nbraid-proxy-error: no proxy config loaded yet\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\nbraid-proxy: no proxy config loaded yet\n"),
            "{text}"
        );
        let body = "braid-proxy: no proxy config loaded yet\n";
        assert!(
            text.contains(&format!("content-length: {}\r\n", body.len())),
            "{text}"
        );
    }

    #[test]
    fn a_denial_is_403_or_permission_denied_and_a_limit_429_with_retry_after() {
        let denied = Failure::Denied {
            policy: "shop/payment".into(),
            reason: crate::policy::authz::Reason::NoAllowRule,
        };
        assert_eq!(
            response(&denied, Protocol::Http).status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            response(&denied, Protocol::Grpc).headers()["grpc-status"],
            "7"
        );
        let limited = Failure::RateLimited(crate::policy::rate_limit::Limited {
            retry_after: Duration::from_millis(1_200),
            scope: crate::telemetry::policy::LimitScope::Pod,
        });
        let reply = response(&limited, Protocol::Http);
        assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            reply.headers()[header::RETRY_AFTER],
            "2",
            "whole seconds, rounded up"
        );
        assert_eq!(
            response(&limited, Protocol::Grpc).headers()["grpc-status"],
            "8"
        );
        let mut out = Vec::new();
        encode_h1(&limited, false, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nretry-after: 2\r\n"), "{text}");
        assert!(!text.contains("connection: close"), "{text}");
        let mut out = Vec::new();
        encode_h1(&denied, false, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.ends_with(
                "\r\n\r\nbraid-proxy: denied by policy shop/payment: no ALLOW rule matches\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn messages_are_made_safe_for_headers() {
        let odd = Failure::BadRequest("ünïcode\r\ninjected: yes 100%".into());
        let reply = response(&odd, Protocol::Grpc);
        assert_eq!(
            reply.headers()[PROXY_ERROR_HEADER],
            "malformed request: ?n?code??injected: yes 100%"
        );
        assert_eq!(
            reply.headers()["grpc-message"],
            "malformed request: %C3%BCn%C3%AFcode%0D%0Ainjected: yes 100%25"
        );
    }
}
