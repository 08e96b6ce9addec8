//! Status of MeshPolicies, MeshRoutes and the Mesh: computed by pure functions from the plan and
//! from what the proxies concerned run ([`synced`]), written ([`apply`]) only when it differs
//! from what the object already reports.
//!
//! `Ready` means in effect *and* programmed: an object is Ready only once every running proxy
//! it concerns runs the config that carries it, so `kubectl wait --for=condition=Ready` waits
//! for enforcement, not for the operator's write.

mod apply;
pub mod synced;

use braid_api::condition::{ACCEPTED, PROGRAMMED, READY, RESOLVED_REFS, condition};
use braid_api::{Mesh, MeshPolicy, MeshPolicyStatus, MeshRoute, MeshRouteStatus, MeshStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::plan::{PolicyOutcome, RouteOutcome};
pub use apply::{announce, write_mesh, write_policy, write_route};
use synced::Synced;

/// The `Programmed` condition for `synced`.
fn programmed(
    synced: &Synced,
    generation: Option<i64>,
    previous: &[Condition],
    now: Time,
) -> Condition {
    let (holds, reason) = if synced.complete() {
        (true, "Programmed")
    } else {
        (false, "Pending")
    };
    condition(
        PROGRAMMED,
        holds,
        reason,
        synced.message(),
        generation,
        previous,
        now,
    )
}

/// Ready's outcome once the object is in effect: true only when programmed.
fn in_effect_and_programmed(what: String, synced: &Synced) -> (bool, &'static str, String) {
    if synced.complete() {
        (true, "InEffect", what)
    } else {
        (
            false,
            "NotProgrammed",
            format!(
                "{what}, but {} of {} proxies concerned do not run it yet (see Programmed)",
                synced.behind.len(),
                synced.total
            ),
        )
    }
}

/// The status a MeshPolicy should report; `synced` tallies the proxies it concerns.
pub fn policy_status(
    policy: &MeshPolicy,
    outcome: &PolicyOutcome,
    synced: &Synced,
    now: &Time,
) -> MeshPolicyStatus {
    let generation = policy.metadata.generation;
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let now = || now.clone();
    let accepted = match &outcome.accepted {
        Ok(()) => condition(
            ACCEPTED,
            true,
            "Accepted",
            "the policy is valid".to_owned(),
            generation,
            previous,
            now(),
        ),
        Err(message) => condition(
            ACCEPTED,
            false,
            "InvalidSpec",
            message.clone(),
            generation,
            previous,
            now(),
        ),
    };
    let (holds, reason, message) = if outcome.accepted.is_err() {
        (false, "InvalidSpec", "the policy is not valid".to_owned())
    } else if outcome.in_effect() > 0 {
        in_effect_and_programmed(
            format!("in effect on {} workload(s)", outcome.in_effect()),
            synced,
        )
    } else if outcome.selected > 0 {
        let winner = outcome.overridden_by.clone().unwrap_or_default();
        (
            false,
            "Overridden",
            format!(
                "every workload it selects is governed by MeshPolicy {winner}, which takes precedence"
            ),
        )
    } else {
        (
            false,
            "NoWorkloads",
            "the selector matches no meshed pod in this namespace".to_owned(),
        )
    };
    let mut conditions = vec![
        accepted,
        programmed(synced, generation, previous, now()),
        condition(READY, holds, reason, message, generation, previous, now()),
    ];
    if outcome.authz.has_rules {
        let unresolved = &outcome.authz.unresolved;
        conditions.push(match unresolved.first() {
            None => condition(
                RESOLVED_REFS,
                true,
                "ResolvedRefs",
                "every identity, namespace and port the rules name can match",
                generation,
                previous,
                now(),
            ),
            Some(first) => condition(
                RESOLVED_REFS,
                false,
                first.reason,
                unresolved
                    .iter()
                    .map(|u| u.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                generation,
                previous,
                now(),
            ),
        });
    }
    MeshPolicyStatus {
        observed_generation: generation,
        conditions,
        workloads: outcome.in_effect(),
        mtls_mode: Some(outcome.mtls_mode),
        authorization: Some(outcome.authz.summary.clone()),
        synced: Some(synced.column()),
    }
}

/// The status a MeshRoute should report; `synced` tallies the proxies it concerns.
pub fn route_status(
    route: &MeshRoute,
    outcome: &RouteOutcome,
    synced: &Synced,
    now: &Time,
) -> MeshRouteStatus {
    let generation = route.metadata.generation;
    let previous = route
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let (holds, reason, message) = match &outcome.accepted {
        Ok(()) => (true, "Accepted", "every backend Service exists".to_owned()),
        Err((reason, message)) => (false, reason.as_str(), message.clone()),
    };
    let (ready, ready_reason, ready_message) = if outcome.in_effect {
        in_effect_and_programmed("its rules are in effect".to_owned(), synced)
    } else if outcome.accepted.is_ok() {
        (
            false,
            "Overridden",
            "another MeshRoute for the same Service takes precedence (the first by name)"
                .to_owned(),
        )
    } else {
        (false, reason, format!("no rule can take effect: {message}"))
    };
    MeshRouteStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                ACCEPTED,
                holds,
                reason,
                message.clone(),
                generation,
                previous,
                now.clone(),
            ),
            programmed(synced, generation, previous, now.clone()),
            condition(
                READY,
                ready,
                ready_reason,
                ready_message,
                generation,
                previous,
                now.clone(),
            ),
        ],
        backends: Some(outcome.backends.clone()),
        synced: Some(synced.column()),
    }
}

/// The status the Mesh should report; `synced` tallies every meshed proxy. The Mesh is Ready
/// when its CA issues certificates (a lagging proxy is named by `Programmed`, not by Ready, so
/// that one stuck pod does not mark the whole mesh broken).
pub fn mesh_status(
    mesh: &Mesh,
    ca_expires: Option<String>,
    workloads: u32,
    synced: &Synced,
    now: &Time,
) -> MeshStatus {
    let generation = mesh.metadata.generation;
    let previous = mesh
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let ready = ca_expires.is_some();
    MeshStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                ACCEPTED,
                true,
                "Accepted",
                "the mesh settings are valid",
                generation,
                previous,
                now.clone(),
            ),
            condition(
                READY,
                ready,
                if ready { "CaReady" } else { "CaMissing" },
                if ready {
                    "the mesh CA is issuing certificates"
                } else {
                    "the mesh CA is not loaded"
                },
                generation,
                previous,
                now.clone(),
            ),
            programmed(synced, generation, previous, now.clone()),
        ],
        ca_expires,
        workloads,
        synced: Some(synced.column()),
    }
}

/// The Ready transition from `previous` to `next` conditions, if any: (now ready, reason,
/// message). Events are published only for these, never for every pass.
pub fn ready_transition<'a>(
    previous: &[Condition],
    next: &'a [Condition],
) -> Option<(bool, &'a str, &'a str)> {
    let find = |conditions: &[Condition]| {
        conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let after = next.iter().find(|c| c.type_ == READY)?;
    if find(previous) == Some((after.status.clone(), after.reason.clone())) {
        return None;
    }
    Some((
        after.status == "True",
        after.reason.as_str(),
        after.message.as_str(),
    ))
}

#[cfg(test)]
mod tests;
