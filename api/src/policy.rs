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
    printcolumn(name = "Authz", type_ = "string", json_path = ".status.authorization"),
    printcolumn(name = "Synced", type_ = "string", json_path = ".status.synced"),
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
#[x_kube(validation = Rule::new("!has(self.retries) || !has(self.retries.perTryTimeout) || !has(self.timeouts) || !has(self.timeouts.request) || duration(self.retries.perTryTimeout) <= duration(self.timeouts.request)").message("retries.perTryTimeout must not exceed timeouts.request").field_path(".retries.perTryTimeout"))]
#[serde(rename_all = "camelCase")]
pub struct MeshPolicySpec {
    /// Pods this policy applies to, by label. Empty or unset: every meshed pod of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// How the selected workloads accept connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MtlsSettings>,
    /// Who may call the selected workloads, in Istio's order: a request (or TCP connection)
    /// that a `DENY` rule matches is refused; else, if there are `ALLOW` rules, one must match.
    /// An empty list denies everything. Unset, or only `DENY` rules of which none matched: the
    /// Mesh's `defaultAuthorization` decides.
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Vec<AuthorizationRule>>,
    /// `Enforce` (default): what the rules deny is refused (HTTP 403, gRPC PERMISSION_DENIED,
    /// a TCP connection closed). `DryRun`: nothing is refused; what would be is logged by the
    /// proxy and counted (`braid_proxy_inbound_authz_total{decision="would_deny"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_mode: Option<AuthorizationMode>,
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

/// Whether authorization decisions are enforced or only logged and counted.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Denied requests and connections are refused.
    #[default]
    Enforce,
    /// Nothing is refused; denials are logged and counted.
    DryRun,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum RuleAction {
    /// The request is allowed, unless a `DENY` rule matches it too.
    #[default]
    Allow,
    /// The request is refused.
    Deny,
}

/// One rule: it matches a request that matches `from` and `to` (an unset part matches all).
/// A rule with `to.paths` or `to.methods` is about HTTP: as an `ALLOW` rule it never matches a
/// TCP connection; as a `DENY` rule it refuses TCP connections its other fields match.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// `ALLOW` (default) or `DENY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<RuleAction>,
    /// Who calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Source>,
    /// What is called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Target>,
}

/// Callers, by mTLS identity. Plaintext callers have no identity and match no `from`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// SPIFFE IDs, e.g. `spiffe://cluster.local/ns/shop/sa/order`; a trailing `*` matches a
    /// prefix (`spiffe://cluster.local/ns/shop/*`), a lone `*` any caller with an identity.
    #[schemars(length(max = 64), inner(length(max = 512)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(i, i == '*' || i.matches('^spiffe://[^*]+[*]?$'))").message("an identity is a spiffe:// ID, a prefix of one ending in '*', or '*'"))]
    pub identities: Vec<String>,
    /// Namespaces of the callers' identities.
    #[schemars(length(max = 64), inner(length(max = 63)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("a namespace is a DNS label: lower-case letters, digits and '-'"))]
    pub namespaces: Vec<String>,
}

/// What is called. HTTP paths and methods apply only to HTTP traffic.
#[derive(Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Request paths, without the query; a trailing `*` matches a prefix (`/api/*`), a lone
    /// `*` any path.
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(p, p == '*' || p.matches('^/[^*]*[*]?$'))").message("a path starts with '/' and may end in '*'"))]
    pub paths: Vec<String>,
    /// HTTP methods, e.g. `GET` (any case).
    #[schemars(length(max = 16), inner(length(max = 32)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(m, m.matches('^[A-Za-z]+$'))").message("a method is letters, e.g. GET"))]
    pub methods: Vec<String>,
    /// Ports of the workload (1 to 65535).
    #[schemars(length(max = 32))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports are 1 to 65535"))]
    pub ports: Vec<u32>,
}

/// A token bucket per pod, for HTTP requests and gRPC calls; past it the proxy answers 429
/// with `Retry-After` (gRPC: RESOURCE_EXHAUSTED).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second (at least 1).
    #[schemars(range(min = 1))]
    pub requests_per_second: u32,
    /// Requests allowed in a burst above the rate (default: one second's worth).
    #[schemars(range(min = 1))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Limits of their own for some callers, checked before the pod's (Linkerd's identity
    /// overrides); the first entry that names the caller applies.
    #[schemars(length(max = 16))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_identity: Vec<IdentityRateLimit>,
}

/// A rate limit for some callers.
#[derive(Clone, Debug, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRateLimit {
    /// SPIFFE IDs; each ID listed whole gets a bucket of its own, the callers a prefix ending
    /// in `*` matches share one.
    #[schemars(length(min = 1, max = 64), inner(length(max = 512)))]
    #[x_kube(validation = Rule::new("self.all(i, i == '*' || i.matches('^spiffe://[^*]+[*]?$'))").message("an identity is a spiffe:// ID, a prefix of one ending in '*', or '*'"))]
    pub identities: Vec<String>,
    /// Sustained requests per second of each (at least 1).
    #[schemars(range(min = 1))]
    pub requests_per_second: u32,
    /// Burst of each (default: one second's worth).
    #[schemars(range(min = 1))]
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
    /// `Accepted` (understood), `Programmed` (the proxies concerned run it), `Ready` (in effect
    /// and programmed) and, with authorization rules, `ResolvedRefs`.
    #[serde(default)]
    #[schemars(schema_with = "crate::condition::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Workloads this policy is in effect on.
    #[serde(default)]
    pub workloads: u32,
    /// The mTLS mode in effect (the policy's, or the Mesh default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls_mode: Option<MtlsMode>,
    /// The authorization in effect, in a few words: `3 rules`, `3 rules, dry-run`, `deny all`
    /// (an empty list), or the Mesh default (`default allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<String>,
    /// Proxies concerned that run the latest config the operator wrote, out of those running:
    /// `5/5`. The `Programmed` condition names those that lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<String>,
}
