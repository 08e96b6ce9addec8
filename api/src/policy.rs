//! `MeshPolicy`: how selected workloads accept traffic (server side) and how every meshed client
//! calls the Services backed by them (client side).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::traffic::{CircuitBreaker, Fault, OutlierDetection, Retries, Timeouts};

/// Policy for the workloads of this namespace that `selector` selects. Where two policies select
/// the same workload, the one with the more specific selector wins, then the older one, then the
/// one whose name sorts first; the other reports `Ready=False` with reason `Overridden`.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "braid.dev",
    version = "v1alpha1",
    kind = "MeshPolicy",
    namespaced,
    shortname = "mp",
    category = "braid",
    status = "MeshPolicyStatus",
    printcolumn(name = "mTLS", type_ = "string", json_path = ".status.mtlsMode"),
    printcolumn(name = "Workloads", type_ = "integer", json_path = ".status.workloads"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// Pods this policy applies to, by label. Empty or unset: every meshed pod of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// How the selected workloads accept connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSettings>,
    /// Who may call the selected workloads. Unset: everyone the mTLS mode admits. Set: only
    /// requests some rule allows (an empty list denies everything).
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Vec<AuthorizationRule>>,
    /// Requests per second the selected workloads accept, per pod; past it they answer 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// How clients pick an endpoint of the selected workloads (default `P2C-EWMA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Time limits on calls to the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries of failed calls to the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Limits past which clients fail fast instead of queueing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Faults clients inject into calls to the selected workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// mTLS settings of the selected workloads.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MtlsSettings {
    /// `STRICT`: only mTLS from mesh peers. `PERMISSIVE`: mTLS or plaintext. `DISABLE`: plaintext
    /// only is expected. Unset: the Mesh's `defaultMtlsMode`.
    pub mode: MtlsMode,
}

/// How a workload accepts connections.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only mTLS connections from mesh peers are accepted.
    Strict,
    /// mTLS and plaintext connections are accepted.
    #[default]
    Permissive,
    /// Connections are not expected to use mTLS; plaintext is accepted.
    Disable,
}

/// One allow rule: a request is allowed when it matches `from` and `to` (an unset part matches all).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Who calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Source>,
    /// What is called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Target>,
}

/// Callers, by mTLS identity. Plaintext callers have no identity and match no `from`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// SPIFFE IDs, e.g. `spiffe://cluster.local/ns/shop/sa/order`; a trailing `*` matches a prefix.
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Namespaces of the callers' identities.
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// What is called. HTTP paths and methods apply only to HTTP traffic.
#[derive(Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Request paths; a trailing `*` matches a prefix.
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods, e.g. `GET`.
    #[schemars(length(max = 16))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Ports of the workload (1 to 65535).
    #[schemars(length(max = 32))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports are 1 to 65535"))]
    pub ports: Vec<u32>,
}

/// A token bucket per pod.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second (at least 1).
    #[schemars(range(min = 1))]
    pub requests_per_second: u32,
    /// Requests allowed in a burst above the rate (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// How a client chooses among a Service's endpoints.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum LoadBalancer {
    /// Each endpoint in turn.
    #[serde(rename = "ROUND_ROBIN")]
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    #[serde(rename = "LEAST_CONN")]
    LeastConn,
    /// An endpoint at random.
    #[serde(rename = "RANDOM")]
    Random,
    /// The better of two random endpoints by peak-EWMA latency times load.
    #[default]
    #[serde(rename = "P2C-EWMA")]
    P2cEwma,
}

/// What the operator reports about a policy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (understood) and `Ready` (in effect on at least one workload).
    #[serde(default)]
    #[schemars(schema_with = "crate::condition::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Workloads this policy is in effect on.
    #[serde(default)]
    pub workloads: u32,
    /// The mTLS mode in effect (the policy's, or the Mesh default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls_mode: Option<MtlsMode>,
}
