//! Client-side traffic settings shared by [`crate::MeshPolicy`] (for every call to the selected
//! workloads) and [`crate::MeshRoute`] rules (for the calls a rule matches).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Time limits on calls.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Limit on a whole request, retries included (e.g. `15s`). Unset: no limit.
    #[schemars(regex(pattern = crate::duration::PATTERN))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Limit on establishing a connection to an endpoint (default `1s`).
    #[schemars(regex(pattern = crate::duration::PATTERN))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Idle connections are closed after this long (default `1h`).
    #[schemars(regex(pattern = crate::duration::PATTERN))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
}

/// Retries of failed requests, bounded by a budget so that retries never multiply an outage.
#[derive(Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first attempt (0 to 10; default 2).
    #[schemars(range(max = 10))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Limit on each attempt (e.g. `2s`). Unset: only the request timeout applies.
    #[schemars(regex(pattern = crate::duration::PATTERN))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Which failures are retried: `5xx`, `gateway-error` (502, 503, 504), `connect-failure`,
    /// `reset`. Default: `connect-failure` and `gateway-error`. Only idempotent methods are
    /// retried after the request was sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<RetryOn>,
    /// Response statuses retried as well (e.g. `409`), whatever `on` says.
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, c >= 100 && c <= 599)").message("a status code is 100 to 599"))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_codes: Vec<u16>,
    /// How much extra load retries may add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

/// A failure that may be retried.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum RetryOn {
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// The connection could not be established.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection was reset before a response.
    #[serde(rename = "reset")]
    Reset,
}

/// The retry budget: retries may add at most `percent` of the request rate, plus a floor of
/// `minPerSecond` so that low-traffic services can still retry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries as a percentage of requests (0 to 100; default 20).
    #[schemars(range(max = 100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Retries always allowed per second (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_per_second: Option<u32>,
}

/// Limits on what one client proxy sends to the selected workloads; past them, requests fail fast
/// with 503 instead of queueing.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Connections open to the destination's endpoints, from each client proxy (default
    /// 1024). A request that needs another waits for one to free (see `maxPendingRequests`);
    /// HTTP/2 opens one per endpoint regardless, as it multiplexes. At least 1: no connection
    /// at all would fail every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Requests that may wait for a connection at `maxConnections`, each for the connect
    /// timeout at most (default 1024); past them a request fails at once with 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight (default 1024); at least 1, as none would fail every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<u32>,
}

/// Ejection of endpoints that keep failing, for a time that grows with each ejection.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx responses or connection failures that eject an endpoint (default 5).
    #[schemars(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<u32>,
    /// How long the first ejection lasts (default `30s`).
    #[schemars(regex(pattern = crate::duration::PATTERN))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// At most this percentage of endpoints is ejected at once (0 to 100; default 50).
    #[schemars(range(max = 100))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Faults the client proxy injects, for testing how callers cope.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Delay a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    /// Fail a share of requests without sending them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,
}

/// Delay a share of requests.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DelayFault {
    /// Percentage of requests delayed (0 to 100).
    #[schemars(range(max = 100))]
    pub percent: u32,
    /// How long (e.g. `500ms`).
    #[schemars(regex(pattern = crate::duration::PATTERN))]
    pub duration: String,
}

/// Fail a share of requests with an HTTP status.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AbortFault {
    /// Percentage of requests failed (0 to 100).
    #[schemars(range(max = 100))]
    pub percent: u32,
    /// The HTTP status returned (200 to 599).
    #[schemars(range(min = 200, max = 599))]
    pub status: u16,
}
