use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

const HEAD: &[u8] = b"GET /orders HTTP/1.1\r\nHost: order\r\nAccept: */*\r\n\r\n";

#[test]
fn a_head_ends_at_its_blank_line_however_its_bytes_are_split() {
    for split in 0..=HEAD.len() {
        let mut watch = HeadWatch::new();
        let first = watch.feed(&HEAD[..split]);
        if split == 0 {
            assert_eq!(first, HeadState::Waiting);
        } else if split < HEAD.len() {
            assert_eq!(first, HeadState::InHead, "split at {split}");
        }
        assert_eq!(watch.feed(&HEAD[split..]), HeadState::Released, "{split}");
    }
    // Bare line feeds end a head too (parsers accept them).
    let mut watch = HeadWatch::new();
    assert_eq!(
        watch.feed(b"GET / HTTP/1.1\nHost: x\n\n"),
        HeadState::Released
    );
}

#[test]
fn a_drip_fed_head_stays_under_way_and_other_protocols_are_released() {
    let mut watch = HeadWatch::new();
    for byte in b"GET / HTTP/1.1\r\nX-a: b\r\nX-b: c\r\n" {
        assert_eq!(watch.feed(&[*byte]), HeadState::InHead);
    }
    for other in [
        &b"\x16\x03\x01"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"*1\r\n$4\r\n",
    ] {
        assert_eq!(
            HeadWatch::new().feed(other),
            HeadState::Released,
            "{other:?}"
        );
    }
    // A method that turns out not to be one is released once it can be told.
    let mut watch = HeadWatch::new();
    assert_eq!(watch.feed(b"GE"), HeadState::InHead);
    assert_eq!(watch.feed(b"t"), HeadState::Released);
    assert_eq!(HeadWatch::released().feed(b"GET "), HeadState::Released);
}

fn limits(head_ms: u64, idle_ms: u64) -> Limits {
    Limits {
        request_head_timeout_ms: head_ms,
        idle_timeout_ms: idle_ms,
        ..Limits::default()
    }
}

/// The application writes `first` (after reading the server's `banner`, if any) and then
/// nothing; how long until the splice ends, and why.
async fn splice_after(first: &[u8], banner: &[u8], limits: Limits) -> (Duration, Option<Expired>) {
    let (mut app, mut client_side) = tokio::io::duplex(4096);
    let (mut upstream_side, mut server) = tokio::io::duplex(4096);
    let started = Instant::now();
    server.write_all(banner).await.expect("banner");
    let app_speaks = async {
        let mut greeting = vec![0u8; banner.len()];
        app.read_exact(&mut greeting).await.expect("banner");
        app.write_all(first).await.expect("write");
    };
    let (spliced, ()) = tokio::join!(
        splice(
            &mut client_side,
            &mut upstream_side,
            &limits,
            started,
            HeadWatch::new(),
        ),
        app_speaks
    );
    let mut seen = vec![0u8; first.len()];
    server.read_exact(&mut seen).await.expect("forwarded");
    assert_eq!(seen, first, "the bytes pass unchanged");
    (started.elapsed(), spliced.expired)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_head_is_closed_at_its_deadline_and_a_quiet_connection_at_the_idle_time() {
    let (after, why) =
        splice_after(b"GET / HTTP/1.1\r\nX-a: b\r\n", b"", limits(3_000, 60_000)).await;
    assert_eq!(why, Some(Expired::RequestHead));
    assert_eq!(after.as_millis(), 3_000);

    let (after, why) = splice_after(HEAD, b"", limits(3_000, 60_000)).await;
    assert_eq!(why, Some(Expired::Idle));
    assert_eq!(
        after.as_millis(),
        60_000,
        "a whole head: only the idle time applies"
    );

    // A server that speaks first (SMTP) has no request head to wait for, even when the
    // client's words look like a method.
    let (after, why) = splice_after(b"HELO x\r\n", b"220 ready\r\n", limits(3_000, 60_000)).await;
    assert_eq!(why, Some(Expired::Idle));
    assert_eq!(after.as_millis(), 60_000);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_head_started_late_is_still_held_to_the_deadline() {
    let watch = Watch::new(Instant::now());
    let limits = limits(3_000, 60_000);
    let expired = watch.expired(&limits);
    let late = async {
        tokio::time::sleep(Duration::from_millis(4_000)).await;
        watch.touch();
        watch.head.store(HeadState::InHead as u8, Ordering::Relaxed);
        std::future::pending::<()>().await;
    };
    let started = Instant::now();
    let why = tokio::select! {
        why = expired => why,
        () = late => unreachable!(),
    };
    assert_eq!(why, Expired::RequestHead);
    // Looked at again one head timeout after the first deadline.
    assert_eq!(started.elapsed().as_millis(), 6_000);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_watchdog_armed_late_is_moved_earlier_and_one_armed_early_is_re_armed() {
    let start = Instant::now();
    let mut watchdog = Watchdog::new(start + Duration::from_secs(3_600));
    watchdog.until(start + Duration::from_secs(5)).await;
    assert_eq!(start.elapsed().as_secs(), 5);
    watchdog.until(start + Duration::from_secs(9)).await;
    assert_eq!(start.elapsed().as_secs(), 9);
}
