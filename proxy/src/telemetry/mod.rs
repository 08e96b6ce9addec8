//! What the proxy records: the data path's counters ([`metrics`]), the inbound policy's
//! ([`policy`]) and the client side's retries, breakers and ejections ([`resilience`]). Istio's metrics, traces and access logs will live here, fed by
//! [`crate::pipeline::RequestRecord`].

pub mod metrics;
pub mod policy;
pub mod resilience;
