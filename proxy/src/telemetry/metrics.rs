//! The data path's counters: plain atomics bumped on the hot path (no locks, no allocation),
//! rendered to Prometheus text only when `/metrics` is scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::resilience::ResilienceCounters;

/// Upper bounds of the request latency histogram, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// Which listener a TCP counter belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// Port 15006.
    Inbound = 0,
    /// Port 15001.
    Outbound = 1,
}

const DIRECTIONS: [&str; 2] = ["inbound", "outbound"];

impl Direction {
    /// `inbound` or `outbound`, as the metrics' label and the log say it.
    pub fn label(self) -> &'static str {
        DIRECTIONS[self as usize]
    }
}

/// Why a listener refused a connection as soon as it accepted it.
#[derive(Clone, Copy, Debug)]
pub enum Refusal {
    /// Its original destination is one of the proxy's own ports: it would loop.
    Loop = 0,
    /// The listener is at its connection cap.
    Limit = 1,
}

const REFUSALS: [&str; 2] = ["loop", "limit"];

/// The response flags of requests the proxy answered itself or could not finish
/// ([`crate::pipeline::Kind::response_flag`]), in the order of their counters.
const RESPONSE_FLAGS: [&str; 12] = [
    "NR", "UH", "UF", "UC", "UPE", "UT", "FI", "DPE", "DC", "RBAC", "RL", "UO",
];
const EXPIRIES: [&str; 2] = ["request_head", "idle"];

/// Every counter of the data path.
#[derive(Debug)]
pub struct Metrics {
    http: [HttpCounters; 2],
    connections_opened: [AtomicU64; 2],
    connections_closed: [AtomicU64; 2],
    bytes_received: [AtomicU64; 2],
    bytes_sent: [AtomicU64; 2],
    inbound_tls: AtomicU64,
    inbound_plaintext: AtomicU64,
    inbound_refused: AtomicU64,
    refused: [[AtomicU64; 2]; 2],
    accept_failures: [AtomicU64; 2],
    timed_out: [[AtomicU64; 2]; 2],
    /// Retries, circuit breakers, ejections.
    pub resilience: ResilienceCounters,
}

/// The HTTP request counters of one direction.
#[derive(Debug)]
struct HttpCounters {
    requests: AtomicU64,
    responses: [AtomicU64; 600],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_sum_us: AtomicU64,
    failures: [AtomicU64; RESPONSE_FLAGS.len()],
    unanswered: AtomicU64,
}

impl Default for HttpCounters {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            responses: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            failures: Default::default(),
            unanswered: AtomicU64::new(0),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            http: Default::default(),
            connections_opened: Default::default(),
            connections_closed: Default::default(),
            bytes_received: Default::default(),
            bytes_sent: Default::default(),
            inbound_tls: AtomicU64::new(0),
            inbound_plaintext: AtomicU64::new(0),
            inbound_refused: AtomicU64::new(0),
            refused: Default::default(),
            accept_failures: Default::default(),
            timed_out: Default::default(),
            resilience: ResilienceCounters::default(),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// How an inbound connection was accepted.
#[derive(Clone, Copy, Debug)]
pub enum InboundKind {
    /// mTLS from a mesh peer.
    Tls,
    /// Plaintext, allowed by the mode.
    Plaintext,
    /// Refused (plaintext under STRICT, or a failed handshake).
    Refused,
}

impl Metrics {
    /// An HTTP request was received.
    pub fn request(&self, direction: Direction) {
        bump(&self.http[direction as usize].requests, 1);
    }

    /// An HTTP request was answered with `status` after `elapsed`.
    pub fn response(&self, direction: Direction, status: u16, elapsed: Duration) {
        let http = &self.http[direction as usize];
        if let Some(counter) = http.responses.get(usize::from(status)) {
            bump(counter, 1);
        }
        let ms = elapsed.as_millis() as u64;
        if let Some(bucket) = LATENCY_BUCKETS_MS.iter().position(|&le| ms < le) {
            bump(&http.latency_buckets[bucket], 1);
        }
        bump(&http.latency_sum_us, elapsed.as_micros() as u64);
    }

    /// A request failed for a cause of this kind (answered by the proxy, or cut off).
    pub fn failure(&self, direction: Direction, kind: crate::pipeline::Kind) {
        let flag = kind.response_flag();
        if let Some(i) = RESPONSE_FLAGS.iter().position(|f| *f == flag) {
            bump(&self.http[direction as usize].failures[i], 1);
        }
    }

    /// A request ended without a response head to its client (it went away, or the
    /// connection broke).
    pub fn unanswered(&self, direction: Direction) {
        bump(&self.http[direction as usize].unanswered, 1);
    }

    /// A connection was accepted.
    pub fn opened(&self, direction: Direction) {
        bump(&self.connections_opened[direction as usize], 1);
    }

    /// A connection ended after carrying these bytes (received from the client, sent to it).
    pub fn closed(&self, direction: Direction, received: u64, sent: u64) {
        let d = direction as usize;
        bump(&self.connections_closed[d], 1);
        bump(&self.bytes_received[d], received);
        bump(&self.bytes_sent[d], sent);
    }

    /// Connections open now on one listener.
    pub fn open(&self, direction: Direction) -> u64 {
        let d = direction as usize;
        self.connections_opened[d]
            .load(Ordering::Relaxed)
            .saturating_sub(self.connections_closed[d].load(Ordering::Relaxed))
    }

    /// Connections open now on both listeners.
    pub fn open_connections(&self) -> u64 {
        self.open(Direction::Inbound) + self.open(Direction::Outbound)
    }

    /// A connection was refused as soon as it was accepted.
    pub fn refused(&self, direction: Direction, why: Refusal) {
        bump(&self.refused[direction as usize][why as usize], 1);
    }

    /// Accepting a connection failed (out of file descriptors, for one).
    pub fn accept_failed(&self, direction: Direction) {
        bump(&self.accept_failures[direction as usize], 1);
    }

    /// A client connection was closed by a deadline.
    pub fn timed_out(&self, direction: Direction, deadline: crate::transport::deadline::Expired) {
        bump(&self.timed_out[direction as usize][deadline as usize], 1);
    }

    /// How an inbound connection was accepted.
    pub fn inbound(&self, kind: InboundKind) {
        bump(
            match kind {
                InboundKind::Tls => &self.inbound_tls,
                InboundKind::Plaintext => &self.inbound_plaintext,
                InboundKind::Refused => &self.inbound_refused,
            },
            1,
        );
    }

    /// The HTTP request counters, by direction.
    fn render_http(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let directions = || DIRECTIONS.iter().zip(&self.http);
        family(
            out,
            "braid_proxy_requests_total",
            "counter",
            "HTTP requests received.",
        );
        for (direction, http) in directions() {
            let _ = writeln!(
                out,
                "braid_proxy_requests_total{{direction=\"{direction}\"}} {}",
                get(&http.requests)
            );
        }
        family(
            out,
            "braid_proxy_responses_total",
            "counter",
            "HTTP responses by status.",
        );
        for (direction, http) in directions() {
            for (status, counter) in http.responses.iter().enumerate() {
                let n = get(counter);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "braid_proxy_responses_total{{direction=\"{direction}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        family(
            out,
            "braid_proxy_request_duration_seconds",
            "histogram",
            "HTTP request latency, to the response head.",
        );
        for (direction, http) in directions() {
            let mut cumulative = 0;
            for (le, counter) in LATENCY_BUCKETS_MS.iter().zip(&http.latency_buckets) {
                cumulative += get(counter);
                let _ = writeln!(
                    out,
                    "braid_proxy_request_duration_seconds_bucket{{direction=\"{direction}\",le=\"{}\"}} {cumulative}",
                    *le as f64 / 1000.0
                );
            }
            let count: u64 = http.responses.iter().map(get).sum();
            let labels = format!("direction=\"{direction}\"");
            let _ = writeln!(
                out,
                "braid_proxy_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}\n\
                 braid_proxy_request_duration_seconds_sum{{{labels}}} {}\n\
                 braid_proxy_request_duration_seconds_count{{{labels}}} {count}",
                get(&http.latency_sum_us) as f64 / 1e6
            );
        }
        family(
            out,
            "braid_proxy_request_failures_total",
            "counter",
            "HTTP requests the proxy answered itself or could not finish, by Envoy response flag.",
        );
        for (direction, http) in directions() {
            for (flag, counter) in RESPONSE_FLAGS.iter().zip(&http.failures) {
                let _ = writeln!(
                    out,
                    "braid_proxy_request_failures_total{{direction=\"{direction}\",response_flag=\"{flag}\"}} {}",
                    get(counter)
                );
            }
        }
        family(
            out,
            "braid_proxy_requests_unanswered_total",
            "counter",
            "HTTP requests that ended without a response head (the client went away, a connection broke).",
        );
        for (direction, http) in directions() {
            let _ = writeln!(
                out,
                "braid_proxy_requests_unanswered_total{{direction=\"{direction}\"}} {}",
                get(&http.unanswered)
            );
        }
    }

    /// Appends the Prometheus text of every counter to `out`.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.render_http(out);
        self.resilience.render(out);
        for (name, help, counters) in [
            (
                "braid_proxy_tcp_connections_opened_total",
                "TCP connections accepted.",
                &self.connections_opened,
            ),
            (
                "braid_proxy_tcp_connections_closed_total",
                "TCP connections ended.",
                &self.connections_closed,
            ),
            (
                "braid_proxy_tcp_received_bytes_total",
                "Bytes received from clients.",
                &self.bytes_received,
            ),
            (
                "braid_proxy_tcp_sent_bytes_total",
                "Bytes sent to clients.",
                &self.bytes_sent,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (d, direction) in DIRECTIONS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{direction=\"{direction}\"}} {}",
                    get(&counters[d])
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP braid_proxy_inbound_connections_total Inbound connections by how they were accepted.\n\
             # TYPE braid_proxy_inbound_connections_total counter\n\
             braid_proxy_inbound_connections_total{{accepted=\"mtls\"}} {}\n\
             braid_proxy_inbound_connections_total{{accepted=\"plaintext\"}} {}\n\
             braid_proxy_inbound_connections_total{{accepted=\"refused\"}} {}",
            get(&self.inbound_tls),
            get(&self.inbound_plaintext),
            get(&self.inbound_refused)
        );
        let pairs = |out: &mut String,
                     name: &str,
                     help: &str,
                     label: &str,
                     values: &[&str],
                     counters: &[[AtomicU64; 2]; 2]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (d, direction) in DIRECTIONS.iter().enumerate() {
                for (v, value) in values.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}{{direction=\"{direction}\",{label}=\"{value}\"}} {}",
                        get(&counters[d][v])
                    );
                }
            }
        };
        pairs(
            out,
            "braid_proxy_tcp_connections_refused_total",
            "Connections closed as soon as they were accepted: their destination was the proxy itself (loop), or the listener was at its cap (limit).",
            "reason",
            &REFUSALS,
            &self.refused,
        );
        pairs(
            out,
            "braid_proxy_tcp_connections_timed_out_total",
            "Client connections closed by a deadline: a request head not sent in time, or idle too long.",
            "deadline",
            &EXPIRIES,
            &self.timed_out,
        );
        let _ = writeln!(
            out,
            "# HELP braid_proxy_accept_failures_total Failed accepts (out of file descriptors, for one); the listener backs off.\n\
             # TYPE braid_proxy_accept_failures_total counter"
        );
        for (d, direction) in DIRECTIONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "braid_proxy_accept_failures_total{{direction=\"{direction}\"}} {}",
                get(&self.accept_failures[d])
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_and_latency_render_as_prometheus_text() {
        let metrics = Metrics::default();
        metrics.request(Direction::Outbound);
        metrics.response(Direction::Outbound, 200, Duration::from_millis(3));
        metrics.response(Direction::Outbound, 503, Duration::from_millis(700));
        metrics.request(Direction::Inbound);
        metrics.response(Direction::Inbound, 200, Duration::from_millis(3));
        metrics.opened(Direction::Outbound);
        metrics.closed(Direction::Outbound, 10, 20);
        metrics.opened(Direction::Inbound);
        assert_eq!(metrics.open_connections(), 1);
        metrics.refused(Direction::Inbound, Refusal::Loop);
        metrics.timed_out(
            Direction::Outbound,
            crate::transport::deadline::Expired::RequestHead,
        );
        metrics.accept_failed(Direction::Inbound);
        let mut text = String::new();
        metrics.render(&mut text);
        for line in [
            "braid_proxy_requests_total{direction=\"outbound\"} 1",
            "braid_proxy_responses_total{direction=\"outbound\",status=\"200\"} 1",
            "braid_proxy_responses_total{direction=\"outbound\",status=\"503\"} 1",
            "braid_proxy_request_duration_seconds_bucket{direction=\"outbound\",le=\"0.005\"} 1",
            "braid_proxy_request_duration_seconds_bucket{direction=\"outbound\",le=\"1\"} 2",
            "braid_proxy_request_duration_seconds_count{direction=\"outbound\"} 2",
            "braid_proxy_requests_total{direction=\"inbound\"} 1",
            "braid_proxy_responses_total{direction=\"inbound\",status=\"200\"} 1",
            "braid_proxy_request_duration_seconds_count{direction=\"inbound\"} 1",
            "braid_proxy_tcp_sent_bytes_total{direction=\"outbound\"} 20",
            "braid_proxy_tcp_connections_refused_total{direction=\"inbound\",reason=\"loop\"} 1",
            "braid_proxy_tcp_connections_timed_out_total{direction=\"outbound\",deadline=\"request_head\"} 1",
            "braid_proxy_accept_failures_total{direction=\"inbound\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
