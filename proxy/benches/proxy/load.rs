//! The load generator and the upstream of the benchmark, both HTTP/1.1 over hyper on one thread.
//! Closed loop: `connections` clients each send their next request when the last one answered.
//! Open loop (fixed rate): each connection sends on a fixed schedule and a request's latency is
//! counted from when it *should* have been sent, so a stalled proxy cannot hide its queue
//! (wrk2's correction for coordinated omission). tokio's timers fire up to 1 ms late, so a request
//! sent within [`TIMER_SLACK`] of its schedule is timed from when it was actually sent; only a
//! larger delay (a real queue) is charged to the request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
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

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The resolution of tokio's timer wheel.
pub const TIMER_SLACK: Duration = Duration::from_millis(1);

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

/// Runs load against `target` for `duration`: closed loop when `rate` is 0, else `rate`
/// requests per second spread over the connections.
pub async fn run(target: SocketAddr, connections: usize, rate: u64, duration: Duration) -> Outcome {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for worker in 0..connections {
        workers.push(tokio::spawn(async move {
            let mut sender = None;
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let interval =
                (rate > 0).then(|| Duration::from_secs_f64(connections as f64 / rate as f64));
            // Stagger the schedules so that the connections do not fire together.
            let mut next = started
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / connections as f64)
                });
            loop {
                let scheduled = match interval {
                    Some(interval) => {
                        tokio::time::sleep_until(next.into()).await;
                        let at = next;
                        next += interval;
                        at
                    }
                    None => Instant::now(),
                };
                if scheduled >= deadline {
                    break;
                }
                let now = Instant::now();
                let scheduled = if now.duration_since(scheduled) > TIMER_SLACK {
                    scheduled
                } else {
                    now
                };
                if one(&mut sender, target).await {
                    latencies.push(scheduled.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        if let Ok((latencies, e)) = worker.await {
            all.extend(latencies);
            errors += e;
        }
    }
    all.sort_unstable();
    Outcome {
        ok: all.len() as u64,
        errors,
        seconds: started.elapsed().as_secs_f64(),
        percentiles_us: [
            percentile(&all, 50.0),
            percentile(&all, 99.0),
            percentile(&all, 99.9),
        ],
    }
}

/// The upstream application: answers every request with a small fixed body, on each of `ports`.
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
                    let _ = hyper::server::conn::http1::Builder::new()
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
