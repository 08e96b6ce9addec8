//! The operator's Prometheus metrics: passes, failures by kind, pass duration, writes, the root
//! CA's expiry and the number of meshed workloads. Served on `/metrics` by `main`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::run::PassSummary;

/// Label of a failure counter: the error's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::kind`].
    pub error: String,
}

/// Label of the read-back counter: what the proxy answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadbackLabels {
    /// `in_sync`, `behind` or `unreachable`.
    pub result: &'static str,
}

/// Every metric, registered in [`Metrics::registry`].
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    passes: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    config_writes: Counter,
    certificates_issued: Counter,
    deletions: Counter,
    ca_expiry: Gauge,
    leaf_expiry: Gauge,
    workloads: Gauge,
    readbacks: Family<ReadbackLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("braid_operator");
        let passes = Counter::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let config_writes = Counter::default();
        let certificates_issued = Counter::default();
        let deletions = Counter::default();
        let ca_expiry = Gauge::default();
        let leaf_expiry = Gauge::default();
        let workloads = Gauge::default();
        registry.register("reconcile_passes", "Reconcile passes run", passes.clone());
        registry.register(
            "reconcile_failures",
            "Reconcile passes failed, by error kind",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile pass",
            duration.clone(),
        );
        registry.register(
            "config_writes",
            "ConfigMaps written because proxy.json changed",
            config_writes.clone(),
        );
        registry.register(
            "certificates_issued",
            "Workload certificates issued or renewed",
            certificates_issued.clone(),
        );
        registry.register(
            "deletions",
            "Objects deleted because their workload is gone",
            deletions.clone(),
        );
        registry.register(
            "ca_expiry_timestamp_seconds",
            "When the mesh root CA expires",
            ca_expiry.clone(),
        );
        registry.register(
            "leaf_earliest_expiry_timestamp_seconds",
            "When the first workload certificate in force expires (renewal is due at half its life)",
            leaf_expiry.clone(),
        );
        registry.register("workloads", "Meshed workloads", workloads.clone());
        let readbacks = Family::<ReadbackLabels, Counter>::default();
        registry.register(
            "proxy_readbacks",
            "Proxies' /config read back, by whether they ran the latest config",
            readbacks.clone(),
        );
        Self {
            registry,
            passes,
            failures,
            duration,
            config_writes,
            certificates_issued,
            deletions,
            ca_expiry,
            leaf_expiry,
            workloads,
            readbacks,
        }
    }
}

impl Metrics {
    /// Records one pass.
    pub fn record_pass(&self, took: Duration, error: Option<&str>, summary: &PassSummary) {
        self.passes.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.failures
                .get_or_create(&ErrorLabels { error: kind.into() })
                .inc();
            return;
        }
        self.config_writes.inc_by(summary.written.configs as u64);
        self.certificates_issued
            .inc_by(summary.written.certificates as u64);
        self.deletions.inc_by(summary.written.deleted as u64);
        self.ca_expiry.set(summary.ca_not_after);
        if let Some(expiry) = summary.written.earliest_leaf_expiry {
            self.leaf_expiry.set(expiry);
        }
        self.workloads
            .set(i64::try_from(summary.workloads).unwrap_or(i64::MAX));
    }

    /// Records one proxy read back.
    pub fn record_readback(&self, result: &'static str) {
        self.readbacks
            .get_or_create(&ReadbackLabels { result })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
