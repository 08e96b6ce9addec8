//! The client side's resilience counters: second attempts by kind, retries the budget
//! refused, requests the circuit breaker refused, endpoints ejected. Atomics bumped on the
//! request path (only when something is retried, refused or ejected), rendered when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a request went to an endpoint once more.
#[derive(Clone, Copy, Debug)]
pub enum Again {
    /// The attempt sent nothing (connect refused, timed out, TLS): failover, no budget.
    Failover = 0,
    /// A retry under the retry policy, taken from the budget.
    Retry = 1,
    /// A retry the policy allowed and the budget refused: the failure stood.
    BudgetExhausted = 2,
}

const AGAIN: [&str; 3] = ["failover", "retry", "budget_exhausted"];

/// The counters.
#[derive(Debug, Default)]
pub struct ResilienceCounters {
    again: [AtomicU64; 3],
    overloaded: AtomicU64,
    ejections: AtomicU64,
}

impl ResilienceCounters {
    /// A second attempt, or one refused by the budget.
    pub fn again(&self, why: Again) {
        self.again[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The circuit breaker refused a request.
    pub fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }

    /// An endpoint was ejected.
    pub fn ejected(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends their Prometheus text to `out`.
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP braid_proxy_retries_total Outbound requests sent again: failover (nothing was \
             sent), retry (the retry policy, within its budget), budget_exhausted (a retry the \
             budget refused).\n# TYPE braid_proxy_retries_total counter"
        );
        for (kind, counter) in AGAIN.iter().zip(&self.again) {
            let _ = writeln!(
                out,
                "braid_proxy_retries_total{{kind=\"{kind}\"}} {}",
                get(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP braid_proxy_circuit_breaker_open_total Outbound requests refused because \
             maxRequests were in flight.\n# TYPE braid_proxy_circuit_breaker_open_total counter\n\
             braid_proxy_circuit_breaker_open_total {}\n\
             # HELP braid_proxy_outlier_ejections_total Endpoints ejected by outlier detection.\n\
             # TYPE braid_proxy_outlier_ejections_total counter\n\
             braid_proxy_outlier_ejections_total {}",
            get(&self.overloaded),
            get(&self.ejections)
        );
    }
}
