//! What the proxy records: the data path's counters ([`metrics`]) and the inbound policy's
//! ([`policy`]). Istio's metrics, traces and access logs will live here, fed by
//! [`crate::pipeline::RequestRecord`].

pub mod metrics;
pub mod policy;
