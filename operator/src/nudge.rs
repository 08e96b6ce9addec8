//! Config that is live in seconds: after a workload's `proxy.json` changed, or the namespace's
//! `destinations.json` its document leaves the destinations to, the operator annotates each of
//! its pods with a hash of the new files (`braid.dev/config-hash`). The
//! kubelet re-syncs a pod's volumes when the pod object changes, so the mounted file is swapped
//! within a second, instead of at the kubelet's next periodic sync (a minute and more on a stock
//! kubelet). It costs one merge patch per pod per changed document; a pod that already carries
//! the hash is skipped, so a pass that changes nothing writes nothing. A failed nudge is logged,
//! never fatal: the periodic sync still delivers the file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_api::WORKLOAD_LABEL;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};

use crate::workload::{WorkloadKey, workload_of};
use crate::write::MANAGER;

/// The pod annotation that carries the hash of the `proxy.json` the pod should run.
pub const CONFIG_HASH_ANNOTATION: &str = "braid.dev/config-hash";

/// The pod annotation changed once more when a proxy still runs an older config a while after
/// its nudge ([`nudge_again`]).
pub const RESYNC_ANNOTATION: &str = "braid.dev/config-resync";

/// The live pods of `workload` that do not carry `hash` yet. Pods not yet scheduled are left
/// out: no kubelet has mounted their volumes, and the one that does will mount the file as it
/// is then (the scheduler would also re-examine every unschedulable pod that changes). So are
/// terminating pods: the kubelet no longer sets up the volumes of a pod it is stopping, so a
/// nudge would be a write that changes nothing (a namespace being deleted would otherwise have
/// every pod nudged for each Service that goes).
pub fn pods_to_nudge<'a>(pods: &'a [Arc<Pod>], workload: &WorkloadKey, hash: &str) -> Vec<&'a str> {
    pods.iter()
        .filter(|pod| workload_of(pod).as_ref() == Some(workload))
        .filter(|pod| pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
                .map(String::as_str)
                != Some(hash)
        })
        .filter_map(|pod| pod.metadata.name.as_deref())
        .collect()
}

/// A nudge's patch, owned by the operator in the pod's managed fields (an unnamed patch shows
/// there as `unknown`).
fn nudge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

/// How long a nudge waits for the operator's own watch to bring back the ConfigMap it follows.
const DELIVERY_WAIT: Duration = Duration::from_secs(1);
/// How often the watch's cache is looked at meanwhile.
const DELIVERY_POLL: Duration = Duration::from_millis(5);

/// Waits until `delivered` (the operator's watch has brought the ConfigMap just written), for at
/// most [`DELIVERY_WAIT`]; whether it was. A nudge must not overtake the ConfigMap: the kubelet
/// syncs the pod at once, and if its own watch of the ConfigMap (a watch like the operator's,
/// fed by the same API server) has not brought the new document yet, it writes the old file
/// again, and the proxy waits for a second nudge ([`nudge_again`]). Seen on the test cluster
/// under a burst of 1,000 writes: two of five changes had a proxy wait 2.5 s more for it.
pub async fn when_delivered(delivered: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + DELIVERY_WAIT;
    while !delivered() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(DELIVERY_POLL).await;
    }
    true
}

/// Annotates the pods of `workload` with `hash`; how many were patched.
pub async fn nudge(
    client: &kube::Client,
    pods: &[Arc<Pod>],
    workload: &WorkloadKey,
    hash: &str,
) -> usize {
    let api: Api<Pod> = Api::namespaced(client.clone(), &workload.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: hash}}});
    let mut patched = 0;
    for name in pods_to_nudge(pods, workload, hash) {
        match api
            .patch_metadata(name, &nudge_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => patched += 1,
            // Gone since the snapshot: nothing to nudge.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => tracing::warn!(
                "nudging pod {}/{name} ({WORKLOAD_LABEL}={}) to reload its config failed: {error}",
                workload.namespace,
                workload.name
            ),
        }
    }
    patched
}

/// Makes the kubelet sync the volumes of `pod` (`namespace/name`) once more, by changing its
/// [`RESYNC_ANNOTATION`] to `value`. A nudge can come too early: the kubelet takes the pod's
/// change at once, but its cache of the ConfigMap may not have the new document yet, and it then
/// writes the old file again; the read-back sees the proxy still behind and asks again.
pub async fn nudge_again(client: &kube::Client, pod: &str, value: &str) {
    let Some((namespace, name)) = pod.split_once('/') else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {RESYNC_ANNOTATION: value}}});
    match api
        .patch_metadata(name, &nudge_params(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => tracing::info!("pod {pod} still runs an older config: nudged again"),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => tracing::warn!("nudging pod {pod} again failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(name: &str, workload: &str, hash: Option<&str>) -> Arc<Pod> {
        let scheduled = name != "order-unscheduled";
        let terminating = name == "order-terminating";
        Arc::new(Pod {
            spec: scheduled.then(|| k8s_openapi::api::core::v1::PodSpec {
                node_name: Some("node-1".into()),
                ..Default::default()
            }),
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                labels: Some(BTreeMap::from([(WORKLOAD_LABEL.into(), workload.into())])),
                annotations: hash
                    .map(|h| BTreeMap::from([(CONFIG_HASH_ANNOTATION.into(), h.into())])),
                deletion_timestamp: terminating.then_some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ),
                ),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn a_nudge_waits_for_the_watch_to_deliver_and_no_longer_than_its_bound() {
        let looks = std::sync::atomic::AtomicUsize::new(0);
        let third_look = || looks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 2;
        assert!(when_delivered(third_look).await);
        assert_eq!(looks.into_inner(), 3);
        assert!(!when_delivered(|| false).await);
    }

    #[test]
    fn only_the_workloads_scheduled_running_pods_without_the_new_hash_are_nudged() {
        let pods = [
            pod("order-1", "order", None),
            pod("order-2", "order", Some("old")),
            pod("order-3", "order", Some("new")),
            pod("order-unscheduled", "order", None),
            pod("order-terminating", "order", None),
            pod("payment-1", "payment", None),
        ];
        let order = WorkloadKey {
            namespace: "shop".into(),
            name: "order".into(),
        };
        assert_eq!(pods_to_nudge(&pods, &order, "new"), ["order-1", "order-2"]);
    }
}
