//! The load generator and the upstream of the benchmark, HTTP/1.1.
//! Closed loop (fixed concurrency, hyper on one thread): `connections` clients each send their
//! next request when the last one answered.
//! Open loop (fixed rate): one thread per connection sends on a fixed schedule, paced by the
//! kernel's high-resolution timers (tokio's timer wheel has 1 ms ticks and fired 1-2 ms late,
//! which swamped the latencies being measured), and a request's latency is counted from when it
//! *should* have been sent, so a stalled proxy cannot hide its queue (wrk2's correction for
//! coordinated omission).

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// What one run measured.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Requests answered with 200.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Latency percentiles in microseconds: p50, p99, p99.9.
    pub percentiles_us: [u64; 3],
}

impl Outcome {
    /// One line: `ok errors seconds p50 p99 p999`.
    pub fn to_line(&self) -> String {
        let [p50, p99, p999] = self.percentiles_us;
        format!(
            "{} {} {:.3} {p50} {p99} {p999}",
            self.ok, self.errors, self.seconds
        )
    }

    /// Parses [`Outcome::to_line`].
    pub fn from_line(line: &str) -> Option<Self> {
        let v: Vec<&str> = line.split_whitespace().collect();
        Some(Self {
            ok: v.first()?.parse().ok()?,
            errors: v.get(1)?.parse().ok()?,
            seconds: v.get(2)?.parse().ok()?,
            percentiles_us: [
                v.get(3)?.parse().ok()?,
                v.get(4)?.parse().ok()?,
                v.get(5)?.parse().ok()?,
            ],
        })
    }
}

/// The nearest-rank percentile `p` of `sorted`.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> Option<Sender> {
    let stream = TcpStream::connect(target).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

async fn one(sender: &mut Option<Sender>, target: SocketAddr) -> bool {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = connect(target).await;
    }
    let Some(s) = sender.as_mut() else {
        return false;
    };
    let request = Request::get("/bench")
        .header("host", "bench.svc")
        .body(Empty::new())
        .expect("request");
    match s.send_request(request).await {
        Ok(response) => {
            let ok = response.status().is_success();
            ok && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Runs a closed loop against `target` for `duration`: each of `connections` clients sends its
/// next request when the last one answered.
pub async fn closed_loop(target: SocketAddr, connections: usize, duration: Duration) -> Outcome {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for _ in 0..connections {
        workers.push(tokio::spawn(async move {
            let mut sender = None;
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                if one(&mut sender, target).await {
                    latencies.push(sent.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut results = Vec::new();
    for worker in workers {
        results.push(worker.await.expect("a load worker panicked"));
    }
    outcome(results, started)
}

/// Runs `rate` requests per second against `target` for `duration`, spread over `connections`
/// connections with staggered schedules, one thread each. The connections are opened before the
/// schedule starts.
pub fn fixed_rate(
    target: SocketAddr,
    connections: usize,
    rate: u64,
    duration: Duration,
) -> Outcome {
    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let ready = Arc::new(Barrier::new(connections));
    let start = Arc::new(OnceLock::new());
    let workers: Vec<_> = (0..connections)
        .map(|worker| {
            let (ready, start) = (ready.clone(), start.clone());
            std::thread::spawn(move || {
                let mut connection = Connection::open(target).ok();
                ready.wait();
                let started: Instant = *start.get_or_init(Instant::now);
                let deadline = started + duration;
                let mut next = started + interval.mul_f64(worker as f64 / connections as f64);
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while next < deadline {
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let scheduled = next;
                    next += interval;
                    match Connection::request(&mut connection, target) {
                        Ok(()) => latencies.push(scheduled.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let results: Vec<_> = workers
        .into_iter()
        .map(|w| w.join().expect("a load worker panicked"))
        .collect();
    let started = start.get().copied().unwrap_or_else(Instant::now);
    outcome(results, started)
}

/// `n` requests one after the other on one keep-alive connection (reopened after a failure):
/// how many were answered with 200. Each request meets the proxies alone, so that what they do
/// for it is the same in every run (the instruction counts of [`crate::cost`]).
pub fn sequence(target: SocketAddr, n: u64) -> u64 {
    let mut connection = None;
    (0..n)
        .filter(|_| Connection::request(&mut connection, target).is_ok())
        .count() as u64
}

fn outcome(results: Vec<(Vec<u64>, u64)>, started: Instant) -> Outcome {
    let mut all = Vec::new();
    let mut errors = 0;
    for (latencies, e) in results {
        all.extend(latencies);
        errors += e;
    }
    all.sort_unstable();
    Outcome {
        ok: all.len() as u64,
        errors,
        seconds: started.elapsed().as_secs_f64(),
        percentiles_us: [50.0, 99.0, 99.9].map(|p| percentile(&all, p)),
    }
}

/// A blocking HTTP/1.1 keep-alive connection of the fixed-rate load.
struct Connection {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nhost: bench.svc\r\n\r\n";

impl Connection {
    fn open(target: SocketAddr) -> std::io::Result<Self> {
        let stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request on `connection` (opened first if there is none) and reads the whole
    /// response; any failure or a status other than 200 drops the connection.
    fn request(connection: &mut Option<Self>, target: SocketAddr) -> std::io::Result<()> {
        if connection.is_none() {
            *connection = Some(Self::open(target)?);
        }
        let result = connection.as_mut().map_or(Ok(()), Self::exchange);
        if result.is_err() {
            *connection = None;
        }
        result
    }

    fn exchange(&mut self) -> std::io::Result<()> {
        self.stream.write_all(REQUEST)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed mid-response"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response.parse(&self.buf).map_err(std::io::Error::other)?;
            let httparse::Status::Complete(head) = parsed else {
                continue;
            };
            if response.code != Some(200) {
                return Err(std::io::Error::other(format!("status {:?}", response.code)));
            }
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .ok_or_else(|| std::io::Error::other("response without content-length"))?;
            if self.buf.len() >= head + length {
                return Ok(());
            }
        }
    }
}

/// The upstream application: answers every request with a small fixed body, on each of `ports`,
/// in HTTP/1.1 or h2c (prior knowledge), whichever the client speaks.
pub async fn upstream(ports: &[u16]) {
    let body = Bytes::from_static(b"{\"service\":\"bench\",\"ok\":true}\n");
    let mut servers = Vec::new();
    for &port in ports {
        let listener = TcpListener::bind(("0.0.0.0", port)).await.expect("bind");
        let body = body.clone();
        servers.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        let body = body.clone();
                        async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }
    for server in servers {
        let _ = server.await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(super::percentile(&v, 50.0), 500);
        assert_eq!(super::percentile(&v, 99.9), 999);
    }
}
