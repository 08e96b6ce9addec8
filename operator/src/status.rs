//! Status of MeshPolicies, MeshRoutes and the Mesh: computed from the plan by pure functions,
//! written only when it differs from what the object already reports.

use braid_api::condition::{ACCEPTED, READY, RESOLVED_REFS, condition};
use braid_api::{Mesh, MeshPolicy, MeshPolicyStatus, MeshRoute, MeshRouteStatus, MeshStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::Error;
use crate::plan::{PolicyOutcome, RouteOutcome};
use crate::write::MANAGER;

/// The status a MeshPolicy should report.
pub fn policy_status(policy: &MeshPolicy, outcome: &PolicyOutcome, now: &Time) -> MeshPolicyStatus {
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
            "the policy is valid",
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
    } else if outcome.in_effect > 0 {
        (
            true,
            "InEffect",
            format!("in effect on {} workload(s)", outcome.in_effect),
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
        workloads: outcome.in_effect,
        mtls_mode: Some(outcome.mtls_mode),
        authorization: Some(outcome.authz.summary.clone()),
    }
}

/// The status a MeshRoute should report.
pub fn route_status(route: &MeshRoute, outcome: &RouteOutcome, now: &Time) -> MeshRouteStatus {
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
    let ready = outcome.in_effect;
    let ready_reason = match (ready, &outcome.accepted) {
        (true, _) => "InEffect",
        (false, Ok(())) => "Overridden",
        (false, Err(_)) => reason,
    };
    let ready_message = if ready {
        "its rules are in effect".to_owned()
    } else if outcome.accepted.is_ok() {
        "another MeshRoute for the same Service takes precedence (the first by name)".to_owned()
    } else {
        format!("no rule can take effect: {message}")
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
    }
}

/// The status the Mesh should report.
pub fn mesh_status(
    mesh: &Mesh,
    ca_expires: Option<String>,
    workloads: u32,
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
        ],
        ca_expires,
        workloads,
    }
}

/// Whether two condition lists say the same, ignoring transition times.
fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (
                &x.type_,
                &x.status,
                &x.reason,
                &x.message,
                x.observed_generation,
            ) == (
                &y.type_,
                &y.status,
                &y.reason,
                &y.message,
                y.observed_generation,
            )
        })
}

/// Server-side-applies `status` to an object's status subresource.
async fn apply_status<K>(
    api: Api<K>,
    object: &K,
    status: impl serde::Serialize,
) -> Result<(), Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    let name = object.meta().name.as_deref().unwrap_or_default();
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

fn namespaced<K>(client: &kube::Client, object: &K) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    Api::namespaced(
        client.clone(),
        object.meta().namespace.as_deref().unwrap_or_default(),
    )
}

/// Writes a MeshPolicy's status when it changed. Returns whether it wrote.
pub async fn write_policy(
    client: &kube::Client,
    policy: &MeshPolicy,
    status: MeshPolicyStatus,
) -> Result<bool, Error> {
    let unchanged = policy.status.as_ref().is_some_and(|current| {
        same_conditions(&current.conditions, &status.conditions)
            && (
                current.workloads,
                current.mtls_mode,
                current.observed_generation,
            ) == (
                status.workloads,
                status.mtls_mode,
                status.observed_generation,
            )
    });
    if !unchanged {
        apply_status(namespaced(client, policy), policy, status).await?;
    }
    Ok(!unchanged)
}

/// Writes a MeshRoute's status when it changed. Returns whether it wrote.
pub async fn write_route(
    client: &kube::Client,
    route: &MeshRoute,
    status: MeshRouteStatus,
) -> Result<bool, Error> {
    let unchanged = route.status.as_ref().is_some_and(|current| {
        same_conditions(&current.conditions, &status.conditions)
            && (&current.backends, current.observed_generation)
                == (&status.backends, status.observed_generation)
    });
    if !unchanged {
        apply_status(namespaced(client, route), route, status).await?;
    }
    Ok(!unchanged)
}

/// Writes the Mesh's status when it changed. Returns whether it wrote.
pub async fn write_mesh(
    client: &kube::Client,
    mesh: &Mesh,
    status: MeshStatus,
) -> Result<bool, Error> {
    let unchanged = mesh.status.as_ref().is_some_and(|current| {
        same_conditions(&current.conditions, &status.conditions)
            && (
                &current.ca_expires,
                current.workloads,
                current.observed_generation,
            ) == (
                &status.ca_expires,
                status.workloads,
                status.observed_generation,
            )
    });
    if !unchanged {
        apply_status(Api::all(client.clone()), mesh, status).await?;
    }
    Ok(!unchanged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_api::{MeshPolicySpec, MtlsMode};

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("time"))
    }

    fn outcome(selected: u32, in_effect: u32, winner: Option<&str>) -> PolicyOutcome {
        PolicyOutcome {
            accepted: Ok(()),
            selected,
            in_effect,
            overridden_by: winner.map(String::from),
            mtls_mode: MtlsMode::Strict,
            authz: crate::plan::authz::AuthzReview {
                summary: "default allow".into(),
                has_rules: false,
                unresolved: Vec::new(),
            },
        }
    }

    #[test]
    fn a_policy_with_rules_reports_what_they_cannot_match() {
        let policy = MeshPolicy::new("payment", MeshPolicySpec::default());
        let mut dead = outcome(1, 1, None);
        dead.authz = crate::plan::authz::AuthzReview {
            summary: "2 rules".into(),
            has_rules: true,
            unresolved: vec![crate::plan::authz::Unresolved {
                reason: "UnknownNamespace",
                message: "authorization[1]: namespace shpo does not exist".into(),
            }],
        };
        let status = policy_status(&policy, &dead, &time(1));
        assert_eq!(status.authorization.as_deref(), Some("2 rules"));
        let resolved = status
            .conditions
            .iter()
            .find(|c| c.type_ == RESOLVED_REFS)
            .expect("ResolvedRefs condition");
        assert_eq!(
            (resolved.status.as_str(), resolved.reason.as_str()),
            ("False", "UnknownNamespace")
        );
        assert!(resolved.message.contains("shpo"));
        let plain = policy_status(&policy, &outcome(1, 1, None), &time(1));
        assert!(plain.conditions.iter().all(|c| c.type_ != RESOLVED_REFS));
        assert_eq!(plain.authorization.as_deref(), Some("default allow"));
    }

    fn ready(status: &MeshPolicyStatus) -> (&str, &str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready condition");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn ready_says_in_effect_overridden_or_no_workloads() {
        let policy = MeshPolicy::new("p", MeshPolicySpec::default());
        assert_eq!(
            ready(&policy_status(&policy, &outcome(2, 2, None), &time(1))),
            ("True", "InEffect")
        );
        let overridden = policy_status(&policy, &outcome(2, 0, Some("strict")), &time(1));
        assert_eq!(ready(&overridden), ("False", "Overridden"));
        assert!(overridden.conditions[1].message.contains("strict"));
        assert_eq!(
            ready(&policy_status(&policy, &outcome(0, 0, None), &time(1))),
            ("False", "NoWorkloads")
        );
    }

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let mut policy = MeshPolicy::new("p", MeshPolicySpec::default());
        policy.status = Some(policy_status(&policy, &outcome(1, 1, None), &time(100)));
        let again = policy_status(&policy, &outcome(1, 1, None), &time(200));
        assert_eq!(again.conditions[1].last_transition_time, time(100));
        let changed = policy_status(&policy, &outcome(0, 0, None), &time(300));
        assert_eq!(changed.conditions[1].last_transition_time, time(300));
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

/// Publishes an Event for a Ready transition of `object`.
pub async fn announce<K>(
    recorder: &kube::runtime::events::Recorder,
    object: &K,
    previous: &[Condition],
    next: &[Condition],
) where
    K: kube::Resource<DynamicType = ()>,
{
    let Some((ready, reason, message)) = ready_transition(previous, next) else {
        return;
    };
    let event = kube::runtime::events::Event {
        type_: if ready {
            kube::runtime::events::EventType::Normal
        } else {
            kube::runtime::events::EventType::Warning
        },
        reason: reason.into(),
        note: Some(message.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(%error, "cannot publish an event");
    }
}

#[cfg(test)]
mod transition_tests {
    use super::*;

    fn ready(status: &str, reason: &str) -> Vec<Condition> {
        let now = Time(k8s_openapi::jiff::Timestamp::from_second(1).expect("time"));
        vec![condition(
            READY,
            status == "True",
            reason,
            "m",
            None,
            &[],
            now,
        )]
    }

    #[test]
    fn only_changes_of_status_or_reason_are_transitions() {
        assert_eq!(
            ready_transition(&[], &ready("True", "InEffect")),
            Some((true, "InEffect", "m"))
        );
        assert_eq!(
            ready_transition(&ready("True", "InEffect"), &ready("True", "InEffect")),
            None
        );
        assert_eq!(
            ready_transition(&ready("True", "InEffect"), &ready("False", "NoWorkloads")),
            Some((false, "NoWorkloads", "m"))
        );
        assert_eq!(
            ready_transition(
                &ready("False", "NoWorkloads"),
                &ready("False", "Overridden")
            ),
            Some((false, "Overridden", "m"))
        );
    }
}
