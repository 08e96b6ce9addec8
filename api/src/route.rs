//! `MeshRoute`: how traffic sent to one Service is matched and split, after the Gateway API
//! HTTPRoute model (GAMMA), so that supporting HTTPRoute later is a translation.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::traffic::{Fault, Retries};

/// Routes for the traffic meshed clients send to `service`: the first rule whose matches fit a
/// request sends it to that rule's weighted backends (the canary: 80 to `payment-v1`, 20 to
/// `payment-v2`). Requests no rule matches go to `service` itself.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[kube(
    group = "braid.dev",
    version = "v1alpha1",
    kind = "MeshRoute",
    namespaced,
    shortname = "mr",
    category = "braid",
    status = "MeshRouteStatus",
    printcolumn(name = "Service", type_ = "string", json_path = ".spec.service"),
    printcolumn(name = "Backends", type_ = "string", json_path = ".status.backends"),
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
#[serde(rename_all = "camelCase")]
pub struct MeshRouteSpec {
    /// The Service, in this namespace, whose traffic these rules route.
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.size() > 0").message("service must name a Service"))]
    pub service: String,
    /// Rules, tried in order (1 to 16).
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.size() > 0").message("a MeshRoute needs at least one rule"))]
    pub rules: Vec<RouteRule>,
}

/// One rule: which requests, and where they go.
#[derive(Clone, Debug, Default, Deserialize, Serialize, KubeSchema, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.retries) || !has(self.retries.perTryTimeout) || !has(self.timeout) || duration(self.retries.perTryTimeout) <= duration(self.timeout)").message("retries.perTryTimeout must not exceed timeout").field_path(".retries.perTryTimeout"))]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// A request matches the rule when it fits any of these (at most 8). Empty: every request.
    #[schemars(length(max = 8))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go, split by weight (1 to 16 backends).
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.map(b, b.weight).sum() > 0").message("backend weights must add up to more than 0"))]
    pub backends: Vec<Backend>,
    /// Limit on a whole request of this rule, retries included (e.g. `5s`).
    #[schemars(regex(pattern = crate::duration::PATTERN))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Retries of this rule's requests; unset, the destination's MeshPolicy applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Faults injected into this rule's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// Conditions on a request; all that are set must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Request headers; all must match (at most 16).
    #[schemars(length(max = 16))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A path condition.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    /// How `value` is compared (default `PathPrefix`).
    #[serde(default = "default_path_match", rename = "type")]
    pub match_type: MatchType,
    /// The path, starting with `/`.
    #[schemars(regex(pattern = r"^/"))]
    pub value: String,
}

/// A header condition.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub name: String,
    /// How `value` is compared (default `Exact`).
    #[serde(default = "default_header_match", rename = "type")]
    pub match_type: MatchType,
    /// The value.
    pub value: String,
}

/// How a value is compared.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum MatchType {
    /// Equal.
    Exact,
    /// Starts with the value, at a `/` boundary (paths only).
    PathPrefix,
    /// Matches the regular expression, anchored at both ends.
    RegularExpression,
}

/// HTTP methods a rule can match.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

/// A weighted backend Service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// A Service in this namespace.
    pub service: String,
    /// Port of the backend Service. Unset: the port the client called.
    #[schemars(range(min = 1, max = 65535))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    /// Share of the rule's requests (0 to 100), relative to the other backends' weights.
    #[schemars(range(max = 100))]
    pub weight: u32,
}

/// What the operator reports about a route.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshRouteStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (every backend Service exists), `Programmed` (every proxy runs it) and `Ready`
    /// (in effect and programmed).
    #[serde(default)]
    #[schemars(schema_with = "crate::condition::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The first rule's backends with their weights, e.g. `payment-v1=80,payment-v2=20`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backends: Option<String>,
    /// Proxies concerned that run the latest config the operator wrote, out of those running:
    /// `5/5`. The `Programmed` condition names those that lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced: Option<String>,
}

fn default_path_match() -> MatchType {
    MatchType::PathPrefix
}
fn default_header_match() -> MatchType {
    MatchType::Exact
}
