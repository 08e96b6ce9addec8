//! Braid's Kubernetes API, group `braid.dev`, version `v1alpha1`: the custom resources users write
//! ([`Mesh`], [`MeshPolicy`], [`MeshRoute`]) and their status. The CRDs in `config/crd/` are
//! generated from these types by the operator's `crdgen` binary, so every doc comment on a field
//! here is the description `kubectl explain` shows.
//!
//! Data flow: users `kubectl apply` these objects; the operator reads them and renders each
//! workload's `proxy.json` (the `braid-proxy-config` crate); the proxy never sees these types.

// kube's derive takes one `printcolumn(..)` per column; clippy reads the repeats as duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod condition;
pub mod duration;
mod mesh;
mod policy;
pub mod prose;
mod route;
mod traffic;

pub use mesh::{
    DefaultAuthorization, Mesh, MeshSpec, MeshStatus, ProxyLimits, ProxySettings, Resources,
    TracingSettings,
};
pub use policy::{
    AuthorizationMode, AuthorizationRule, IdentityRateLimit, LoadBalancer, MeshPolicy,
    MeshPolicySpec, MeshPolicyStatus, MtlsMode, MtlsSettings, RateLimit, RuleAction, Source,
    Target,
};
pub use route::{
    Backend, HeaderMatch, HttpMethod, MatchType, MeshRoute, MeshRouteSpec, MeshRouteStatus,
    PathMatch, RouteMatch, RouteRule,
};
pub use traffic::{
    AbortFault, CircuitBreaker, DelayFault, Fault, OutlierDetection, Retries, RetryBudget, RetryOn,
    Timeouts,
};

/// The API group of every Braid resource.
pub const GROUP: &str = "braid.dev";
/// The namespace of Braid's control plane.
pub const CONTROL_PLANE_NAMESPACE: &str = "braid-system";
/// The pod label naming a meshed pod's workload.
pub const WORKLOAD_LABEL: &str = "braid.dev/workload";
/// The namespace label that turns on automatic injection (`enabled`).
pub const INJECT_LABEL: &str = "braid.dev/inject";
/// The pod annotation that opts a pod out of injection (`disabled`).
pub const INJECT_ANNOTATION: &str = "braid.dev/inject";
/// The only allowed name of the cluster's [`Mesh`].
pub const MESH_NAME: &str = "default";

/// Name of a workload's proxy ConfigMap.
pub fn proxy_config_map_name(workload: &str) -> String {
    format!("braid-proxy-{workload}")
}

/// Name of a namespace's shared destinations ConfigMap (key `destinations.json`), projected into
/// every injected pod's config volume beside its workload's `proxy.json`.
pub const DESTINATIONS_CONFIG_MAP: &str = "braid-destinations";

/// Name of a workload's identity Secret.
pub fn identity_secret_name(workload: &str) -> String {
    format!("braid-identity-{workload}")
}

/// The SPIFFE ID of a service account.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}
