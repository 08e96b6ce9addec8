//! Writing status: each object's status is server-side-applied only when it differs from what
//! the object reports, and a change of `Ready` is published as an Event.

use braid_api::{Mesh, MeshPolicy, MeshPolicyStatus, MeshRoute, MeshRouteStatus, MeshStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::ready_transition;
use crate::Error;
use crate::write::MANAGER;

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
                &current.authorization,
                &current.synced,
                current.observed_generation,
            ) == (
                status.workloads,
                status.mtls_mode,
                &status.authorization,
                &status.synced,
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
            && (
                &current.backends,
                &current.synced,
                current.observed_generation,
            ) == (&status.backends, &status.synced, status.observed_generation)
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
                &current.synced,
                current.observed_generation,
            ) == (
                &status.ca_expires,
                status.workloads,
                &status.synced,
                status.observed_generation,
            )
    });
    if !unchanged {
        apply_status(Api::all(client.clone()), mesh, status).await?;
    }
    Ok(!unchanged)
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
        // Waiting for the proxies to load a change is the normal course of every change, not
        // a warning; `Programmed` names a proxy that stays behind.
        type_: if ready || reason == "NotProgrammed" {
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
