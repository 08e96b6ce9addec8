//! `Mesh`: the one cluster-wide object, named `default`, holding the mesh's settings.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::policy::MtlsMode;

/// Cluster-wide settings of the mesh: trust domain, certificate lifetimes, the default mTLS mode,
/// the proxy's image and resources, and the tracing collector. Exactly one exists, named `default`.
#[derive(CustomResource, KubeSchema, Clone, Debug, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "braid.dev",
    version = "v1alpha1",
    kind = "Mesh",
    plural = "meshes",
    category = "braid",
    status = "MeshStatus",
    validation = Rule::new("self.metadata.name == 'default'").message("the Mesh must be named default"),
    printcolumn(name = "Trust-Domain", type_ = "string", json_path = ".spec.trustDomain"),
    printcolumn(name = "CA-Expires", type_ = "string", json_path = ".status.caExpires"),
    printcolumn(name = "Workloads", type_ = "integer", json_path = ".status.workloads"),
    printcolumn(name = "Synced", type_ = "string", json_path = ".status.synced"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// The SPIFFE trust domain of every workload identity (default `cluster.local`).
    #[serde(default = "default_trust_domain")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9.-]+$')").message("a trust domain is lower-case letters, digits, '.' and '-'"))]
    pub trust_domain: String,
    /// Lifetime of workload certificates; they are renewed at half of it (default `24h`).
    #[serde(default = "default_certificate_lifetime")]
    #[schemars(regex(pattern = crate::duration::PATTERN))]
    pub certificate_lifetime: String,
    /// Lifetime of a root CA the operator creates (default `8760h`, a year). A root supplied in
    /// Secret `braid-system/braid-ca` is used as it is.
    #[serde(default = "default_ca_lifetime")]
    #[schemars(regex(pattern = crate::duration::PATTERN))]
    pub ca_lifetime: String,
    /// mTLS mode of workloads no MeshPolicy sets one for (default `PERMISSIVE`: meshed clients
    /// always use mTLS, and plaintext from outside the mesh is still accepted).
    #[serde(default)]
    pub default_mtls_mode: MtlsMode,
    /// Who may call workloads whose MeshPolicy has no authorization rules (or none applies):
    /// `allow` (default: everyone the mTLS mode admits), `mesh` (any caller with a mesh
    /// identity), `namespace` (mesh callers of the workload's own namespace), `deny` (nobody;
    /// kubelet probes still pass, through the proxy's admin port).
    #[serde(default)]
    pub default_authorization: DefaultAuthorization,
    /// The sidecar proxy injected into meshed pods.
    #[serde(default)]
    pub proxy: ProxySettings,
    /// Where proxies send traces. Unset: tracing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSettings>,
}

/// What workloads without authorization rules allow.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, Serialize, schemars::JsonSchema, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAuthorization {
    /// Everyone the mTLS mode admits.
    #[default]
    Allow,
    /// Any caller with a mesh identity.
    Mesh,
    /// Mesh callers of the workload's own namespace.
    Namespace,
    /// Nobody.
    Deny,
}

/// The defaults a Mesh object written as `spec: {}` gets: the same values serde fills in.
impl Default for MeshSpec {
    fn default() -> Self {
        Self {
            trust_domain: default_trust_domain(),
            certificate_lifetime: default_certificate_lifetime(),
            ca_lifetime: default_ca_lifetime(),
            default_mtls_mode: MtlsMode::default(),
            default_authorization: DefaultAuthorization::default(),
            proxy: ProxySettings::default(),
            tracing: None,
        }
    }
}

/// The injected proxy's image and resources.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxySettings {
    /// Image of the proxy and of the init container (default `braid.local/braid-proxy:dev`).
    #[serde(default = "default_proxy_image")]
    pub image: String,
    /// Resources of the proxy container.
    #[serde(default)]
    pub resources: Resources,
    /// Log filter of the proxy (default `info`).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Deadlines and caps of the proxy's listeners; each unset field keeps the proxy's default.
    #[serde(default, skip_serializing_if = "ProxyLimits::is_empty")]
    pub limits: ProxyLimits,
}

/// Deadlines and caps that keep a careless or hostile client from holding a proxy's descriptors
/// and memory, on both its listeners. They reach running proxies with their next config.
#[derive(Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyLimits {
    /// Time a client has to send a whole HTTP/1.1 request head, from its first byte (for a
    /// connection's first request, from the connection's start); past it the connection is
    /// closed (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::duration::PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms')").message("requestHeadTimeout must be at least 1ms"))]
    pub request_head_timeout: Option<String>,
    /// Time a client connection may stay idle, with no request under way and no byte either
    /// way, before it is closed (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = crate::duration::PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1ms')").message("idleTimeout must be at least 1ms"))]
    pub idle_timeout: Option<String>,
    /// Connections each listener of a proxy carries at once; past it new connections are
    /// closed at once, not queued (default 10000, lowered by the proxy to what its
    /// file-descriptor limit allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
}

impl ProxyLimits {
    /// Whether every field is unset.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            image: default_proxy_image(),
            resources: Resources::default(),
            log_level: default_log_level(),
            limits: ProxyLimits::default(),
        }
    }
}

/// Requests and limits of the proxy container, as Kubernetes quantities.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU request (default `10m`).
    #[serde(default = "default_cpu_request")]
    pub cpu_request: String,
    /// Memory request (default `16Mi`).
    #[serde(default = "default_memory_request")]
    pub memory_request: String,
    /// Memory limit (default `64Mi`). There is no CPU limit, by design: throttling a proxy adds
    /// latency to every request of the pod.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: String,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_request: default_cpu_request(),
            memory_request: default_memory_request(),
            memory_limit: default_memory_limit(),
        }
    }
}

/// The trace collector.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TracingSettings {
    /// Collector address, `host:port` (OTLP over HTTP).
    pub collector: String,
    /// Percentage of requests traced (0 to 100; default 1).
    #[schemars(range(max = 100))]
    #[serde(default = "default_sampling_percent")]
    pub sampling_percent: u32,
}

/// What the operator reports about the mesh.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `Ready` (the CA issues certificates) and `Programmed` (every meshed proxy
    /// runs its latest config).
    #[serde(default)]
    #[schemars(schema_with = "crate::condition::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// When the root CA expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_expires: Option<String>,
    /// Meshed workloads in the cluster.
    #[serde(default)]
    pub workloads: u32,
    /// Meshed proxies that run the latest config the operator wrote, out of those running:
    /// `5/5`. The `Programmed` condition names those that lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<String>,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_certificate_lifetime() -> String {
    "24h".into()
}
fn default_ca_lifetime() -> String {
    "8760h".into()
}
fn default_proxy_image() -> String {
    "braid.local/braid-proxy:dev".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_cpu_request() -> String {
    "10m".into()
}
fn default_memory_request() -> String {
    "16Mi".into()
}
fn default_memory_limit() -> String {
    "64Mi".into()
}
fn default_sampling_percent() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_what_an_empty_spec_deserializes_to() {
        let empty: MeshSpec = serde_json::from_str("{}").expect("an empty spec is valid");
        assert_eq!(MeshSpec::default(), empty);
        assert_eq!(empty.trust_domain, "cluster.local");
    }
}
