//! The baselines the benchmark measures in the same run, what the operator's writes cost the
//! API server on their own: ConfigMaps of a document's size, an annotation on every pod (with
//! the API server's CPU time, when it runs on this machine).

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::procs::apiserver_cpu;
use super::{BASELINE_NS, report, workloads};

/// The API server storing `count` ConfigMaps of `size` bytes, written from here `in_flight` at a
/// time (1: one after another; 32: as the operator writes them).
pub async fn baseline(
    client: &kube::Client,
    count: usize,
    size: usize,
    in_flight: usize,
) -> anyhow::Result<Duration> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), BASELINE_NS);
    let payload = "x".repeat(size);
    let started = Instant::now();
    let writes = (0..count).map(|i| {
        let (api, payload) = (&api, &payload);
        async move {
            let name = format!("baseline-{i}");
            let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                                "data": {"proxy.json": payload, "round": format!("{count}-{in_flight}")}});
            api.patch(&name, &PatchParams::apply("braid-bench").force(), &Patch::Apply(config))
                .await
        }
    });
    let mut writes = futures::stream::iter(writes).buffer_unordered(in_flight);
    while let Some(written) = writes.next().await {
        written?;
    }
    Ok(started.elapsed())
}

/// The API server taking an annotation on each of the benchmark's pods in `namespace`,
/// `in_flight` at a time: what nudging them costs, without the operator.
pub async fn annotate_every_pod(
    client: &kube::Client,
    namespace: &str,
    in_flight: usize,
) -> anyhow::Result<report::Annotated> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    // A value no pod carries yet: a patch that changes nothing is not stored, and no watcher
    // hears of it, so it would cost the API server half as much as a nudge.
    let stamp = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let cpu_before = apiserver_cpu();
    let started = Instant::now();
    let patches = (0..workloads()).map(|i| {
        let (pods, stamp) = (&pods, &stamp);
        async move {
            let patch = json!({"metadata": {"annotations": {"braid.dev/bench-nudge": stamp}}});
            pods.patch_metadata(
                &format!("w-{i}"),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        }
    });
    let mut patches = futures::stream::iter(patches).buffer_unordered(in_flight);
    while let Some(patched) = patches.next().await {
        patched?;
    }
    let took = started.elapsed();
    // The API server goes on sending the last events to the watchers of pods for a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let apiserver_cpu = cpu_before
        .zip(apiserver_cpu())
        .map(|(before, after)| after - before);
    let pod_bytes = serde_json::to_vec(&pods.get("w-1").await?)?.len();
    Ok(report::Annotated {
        took,
        apiserver_cpu,
        pod_bytes,
    })
}
