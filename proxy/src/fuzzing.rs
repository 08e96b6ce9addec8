//! The checks every fuzz target runs on its input, one function per parser the outside world
//! feeds: HTTP/1.1 request and response heads, chunked bodies, protocol detection and the
//! request-head watch, the TLS ClientHello peek, `proxy.json`, and `braid-proxy init`'s flags.
//! Each must take any bytes without panicking, and what it accepts must hold together (a head
//! that is forwarded re-parses the same; a chunked body ends at the same byte however it is
//! split). `proxy/fuzz/` runs them under libFuzzer (`make fuzz`, nightly); the stable test
//! `tests/fuzz_corpus.rs` runs them on the committed corpus and mutations of it.

use crate::h1::message::{self, ChunkedScanner, HEADER_SLOT, MAX_HEADERS, Parse};
use crate::transport::detect::{Detected, detect};

/// A fuzz target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// The fuzz targets, by name (the names of `proxy/fuzz/fuzz_targets/*.rs` and corpus folders).
pub const TARGETS: [Target; 7] = [
    ("h1_request", h1_request),
    ("h1_response", h1_response),
    ("chunked", chunked),
    ("detect", detect_protocol),
    ("client_hello", client_hello),
    ("proxy_json", proxy_json),
    ("init_flags", init_flags),
];

/// A request head the fast path takes is forwarded as a head that parses to the same request.
pub fn h1_request(data: &[u8]) {
    let mut headers = [HEADER_SLOT; MAX_HEADERS];
    let Parse::Done(request) = message::parse_request(data, &mut headers) else {
        return;
    };
    let mut out = Vec::new();
    request.encode(&mut out);
    let mut again = [HEADER_SLOT; MAX_HEADERS];
    match message::parse_request(&out, &mut again) {
        Parse::Done(forwarded) => {
            assert_eq!(forwarded.method, request.method);
            assert_eq!(forwarded.target, request.target);
            assert_eq!(forwarded.body_len, request.body_len);
            assert_eq!(forwarded.head_len, out.len());
        }
        other => panic!("a forwarded head does not parse: {other:?}"),
    }
}

/// Any response head parses or is refused; what is forwarded parses again to the same status.
pub fn h1_response(data: &[u8]) {
    let to_head = data.first().is_some_and(|b| b & 1 == 1);
    let mut headers = [HEADER_SLOT; MAX_HEADERS];
    let Ok(Some(response)) = message::parse_response(data, &mut headers, to_head) else {
        return;
    };
    let mut out = Vec::new();
    response.encode(false, &mut out);
    let mut again = [HEADER_SLOT; MAX_HEADERS];
    if let Ok(Some(forwarded)) = message::parse_response(&out, &mut again, to_head) {
        assert_eq!(forwarded.status, response.status);
    } else if !response.is_interim() {
        panic!(
            "a forwarded response head does not parse: {:?} from {:?}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(data)
        );
    }
}

/// A chunked body ends at the same byte whether it is scanned whole or in two parts.
pub fn chunked(data: &[u8]) {
    let whole = ChunkedScanner::default().scan(data);
    let split = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
    let mut scanner = ChunkedScanner::default();
    let parts = match scanner.scan(&data[..split]) {
        Ok(Some(end)) => Ok(Some(end)),
        Ok(None) => scanner
            .scan(&data[split..])
            .map(|end| end.map(|n| n + split)),
        Err(error) => Err(error),
    };
    assert_eq!(whole.ok(), parts.ok(), "split at {split}");
}

/// Detection answers for any prefix, and once it has an answer more bytes do not change it;
/// the request-head watch takes the same bytes, split anywhere.
pub fn detect_protocol(data: &[u8]) {
    let answer = detect(data);
    if answer != Detected::NeedMore {
        for n in 0..=data.len().min(64) {
            let earlier = detect(&data[..n]);
            assert!(earlier == Detected::NeedMore || earlier == answer);
        }
    }
    let mut whole = crate::transport::deadline::HeadWatch::new();
    let mut split = crate::transport::deadline::HeadWatch::new();
    let at = data.len() / 2;
    let state = whole.feed(data);
    split.feed(&data[..at]);
    assert_eq!(split.feed(&data[at..]), state);
}

/// The ClientHello peek answers (or waits for more) on any bytes.
pub fn client_hello(data: &[u8]) {
    let _ = crate::listener::inbound::offers_mesh_alpn(data);
}

/// A `proxy.json` is refused whole or compiled whole for the data path.
pub fn proxy_json(data: &[u8]) {
    let state = crate::state::reload::ConfigState::default();
    if state.offer(data).is_ok() {
        assert!(state.current().is_some());
    }
}

/// `braid-proxy init`'s flags (one per line of the input) are parsed or every bad one named.
pub fn init_flags(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let args: Vec<String> = text.lines().map(String::from).collect();
    match crate::redirect::init::parse(&args) {
        Ok(init) => {
            let _ = crate::redirect::iptables::payload(&init.redirect, false);
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
}
