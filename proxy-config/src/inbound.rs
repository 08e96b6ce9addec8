//! The inbound policy's types: who may call the workload (authorization rules and the Mesh
//! default) and how often (rate limits).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::is_default;

/// What a workload without authorization rules allows.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAuthorization {
    /// Everything the mTLS mode admits.
    #[default]
    Allow,
    /// Callers with a mesh identity (mTLS), from any namespace.
    Mesh,
    /// Callers with a mesh identity of the workload's own namespace.
    Namespace,
    /// Nothing.
    Deny,
}

/// Whether authorization decisions are enforced.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Denied requests and connections are refused.
    #[default]
    Enforce,
    /// Nothing is refused; what would be is logged and counted.
    DryRun,
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// The request is allowed (unless a `DENY` rule matches too).
    #[default]
    Allow,
    /// The request is denied.
    Deny,
}

/// An authorization rule; an empty list in a field matches everything. A rule with `paths` or
/// `methods` matches HTTP requests only: as an `ALLOW` rule it never matches a TCP connection,
/// as a `DENY` rule it denies TCP connections its other fields match (Istio's rule: neither
/// way can a TCP connection get past what HTTP requests may not).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// `ALLOW` (default) or `DENY`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub action: Action,
    /// Caller SPIFFE IDs; a trailing `*` matches a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Namespaces of callers' identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Request paths; a trailing `*` matches a prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Workload ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// A token bucket per pod, for HTTP requests (gRPC calls included).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_second: u32,
    /// Bucket size.
    pub burst: u32,
    /// Limits of their own for some callers, checked before the pod's (Linkerd's identity
    /// overrides): the first entry whose identities match the caller applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_identity: Vec<IdentityRateLimit>,
}

/// A rate limit for some callers.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRateLimit {
    /// Caller SPIFFE IDs; a trailing `*` matches a prefix. Each ID listed whole has a bucket
    /// of its own; the callers a prefix matches share one.
    pub identities: Vec<String>,
    /// Sustained rate per caller.
    pub requests_per_second: u32,
    /// Bucket size per caller.
    pub burst: u32,
}
