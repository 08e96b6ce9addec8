//! Endpoint selection. [`pick`] is pure: it sees each candidate's [`Load`] and the random numbers
//! and cursor the caller drew, so every balancer's behaviour is a unit test. [`EndpointStats`]
//! keeps the live numbers (outstanding requests, peak-EWMA latency) per endpoint address; they
//! outlive config reloads because they are keyed by address, not by config generation.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_proxy_config::LoadBalancer;

use super::outlier::Health;

/// How fast the peak-EWMA forgets a slow sample (Linkerd and Finagle use 10 s).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// A candidate's load when a request is balanced.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Requests sent to it that have not answered yet.
    pub outstanding: u32,
    /// Its peak-EWMA round-trip latency in nanoseconds; 0 while unknown.
    pub latency_ns: f64,
}

impl Load {
    /// P2C's cost: the latency it would see, weighted by the queue it would join. An endpoint
    /// without a latency sample yet costs only its queue, so new endpoints get tried.
    fn cost(&self) -> f64 {
        let queue = f64::from(self.outstanding) + 1.0;
        if self.latency_ns > 0.0 {
            self.latency_ns * queue
        } else {
            queue
        }
    }
}

/// Picks the index of one of `n` candidates; `load(i)` is asked only by the balancers that need
/// it. `cursor` is the caller's round-robin counter for this destination; `r1` and `r2` are
/// random numbers.
pub fn pick(
    balancer: LoadBalancer,
    n: usize,
    load: impl Fn(usize) -> Load,
    cursor: usize,
    r1: usize,
    r2: usize,
) -> usize {
    if n <= 1 {
        return 0;
    }
    match balancer {
        LoadBalancer::RoundRobin => cursor % n,
        LoadBalancer::Random => r1 % n,
        // Fewest outstanding requests; ties broken starting at the cursor so that an idle set
        // is still spread evenly.
        LoadBalancer::LeastConn => (0..n)
            .map(|i| (cursor + i) % n)
            .min_by_key(|&i| load(i).outstanding)
            .unwrap_or(0),
        // Power of two choices: two distinct random candidates, keep the cheaper.
        LoadBalancer::P2cEwma => {
            let a = r1 % n;
            let b = (a + 1 + r2 % (n - 1)) % n;
            if load(b).cost() < load(a).cost() {
                b
            } else {
                a
            }
        }
    }
}

/// One peak-EWMA step: a sample above the average replaces it at once (react to slowness
/// immediately); a lower one pulls it down with weight `1 - e^(-elapsed/decay)`.
pub fn peak_ewma(average_ns: f64, elapsed: Duration, sample_ns: f64, decay: Duration) -> f64 {
    if sample_ns > average_ns {
        return sample_ns;
    }
    let keep = (-elapsed.as_secs_f64() / decay.as_secs_f64()).exp();
    average_ns * keep + sample_ns * (1.0 - keep)
}

/// The live numbers of one endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    outstanding: AtomicU32,
    latency: Mutex<(f64, Instant)>,
    /// Its outlier state.
    pub health: Health,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self {
            outstanding: AtomicU32::new(0),
            latency: Mutex::new((0.0, Instant::now())),
            health: Health::default(),
        }
    }
}

impl EndpointStats {
    /// Its load now.
    pub fn load(&self) -> Load {
        Load {
            outstanding: self.outstanding.load(Ordering::Relaxed),
            latency_ns: lock(&self.latency).0,
        }
    }

    /// Counts a request as outstanding until the returned guard is dropped, which records its
    /// latency.
    pub fn start(&self) -> InFlight<'_> {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: self,
            started: Instant::now(),
        }
    }
}

/// The live numbers of every endpoint, by address: a config compiles its endpoints with the
/// entries found here ([`crate::policy::routing::Table::compile_with`]), so that an endpoint listed again
/// keeps its numbers across reloads, and nothing is looked up per request.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    stats: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

impl EndpointRegistry {
    /// The numbers of the endpoint at `addr`, made when first asked for.
    pub fn stats(&self, addr: SocketAddr) -> Arc<EndpointStats> {
        lock(&self.stats).entry(addr).or_default().clone()
    }

    /// Forgets every endpoint not in `keep` (compiled tables keep the entries they hold).
    pub fn forget_all_but(&self, keep: &HashSet<SocketAddr>) {
        lock(&self.stats).retain(|addr, _| keep.contains(addr));
    }

    /// Endpoints with numbers kept.
    pub fn len(&self) -> usize {
        lock(&self.stats).len()
    }

    /// Whether no endpoint has numbers kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A lock that a panicked holder did not poison (the data are plain numbers).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request in flight to one endpoint.
#[derive(Debug)]
pub struct InFlight<'a> {
    stats: &'a EndpointStats,
    started: Instant,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.stats.outstanding.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let sample = now.duration_since(self.started).as_nanos() as f64;
        let mut latency = lock(&self.stats.latency);
        let (average, at) = *latency;
        *latency = (
            peak_ewma(average, now.duration_since(at), sample, EWMA_DECAY),
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(n: usize) -> Vec<Load> {
        vec![Load::default(); n]
    }

    #[test]
    fn round_robin_cycles_through_every_endpoint() {
        let picks: Vec<usize> = (0..6)
            .map(|cursor| {
                pick(
                    LoadBalancer::RoundRobin,
                    3,
                    |_| Load::default(),
                    cursor,
                    0,
                    0,
                )
            })
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_conn_prefers_the_endpoint_with_fewest_outstanding_requests() {
        let mut loads = idle(3);
        loads[0].outstanding = 5;
        loads[1].outstanding = 1;
        loads[2].outstanding = 3;
        for cursor in 0..5 {
            assert_eq!(
                pick(
                    LoadBalancer::LeastConn,
                    loads.len(),
                    |i| loads[i],
                    cursor,
                    0,
                    0
                ),
                1
            );
        }
        // Ties are spread by the cursor, not always the first.
        let spread: Vec<usize> = (0..3)
            .map(|c| pick(LoadBalancer::LeastConn, 3, |_| Load::default(), c, 0, 0))
            .collect();
        assert_eq!(spread, [0, 1, 2]);
    }

    #[test]
    fn random_follows_the_random_number() {
        assert_eq!(
            pick(LoadBalancer::Random, 4, |_| Load::default(), 0, 6, 0),
            2
        );
    }

    #[test]
    fn p2c_compares_two_distinct_candidates_and_keeps_the_cheaper() {
        let mut loads = idle(3);
        loads[0].latency_ns = 10_000_000.0;
        loads[1].latency_ns = 1_000_000.0;
        loads[2].latency_ns = 1_000_000.0;
        loads[2].outstanding = 5;
        // Candidates 0 and 1: 1 is faster.
        assert_eq!(
            pick(LoadBalancer::P2cEwma, loads.len(), |i| loads[i], 0, 0, 0),
            1
        );
        // Candidates 1 and 2: same latency, 2 has a queue.
        assert_eq!(
            pick(LoadBalancer::P2cEwma, loads.len(), |i| loads[i], 0, 1, 0),
            1
        );
        // The two candidates are always distinct, whatever r2 is.
        for r2 in 0..10 {
            let chosen = pick(LoadBalancer::P2cEwma, loads.len(), |i| loads[i], 0, 0, r2);
            assert_ne!(chosen, 0, "the slow endpoint won against r2={r2}");
        }
        assert_eq!(
            pick(LoadBalancer::P2cEwma, 1, |_| Load::default(), 0, 5, 5),
            0
        );
    }

    #[test]
    fn peak_ewma_jumps_up_at_once_and_decays_slowly() {
        let up = peak_ewma(1_000.0, Duration::from_millis(1), 50_000.0, EWMA_DECAY);
        assert_eq!(up, 50_000.0);
        let soon = peak_ewma(50_000.0, Duration::from_millis(100), 1_000.0, EWMA_DECAY);
        assert!(soon > 49_000.0, "{soon}");
        let later = peak_ewma(50_000.0, Duration::from_secs(60), 1_000.0, EWMA_DECAY);
        assert!(later < 1_200.0, "{later}");
    }

    #[test]
    fn in_flight_guard_counts_outstanding_and_records_latency() {
        let stats = EndpointStats::default();
        let guard = stats.start();
        assert_eq!(stats.load().outstanding, 1);
        drop(guard);
        assert_eq!(stats.load().outstanding, 0);
        assert!(stats.load().latency_ns > 0.0);
    }
}
