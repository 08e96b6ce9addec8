//! Rate limits: a token bucket per pod and, for callers `perIdentity` names, buckets of their
//! own, checked first (Linkerd's identity overrides). A bucket is one atomic: the generic cell
//! rate algorithm keeps the instant at which the bucket would be full again, so taking a token
//! is a compare-and-swap ([`Bucket::take`]) and the decision itself a pure function
//! ([`admit`]). No lock and no allocation per request. A reload starts the buckets full.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use braid_proxy_config::RateLimit;

use super::authz::{Caller, Pattern};
use crate::telemetry::policy::{LimitScope, PolicyCounters};

/// Nanoseconds since the first time a limit was asked about: the buckets' clock.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Whether a request at `now` may take a token from a bucket whose theoretical arrival time is
/// `tat`, refilled one token per `interval` up to `burst` tokens: the new arrival time, or how
/// long until a token is there.
pub fn admit(tat: u64, now: u64, interval: u64, burst: u64) -> Result<u64, Duration> {
    let next = tat.max(now).saturating_add(interval);
    let tolerance = burst.saturating_mul(interval);
    let ahead = next - now;
    if ahead <= tolerance {
        Ok(next)
    } else {
        Err(Duration::from_nanos(ahead - tolerance))
    }
}

/// One token bucket.
#[derive(Debug)]
pub struct Bucket {
    tat: AtomicU64,
    interval_ns: u64,
    burst: u64,
}

impl Bucket {
    /// A full bucket of `burst` tokens refilled at `per_second`.
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self {
            tat: AtomicU64::new(0),
            interval_ns: 1_000_000_000 / u64::from(per_second.max(1)),
            burst: u64::from(burst.max(1)),
        }
    }

    /// Takes a token at `now` (from [`now_ns`]), or says how long until one is there.
    pub fn take(&self, now: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = admit(tat, now, self.interval_ns, self.burst)?;
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// A request the limit refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// When a token will be there.
    pub retry_after: Duration,
    /// Which bucket ran dry.
    pub scope: LimitScope,
}

/// The callers of one `perIdentity` entry.
#[derive(Debug)]
struct IdentityLimit {
    /// IDs listed whole, each with its own bucket.
    exact: Vec<(String, Bucket)>,
    /// Prefixes, whose callers share `shared`.
    prefixes: Vec<Pattern>,
    shared: Bucket,
}

/// The workload's rate limit, compiled.
#[derive(Debug)]
pub struct RateLimiter {
    pod: Bucket,
    per_identity: Vec<IdentityLimit>,
    pod_limited: Arc<AtomicU64>,
    identity_limited: Arc<AtomicU64>,
}

impl RateLimiter {
    /// Compiles `limit` of `policy`, its counters taken from `counters`.
    pub fn compile(limit: &RateLimit, policy: &str, counters: &PolicyCounters) -> Self {
        let per_identity = limit
            .per_identity
            .iter()
            .map(|entry| {
                let (exact, prefixes): (Vec<_>, Vec<_>) = entry
                    .identities
                    .iter()
                    .map(|id| Pattern::new(id))
                    .partition(|p| matches!(p, Pattern::Exact(_)));
                IdentityLimit {
                    exact: exact
                        .into_iter()
                        .filter_map(|p| match p {
                            Pattern::Exact(id) => Some(id),
                            _ => None,
                        })
                        .map(|id| (id, Bucket::new(entry.requests_per_second, entry.burst)))
                        .collect(),
                    prefixes,
                    shared: Bucket::new(entry.requests_per_second, entry.burst),
                }
            })
            .collect();
        Self {
            pod: Bucket::new(limit.requests_per_second, limit.burst),
            per_identity,
            pod_limited: counters.limited(policy, LimitScope::Pod),
            identity_limited: counters.limited(policy, LimitScope::Identity),
        }
    }

    /// Takes a token for a request of `caller` at `now`: from the caller's own bucket if an
    /// entry names it, then from the pod's.
    pub fn admit(&self, caller: Option<&Caller>, now: u64) -> Result<(), Limited> {
        let refused = |retry_after, scope, counter: &AtomicU64| {
            counter.fetch_add(1, Ordering::Relaxed);
            Limited { retry_after, scope }
        };
        if let Some(bucket) = caller.and_then(|caller| self.bucket_of(&caller.id)) {
            bucket
                .take(now)
                .map_err(|wait| refused(wait, LimitScope::Identity, &self.identity_limited))?;
        }
        self.pod
            .take(now)
            .map_err(|wait| refused(wait, LimitScope::Pod, &self.pod_limited))
    }

    fn bucket_of(&self, id: &str) -> Option<&Bucket> {
        self.per_identity.iter().find_map(|entry| {
            entry
                .exact
                .iter()
                .find(|(exact, _)| exact == id)
                .map(|(_, bucket)| bucket)
                .or_else(|| {
                    entry
                        .prefixes
                        .iter()
                        .any(|p| p.matches(id))
                        .then_some(&entry.shared)
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use braid_proxy_config::IdentityRateLimit;

    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_bucket_holds_its_burst_and_refills_at_its_rate() {
        // 50 per second: a token every 20 ms, 5 at most.
        let (interval, burst) = (20 * MS, 5);
        let mut tat = 0;
        let now = 1_000 * MS;
        for _ in 0..5 {
            tat = admit(tat, now, interval, burst).expect("within the burst");
        }
        assert_eq!(
            admit(tat, now, interval, burst),
            Err(Duration::from_millis(20)),
            "the sixth waits for one interval"
        );
        assert_eq!(
            admit(tat, now + 10 * MS, interval, burst),
            Err(Duration::from_millis(10))
        );
        let tat = admit(tat, now + 20 * MS, interval, burst).expect("one token refilled");
        assert!(admit(tat, now + 20 * MS, interval, burst).is_err());
        // Idle for long: full again, never more than the burst.
        let mut tat = tat;
        let later = now + 10_000 * MS;
        for _ in 0..5 {
            tat = admit(tat, later, interval, burst).expect("full again");
        }
        assert!(admit(tat, later, interval, burst).is_err());
    }

    #[test]
    fn a_bucket_admits_its_rate_over_a_second() {
        let bucket = Bucket::new(50, 1);
        let start = 5_000 * MS;
        // A request every 5 ms (200 per second) for one second.
        let served = (0..200)
            .filter(|i| bucket.take(start + i * 5 * MS).is_ok())
            .count();
        assert_eq!(served, 50);
    }

    #[test]
    fn callers_with_a_limit_of_their_own_are_held_to_it_and_to_the_pods() {
        let order = Caller::new("spiffe://cluster.local/ns/shop/sa/order".into());
        let loadgen = Caller::new("spiffe://cluster.local/ns/shop/sa/loadgen".into());
        let other = Caller::new("spiffe://cluster.local/ns/web/sa/front".into());
        let limit = RateLimit {
            requests_per_second: 100,
            burst: 4,
            per_identity: vec![IdentityRateLimit {
                identities: vec![
                    order.id.clone(),
                    "spiffe://cluster.local/ns/shop/sa/load*".into(),
                ],
                requests_per_second: 1,
                burst: 1,
            }],
        };
        let counters = PolicyCounters::default();
        let limiter = RateLimiter::compile(&limit, "shop/payment", &counters);
        let now = 9_000 * MS;
        assert_eq!(limiter.admit(Some(&order), now), Ok(()));
        let refused = limiter
            .admit(Some(&order), now)
            .expect_err("its own bucket is dry");
        assert_eq!(refused.scope, LimitScope::Identity);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(
            limiter.admit(Some(&loadgen), now),
            Ok(()),
            "a prefix bucket of its own"
        );
        assert!(limiter.admit(Some(&loadgen), now).is_err());
        // Two tokens of the pod's four are gone: two more, then the pod's bucket is dry.
        assert_eq!(limiter.admit(Some(&other), now), Ok(()));
        assert_eq!(limiter.admit(None, now), Ok(()));
        let refused = limiter
            .admit(None, now)
            .expect_err("the pod's bucket is dry");
        assert_eq!(refused.scope, LimitScope::Pod);
        assert_eq!(
            counters
                .limited("shop/payment", LimitScope::Pod)
                .load(Ordering::Relaxed),
            1
        );
        assert_eq!(
            counters
                .limited("shop/payment", LimitScope::Identity)
                .load(Ordering::Relaxed),
            2
        );
    }
}
