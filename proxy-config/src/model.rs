//! The document's types. Durations are whole milliseconds (`*_ms`), so the proxy never parses
//! duration strings; identities are SPIFFE IDs; lists are sorted by the operator so that output
//! is deterministic.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::inbound::{AuthorizationMode, AuthorizationRule, DefaultAuthorization, RateLimit};

/// One workload's complete proxy configuration.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Version of this document's format; this crate reads versions [`crate::MIN_VERSION`] to
    /// [`crate::VERSION`].
    pub version: u32,
    /// Features of the document a proxy must enforce to load it (version 2 on): a proxy that
    /// does not know one refuses the document whole rather than ignore a field that restricts
    /// access ([`crate::skew`]). The operator lists what the document uses, from
    /// [`crate::FEATURES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Who this proxy is.
    pub workload: Workload,
    /// How this workload accepts traffic.
    pub inbound: Inbound,
    /// Set when this workload's destinations are not in this file but in `destinations.json`
    /// beside it: the namespace's ConfigMap `braid-destinations`, projected into the same
    /// volume, one file for every workload of the namespace, so that a change to the
    /// destinations is one write instead of one per workload ([`crate::split`]). `destinations`
    /// is then empty here. Always required (`requires` lists `sharedDestinations`): a proxy
    /// that ignored it would run with no destinations at all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_destinations: bool,
    /// Every meshed Service this workload may call. Traffic to anything else passes through.
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// Ports where the server speaks first (databases, SMTP): never wait for protocol detection.
    #[serde(default)]
    pub opaque_ports: Vec<u16>,
    /// Where traces go; unset, tracing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
    /// Deadlines and caps of the proxy's listeners; omitted when they are Braid's defaults (a
    /// proxy older than this field then reads the document as before).
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: Limits,
}

/// Deadlines and caps that keep a careless or hostile client from holding the proxy's
/// descriptors and memory. They apply to both listeners (inbound 15006, outbound 15001).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Time a client has to send a whole HTTP/1.1 request head, counted from the head's first
    /// byte (for a connection's first request, from its start); past it the connection is
    /// closed. Default 10 000 (10 s).
    #[serde(default = "default_request_head_timeout_ms")]
    pub request_head_timeout_ms: u64,
    /// Time a client connection may stay idle (no request under way and no byte either way)
    /// before it is closed. Default 3 600 000 (1 h, Envoy's).
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Connections each listener carries at once; past it a new connection is closed at once,
    /// never queued. Default 10 000, lowered at start to what the process's file-descriptor
    /// limit allows.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_head_timeout_ms: default_request_head_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_request_head_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    3_600_000
}
fn default_max_connections() -> u32 {
    10_000
}

/// The workload this proxy serves.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Namespace of the workload.
    pub namespace: String,
    /// Name of the workload (the `braid.dev/workload` label).
    pub name: String,
    /// The SPIFFE ID its certificate carries.
    pub identity: String,
}

/// How the workload accepts traffic.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    /// Whether plaintext is accepted.
    pub mtls_mode: MtlsMode,
    /// Authorization rules, in Istio's order: a matching `DENY` rule denies; else, when there
    /// are `ALLOW` rules, one must match. Unset: [`Inbound::default_authorization`] decides;
    /// empty: nothing is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Vec<AuthorizationRule>>,
    /// What is allowed where `authorization` is unset, or holds only `DENY` rules and none
    /// matched: the Mesh's `defaultAuthorization`. Default `allow`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub default_authorization: DefaultAuthorization,
    /// `Enforce` (default): denied requests are refused. `DryRun`: decisions are made, logged
    /// and counted, and nothing is refused.
    #[serde(default, skip_serializing_if = "is_default")]
    pub authorization_mode: AuthorizationMode,
    /// Per-pod request rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The MeshPolicy in effect, `namespace/name`, for logs and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// How a workload accepts connections.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only mTLS from mesh peers.
    Strict,
    /// mTLS or plaintext.
    #[default]
    Permissive,
    /// Plaintext expected.
    Disable,
}

/// A meshed Service this workload may call.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// `<service>.<namespace>`, unique in the document; routes name backends by it.
    pub name: String,
    /// The Service's cluster IPs (none for a headless Service).
    #[serde(default)]
    pub cluster_ips: Vec<IpAddr>,
    /// The Service's ports and, for each, the endpoints behind it.
    pub ports: Vec<DestinationPort>,
    /// How clients call this destination; omitted when it is Braid's defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub policy: ClientPolicy,
    /// MeshRoute rules for this destination, tried in order; no match: the destination itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

pub(crate) fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// One port of a destination.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPort {
    /// The Service port clients call.
    pub port: u16,
    /// The protocol, from the port's `appProtocol` or name; `detect` sniffs it.
    #[serde(default)]
    pub protocol: Protocol,
    /// The ready endpoints behind this port.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// An application protocol.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Sniff HTTP/1.1 and HTTP/2 from the first bytes; otherwise opaque TCP.
    #[default]
    Detect,
    /// HTTP/1.1.
    Http,
    /// HTTP/2 (and gRPC).
    Http2,
    /// Opaque TCP: never sniffed.
    Tcp,
}

/// A ready endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Pod IP.
    pub ip: IpAddr,
    /// Target port on the pod.
    pub port: u16,
    /// SPIFFE ID the endpoint's proxy must present; unset, the endpoint is not meshed and is
    /// called in plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// Client-side behaviour towards a destination.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientPolicy {
    /// Endpoint choice.
    pub load_balancer: LoadBalancer,
    /// Connection establishment limit.
    pub connect_timeout_ms: u64,
    /// Whole-request limit, retries included; unset, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Idle pooled connections are closed after this.
    pub idle_timeout_ms: u64,
    /// Retries; unset, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Fail-fast limits.
    pub circuit_breaker: CircuitBreaker,
    /// Ejection of failing endpoints; unset, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Injected faults; unset, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// The MeshPolicy this comes from, `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            load_balancer: LoadBalancer::default(),
            connect_timeout_ms: 1_000,
            request_timeout_ms: None,
            idle_timeout_ms: 3_600_000,
            retries: None,
            circuit_breaker: CircuitBreaker::default(),
            outlier_detection: None,
            fault: None,
            source: None,
        }
    }
}

/// Endpoint choice.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum LoadBalancer {
    /// Each in turn.
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    /// Fewest requests in flight.
    #[serde(rename = "LEAST_CONN")]
    LeastConn,
    /// Uniformly at random.
    #[serde(rename = "RANDOM")]
    Random,
    /// Better of two random choices by peak-EWMA latency × load.
    #[default]
    #[serde(rename = "P2C-EWMA")]
    P2cEwma,
}

/// Retries.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Per-attempt limit; unset, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Retry any 5xx.
    pub on_5xx: bool,
    /// Retry 502, 503, 504.
    pub on_gateway_error: bool,
    /// Retry connection failures.
    pub on_connect_failure: bool,
    /// Retry resets before a response.
    pub on_reset: bool,
    /// Retry these response statuses too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_statuses: Vec<u16>,
    /// Retries may add this percentage of the request rate…
    pub budget_percent: u32,
    /// …plus this many per second.
    pub budget_min_per_second: u32,
}

/// Fail-fast limits.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Open connections.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
        }
    }
}

/// Outlier ejection.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures that eject.
    pub consecutive_errors: u32,
    /// First ejection length; doubles with each further ejection.
    pub base_ejection_ms: u64,
    /// Most endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
}

/// Injected faults.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// Delay `delay_percent` of requests by `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    /// Answer `abort_percent` of requests with `status` without sending them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,
}

/// A delay fault.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DelayFault {
    /// Share of requests, percent.
    pub percent: u32,
    /// The delay.
    pub duration_ms: u64,
}

/// An abort fault.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AbortFault {
    /// Share of requests, percent.
    pub percent: u32,
    /// HTTP status answered.
    pub status: u16,
}

/// A MeshRoute rule.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Any of these must fit; empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Weighted backends.
    pub backends: Vec<WeightedBackend>,
    /// Whole-request limit; unset, the destination policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries; unset, the destination policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Faults; unset, the destination policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// Conditions on a request; all that are set must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Path condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// Method, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header conditions (names lower case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A header condition.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    /// The value condition.
    pub value: StringMatch,
}

/// A string condition.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", tag = "type", content = "value")]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Path prefix at a `/` boundary.
    Prefix(String),
    /// Anchored regular expression.
    Regex(String),
}

/// A weighted backend: another destination of this document.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WeightedBackend {
    /// The [`Destination::name`] of the backend.
    pub destination: String,
    /// Port on the backend; unset, the port the client called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Relative share.
    pub weight: u32,
}

/// Trace export.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// Collector `host:port`.
    pub collector: String,
    /// Sampled share, percent.
    pub sampling_percent: u32,
}
