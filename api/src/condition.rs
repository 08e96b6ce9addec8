//! Status conditions: the `Accepted` and `Ready` conditions every Braid resource reports, kept as
//! a list keyed by `type` so that server-side apply merges them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{Schema, SchemaGenerator};

/// The object was understood and its references resolved.
pub const ACCEPTED: &str = "Accepted";
/// The object is in effect.
pub const READY: &str = "Ready";
/// The proxies concerned run the config that carries the object (Gateway API's name for it).
pub const PROGRAMMED: &str = "Programmed";
/// Everything the object names (a policy's identities, namespaces, ports) can match.
pub const RESOLVED_REFS: &str = "ResolvedRefs";

/// Schema of a `conditions` list: a map keyed by `type`, as Kubernetes conventions ask.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// A condition with the given outcome. `last_transition_time` is kept from `previous` when the
/// status did not change, as Kubernetes conventions ask, so that rewriting status is idempotent.
pub fn condition(
    type_: &str,
    holds: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    previous: &[Condition],
    now: Time,
) -> Condition {
    let status = if holds { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(now, |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}
