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

use crate::inputs::InputChanges;
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

/// How long after a pass first left nudges to the next one ([`Superseded`]) the passes after it
/// may do so too. Long enough for a burst of changes (a `kubectl apply` of several objects, the
/// endpoints of a rollout's first pods) to cost one wave of nudges; short enough that, under
/// changes that never stop, a wave still reaches every pod at least every few seconds more than
/// one wave takes.
pub const SUPERSEDE_FOR: Duration = Duration::from_secs(3);

/// Whether the nudges of a pass are superseded: an input changed since the pass took its
/// snapshot ([`crate::inputs`]), so the files they deliver are already outdated, and the next
/// pass, which runs at once, nudges every pod to newer ones. A wave over 1,000 pods takes
/// seconds; without this, each change of a burst that comes during it would wait for the wave
/// to end, and then for a whole wave of its own.
pub struct Superseded<'a> {
    inputs: &'a InputChanges,
    at_snapshot: u64,
    may_stop: bool,
}

impl<'a> Superseded<'a> {
    /// From the input changes counted just before the pass took its snapshot; `may_stop`:
    /// whether this pass may leave nudges to the next (see [`SUPERSEDE_FOR`]).
    pub fn since(inputs: &'a InputChanges, at_snapshot: u64, may_stop: bool) -> Self {
        Self {
            inputs,
            at_snapshot,
            may_stop,
        }
    }

    /// Whether nudges not sent yet are left to the next pass.
    pub fn now(&self) -> bool {
        self.may_stop && self.inputs.seen() != self.at_snapshot
    }
}

/// What nudging one workload's pods did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nudged {
    /// Pods patched.
    pub patched: usize,
    /// Pods left to the next pass, the nudges being [`Superseded`].
    pub superseded: usize,
}

/// Annotates the pods of `workload` with `hash`, until the nudges are `superseded`.
pub async fn nudge(
    client: &kube::Client,
    pods: &[Arc<Pod>],
    workload: &WorkloadKey,
    hash: &str,
    superseded: &Superseded<'_>,
) -> Nudged {
    let api: Api<Pod> = Api::namespaced(client.clone(), &workload.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: hash}}});
    let mut nudged = Nudged::default();
    for name in pods_to_nudge(pods, workload, hash) {
        if superseded.now() {
            nudged.superseded += 1;
            continue;
        }
        match api
            .patch_metadata(name, &nudge_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => nudged.patched += 1,
            // Gone since the snapshot: nothing to nudge.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => tracing::warn!(
                "nudging pod {}/{name} ({WORKLOAD_LABEL}={}) to reload its config failed: {error}",
                workload.namespace,
                workload.name
            ),
        }
    }
    nudged
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
    fn nudges_are_superseded_by_an_input_change_after_the_snapshot_when_they_may_stop() {
        let inputs = InputChanges::default();
        inputs.record();
        let at_snapshot = inputs.seen();
        let may_stop = Superseded::since(&inputs, at_snapshot, true);
        let must_finish = Superseded::since(&inputs, at_snapshot, false);
        assert!(!may_stop.now());
        inputs.record();
        assert!(may_stop.now());
        assert!(!must_finish.now());
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
