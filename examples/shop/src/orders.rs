//! `braid-shop orders`: the traffic generator. It places orders with the order service and counts
//! which version of every service each order went through (the order service's answer embeds the
//! answers of user, inventory and payment), so a canary split or a load balancer's choices can be
//! read off the summary: `{"orders":1000,"failed":0,"versions":{"payment":{"v1":801,"v2":199}},
//! "p50_ms":4.1,"p99_ms":12.5,…}` (latencies of whole orders, as the traffic generator saw them).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::args::OrderSettings;
use crate::client::fetch;

/// What a run of orders saw.
#[derive(Debug, Default)]
struct Tally {
    orders: u64,
    failed: u64,
    versions: BTreeMap<String, BTreeMap<String, u64>>,
    errors: BTreeMap<String, u64>,
    /// How long each order took, in microseconds.
    latencies_us: Vec<u64>,
}

impl Tally {
    fn record(&mut self, outcome: anyhow::Result<(hyper::StatusCode, bytes::Bytes)>) {
        self.orders += 1;
        let answer = match outcome {
            Ok((status, body)) if status.is_success() => {
                serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default()
            }
            Ok((status, body)) => {
                return self.fail(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ));
            }
            Err(error) => return self.fail(format!("{error:#}")),
        };
        if let Some(calls) = answer["calls"].as_object() {
            for (service, call) in calls {
                let version = call["version"].as_str().unwrap_or("?").to_string();
                *self
                    .versions
                    .entry(service.clone())
                    .or_default()
                    .entry(version)
                    .or_default() += 1;
            }
        }
    }

    fn fail(&mut self, error: String) {
        self.failed += 1;
        if self.errors.len() < 5 || self.errors.contains_key(&error) {
            *self.errors.entry(error).or_default() += 1;
        }
    }

    fn summary(&self) -> String {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        // The nearest-rank percentile `p` of the orders' latencies, in milliseconds.
        let percentile_ms = |p: f64| {
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted
                .get(rank.clamp(1, sorted.len().max(1)) - 1)
                .map_or(0.0, |us| *us as f64 / 1000.0)
        };
        serde_json::json!({
            "orders": self.orders,
            "failed": self.failed,
            "versions": self.versions,
            "errors": self.errors,
            "p50_ms": percentile_ms(50.0),
            "p99_ms": percentile_ms(99.0),
            "max_ms": percentile_ms(100.0),
        })
        .to_string()
    }
}

/// Places orders as `settings` says and prints the summary (every 10 s when running forever).
pub async fn run(settings: OrderSettings) -> anyhow::Result<()> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let deadline = settings
        .duration
        .map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let forever = settings.count.is_none() && deadline.is_none();
    let placed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let settings = Arc::new(settings);
    let mut workers = Vec::new();
    for _ in 0..settings.concurrency {
        let (tally, placed, settings) = (tally.clone(), placed.clone(), settings.clone());
        workers.push(tokio::spawn(async move {
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
                let n = placed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if settings.count.is_some_and(|count| n >= count) {
                    return;
                }
                let started = Instant::now();
                let outcome = fetch(&settings.url).await;
                let took = started.elapsed().as_micros() as u64;
                {
                    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                    tally.record(outcome);
                    tally.latencies_us.push(took);
                }
                if settings.pause_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(settings.pause_ms)).await;
                }
            }
        }));
    }
    if forever {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
            println!("{}", tally.summary());
            *tally = Tally::default();
        }
    }
    for worker in workers {
        worker.await?;
    }
    println!(
        "{}",
        tally.lock().unwrap_or_else(|e| e.into_inner()).summary()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_counts_versions_per_called_service_and_keeps_errors() {
        let mut tally = Tally::default();
        let order = |payment: &str| {
            let body = serde_json::json!({"role": "order", "calls": {
                "payment": {"version": payment}, "user": {"version": "v1"}}});
            Ok((hyper::StatusCode::OK, bytes::Bytes::from(body.to_string())))
        };
        tally.record(order("v1"));
        tally.record(order("v2"));
        tally.record(order("v2"));
        tally.record(Ok((
            hyper::StatusCode::BAD_GATEWAY,
            bytes::Bytes::from("payment: down"),
        )));
        let summary: serde_json::Value = serde_json::from_str(&tally.summary()).expect("JSON");
        assert_eq!(summary["orders"], 4);
        assert_eq!(summary["failed"], 1);
        assert_eq!(summary["versions"]["payment"]["v2"], 2);
        assert_eq!(summary["versions"]["user"]["v1"], 3);
        assert_eq!(summary["errors"]["502 Bad Gateway: payment: down"], 1);
        assert_eq!(summary["p99_ms"], 0.0, "no latency recorded");
    }

    #[test]
    fn latencies_are_summed_up_as_nearest_rank_percentiles() {
        let tally = Tally {
            latencies_us: (1..=100).rev().map(|ms| ms * 1000).collect(),
            ..Tally::default()
        };
        let summary: serde_json::Value = serde_json::from_str(&tally.summary()).expect("JSON");
        assert_eq!(summary["p50_ms"], 50.0);
        assert_eq!(summary["p99_ms"], 99.0);
        assert_eq!(summary["max_ms"], 100.0);
    }
}
