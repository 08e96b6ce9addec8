//! Client commands that behave as careless or hostile peers do: a connection aimed at a proxy's
//! own port, slow request heads (slowloris), a burst of connections at once, a flood of
//! connections past a listener's cap; and a steady load that measures what well-behaved callers
//! see meanwhile. Each prints one `result:` line, as the other client commands.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How the other side answered a connection that sent one request.
async fn answer(stream: &mut TcpStream, within: Duration) -> &'static str {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(0)) => "closed",
        Ok(Ok(_)) => "answered",
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => "reset",
        Ok(Err(_)) => "error",
        Err(_) => "timeout",
    }
}

/// One connection to `target` with a GET on it: `refused` (no connection), `closed` or
/// `reset` (refused once connected), `answered`, or `timeout` (held open: a loop).
pub async fn raw(target: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(target).await else {
        return "refused".into();
    };
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    answer(&mut stream, Duration::from_secs(3)).await.into()
}

/// `count` connections that send a request head one header byte every 500 ms, for at most
/// `seconds`: how many were closed by the other side, when the first and last were, and when
/// the last one was established (a late one waited for a SYN retransmit).
pub async fn slowloris(target: SocketAddr, count: usize, seconds: u64) -> String {
    let started = Instant::now();
    let give_up = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..count {
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(target).await.ok()?;
            let connected = Instant::now();
            stream
                .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
                .await
                .ok()?;
            let mut buf = [0u8; 64];
            while Instant::now() < give_up {
                tokio::select! {
                    read = stream.read(&mut buf) => match read {
                        Ok(n) if n > 0 => return Some((connected, Instant::now(), true)),
                        _ => return Some((connected, Instant::now(), false)),
                    },
                    () = tokio::time::sleep(Duration::from_millis(500)) => {
                        if stream.write_all(b"x").await.is_err() {
                            return Some((connected, Instant::now(), false));
                        }
                    }
                }
            }
            None
        }));
    }
    let (mut closed, mut answered, mut connected_open) = (0, 0, 0);
    let (mut first, mut last, mut last_connected) = (u128::MAX, 0, 0);
    for task in tasks {
        match task.await.ok().flatten() {
            Some((connected, at, got_bytes)) => {
                let since_start = |instant: Instant| instant.duration_since(started).as_millis();
                first = first.min(since_start(at));
                last = last.max(since_start(at));
                last_connected = last_connected.max(since_start(connected));
                if got_bytes {
                    answered += 1;
                } else {
                    closed += 1;
                }
            }
            None => connected_open += 1,
        }
    }
    format!(
        "closed={closed} answered={answered} still_open={connected_open} first_ms={first} last_ms={last} last_connected_ms={last_connected}"
    )
}

/// GETs one after the other on a keep-alive connection (a new one when it closes) for
/// `seconds`: how many succeeded and failed, and the p99 latency.
pub async fn steady(target: SocketAddr, seconds: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut latencies = Vec::new();
    let mut stream: Option<TcpStream> = None;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        let sent = Instant::now();
        if stream.is_none() {
            stream = TcpStream::connect(target).await.ok();
        }
        let Some(connection) = stream.as_mut() else {
            failed += 1;
            continue;
        };
        let exchanged = async {
            connection
                .write_all(b"GET /steady HTTP/1.1\r\nHost: x\r\n\r\n")
                .await?;
            let mut got = Vec::new();
            // The test applications answer with a Content-Length body; the end of the head and
            // a short body arrive together.
            loop {
                let n = connection.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::Error::other("closed"));
                }
                got.extend_from_slice(&buf[..n]);
                if let Some(head_end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|l| l.trim().parse().ok())
                        .unwrap_or(0);
                    if got.len() >= head_end + 4 + length {
                        return Ok(head.starts_with("http/1.1 200"));
                    }
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), exchanged).await {
            Ok(Ok(true)) => {
                ok += 1;
                latencies.push(sent.elapsed());
            }
            _ => {
                failed += 1;
                stream = None;
            }
        }
    }
    latencies.sort();
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    format!("ok={ok} failed={failed} p99_ms={p99:.2}")
}

/// Opens `count` connections at once, each given `connect_within` to be established (the
/// kernel completes a handshake for a listener's queue, before the proxy accepts it), then a
/// GET on each established one, answered within `answer_within`: how many connected and how
/// many were answered.
pub async fn connect_burst(
    target: SocketAddr,
    count: usize,
    connect_within: Duration,
    answer_within: Duration,
) -> String {
    let connects = (0..count).map(|_| {
        tokio::spawn(tokio::time::timeout(
            connect_within,
            TcpStream::connect(target),
        ))
    });
    let mut connected = Vec::new();
    for connect in connects.collect::<Vec<_>>() {
        if let Ok(Ok(Ok(stream))) = connect.await {
            connected.push(stream);
        }
    }
    let established = connected.len();
    let answers = connected.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let _ = stream
                .write_all(b"GET /burst HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            answer(&mut stream, answer_within).await == "answered"
        })
    });
    let mut answered = 0;
    for answer in answers.collect::<Vec<_>>() {
        answered += usize::from(answer.await.unwrap_or(false));
    }
    format!("connected={established} answered={answered}")
}

/// Opens `hold` connections and keeps them, then `extra` more: each extra one is answered at
/// once with a close (refused) or not; then a request on the first held connection.
pub async fn flood(target: SocketAddr, hold: usize, extra: usize) -> String {
    let mut held = Vec::new();
    for _ in 0..hold {
        match TcpStream::connect(target).await {
            Ok(stream) => held.push(stream),
            Err(_) => return "connect-failed".into(),
        }
    }
    // Let the proxy take them all before the flood.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = 0;
    let mut extras = Vec::new();
    for _ in 0..extra {
        let Ok(mut stream) = TcpStream::connect(target).await else {
            refused += 1;
            continue;
        };
        if matches!(
            answer(&mut stream, Duration::from_secs(1)).await,
            "closed" | "reset"
        ) {
            refused += 1;
        }
        extras.push(stream);
    }
    let first = &mut held[0];
    let _ = first
        .write_all(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let served = answer(first, Duration::from_secs(3)).await == "answered";
    // Hold everything a little longer, while the test asks the admin port.
    tokio::time::sleep(Duration::from_secs(2)).await;
    format!("held={} refused={refused} served={served}", held.len())
}
