//! The client side's resilience counters: second attempts by kind, retries the budget
//! refused, requests the circuit breaker refused, endpoints ejected (and how many are out
//! now). Atomics bumped on the request path (only when something is retried, refused or
//! ejected), rendered when scraped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::routing::Table;

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

    /// The circuit breaker refused a request (any of its limits).
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
            "# HELP braid_proxy_circuit_breaker_open_total Outbound requests the circuit \
             breaker refused: maxRequests in flight, maxPendingRequests waiting for a connection, \
             or none free under maxConnections in time.\n# TYPE braid_proxy_circuit_breaker_open_total counter\n\
             braid_proxy_circuit_breaker_open_total {}\n\
             # HELP braid_proxy_outlier_ejections_total Endpoints ejected by outlier detection.\n\
             # TYPE braid_proxy_outlier_ejections_total counter\n\
             braid_proxy_outlier_ejections_total {}",
            get(&self.overloaded),
            get(&self.ejections)
        );
    }
}

/// Appends, for each destination of `table` with outlier detection, how many of its endpoints
/// are ejected now (Envoy's `ejections_active`): the counter above says how often, this says
/// how much of a service is out at the moment.
pub fn render_ejected_now(table: &Table, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP braid_proxy_outlier_ejected_endpoints Endpoints outlier detection keeps out now, \
         by destination.\n# TYPE braid_proxy_outlier_ejected_endpoints gauge"
    );
    for destination in &table.destinations {
        if destination.policy.outlier_detection.is_none() {
            continue;
        }
        let mut ejected: Vec<SocketAddr> = destination
            .ports
            .iter()
            .flat_map(|port| &port.endpoints)
            .filter(|endpoint| endpoint.stats.health.is_ejected())
            .map(|endpoint| endpoint.addr)
            .collect();
        ejected.sort_unstable();
        ejected.dedup();
        let _ = writeln!(
            out,
            "braid_proxy_outlier_ejected_endpoints{{destination=\"{}\"}} {}",
            destination.name,
            ejected.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_proxy_config::{OutlierDetection, ProxyConfig};

    #[test]
    fn the_endpoints_ejected_now_are_counted_by_destination() {
        let document = serde_json::json!({
            "version": 1,
            "workload": {"namespace": "shop", "name": "order",
                         "identity": "spiffe://cluster.local/ns/shop/sa/order"},
            "inbound": {"mtlsMode": "STRICT"},
            "destinations": [
                {"name": "payment.shop", "clusterIps": ["10.96.0.10"],
                 "ports": [
                     {"port": 80, "endpoints": [{"ip": "10.244.0.5", "port": 8080},
                                                {"ip": "10.244.0.6", "port": 8080}]},
                     {"port": 81, "endpoints": [{"ip": "10.244.0.5", "port": 8080}]}]},
                {"name": "user.shop", "clusterIps": ["10.96.0.11"],
                 "ports": [{"port": 80, "endpoints": [{"ip": "10.244.0.7", "port": 8080}]}]}
            ]
        });
        let mut config = ProxyConfig::from_json(document.to_string().as_bytes()).expect("valid");
        config.destinations[0].policy.outlier_detection = Some(OutlierDetection {
            consecutive_errors: 1,
            base_ejection_ms: 30_000,
            max_ejection_percent: 100,
        });
        let table = Table::compile(&config).expect("compiles");
        let rendered = || {
            let mut out = String::new();
            render_ejected_now(&table, &mut out);
            out
        };
        assert!(
            rendered().contains(
                "braid_proxy_outlier_ejected_endpoints{destination=\"payment.shop\"} 0\n"
            )
        );
        let payment = &table.destinations[0];
        let settings = payment.policy.outlier_detection.clone().expect("set");
        let first = &payment.ports[0].endpoints[0];
        assert!(first.stats.health.failed(&settings, || true).is_some());
        let text = rendered();
        // One address, counted once though two ports list it; no line for user.shop, which
        // has no outlier detection.
        assert!(
            text.contains(
                "braid_proxy_outlier_ejected_endpoints{destination=\"payment.shop\"} 1\n"
            ),
            "{text}"
        );
        assert!(!text.contains("user.shop"), "{text}");
    }
}
