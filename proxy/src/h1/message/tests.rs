//! Tests of the HTTP/1.1 messages: parsing, forwarding, framing, the chunked scanner, and a
//! property test over mutated inputs.

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
    let (framing, reusable, _) = ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
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
    let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nGET / HTTP/1.1";
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
