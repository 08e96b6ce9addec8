//! The benchmark's cluster objects: 1,000 meshed workloads behind 500 Services, a few of them
//! running on the test cluster's node, the rest bound to a node that no kubelet runs.
//!
//! The single test node takes 110 pods, far fewer than 1,000 proxies on two cores, so most
//! workloads' pods are bound to `braid-bench-hollow`, a Node object without a kubelet. To the
//! operator and the API server they are scheduled pods like any other: the operator nudges each
//! (one pod patch per change, what a running pod costs), only no proxy ever reads its file. The
//! pods that do run (every [`RUNNING_EVERY`]th workload) show when a change is applied.
//!
//! A pod write costs the API server in proportion to the pod's size, and a running pod's status
//! (written by its kubelet) is as large as its spec, so the hollow pods are given the status a
//! running one has ([`give_hollow_pods_a_status`]).

use std::time::{Duration, Instant};

use anyhow::bail;
use futures::TryStreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::workloads;

/// The node the pods that do not run are bound to; no kubelet runs it.
pub const HOLLOW_NODE: &str = "braid-bench-hollow";
/// Every this many workloads, one has a pod that runs (with its proxy) on the test node.
pub const RUNNING_EVERY: usize = 50;

/// Whether workload `i`'s pod runs on the test node.
pub fn runs(i: usize) -> bool {
    i.is_multiple_of(RUNNING_EVERY)
}

pub fn policy_resource() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "braid.dev".into(),
        version: "v1alpha1".into(),
        api_version: "braid.dev/v1alpha1".into(),
        kind: "MeshPolicy".into(),
        plural: "meshpolicies".into(),
    }
}

/// Deletes the namespace (and its pods at once: those on the hollow node have no kubelet to
/// confirm they stopped) and, with `labels`, creates it afresh.
pub async fn recreate_namespace(
    client: &kube::Client,
    name: &str,
    labels: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        let pods: Api<Pod> = Api::namespaced(client.clone(), name);
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        pods.delete_collection(&now, &ListParams::default()).await?;
        let _ = api.delete(name, &DeleteParams::default()).await;
        let deadline = Instant::now() + Duration::from_secs(300);
        while api.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("namespace {name} is not going away");
            }
            // Pods created while it was terminating, by nobody here; still, never wait on them.
            let _ = pods.delete_collection(&now, &ListParams::default()).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let Some(labels) = labels else {
        return Ok(());
    };
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?,
    )
    .await?;
    Ok(())
}

/// The Node object without a kubelet. Tainted so that nothing else is scheduled onto it; its
/// pods tolerate everything, so the node controller never evicts them when it finds the node
/// unreachable.
pub async fn create_hollow_node(client: &kube::Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(HOLLOW_NODE).await?.is_none() {
        let node = json!({
            "metadata": {"name": HOLLOW_NODE, "labels": {"braid.dev/bench": "hollow"}},
            "spec": {"taints": [{"key": "braid.dev/bench", "value": "hollow", "effect": "NoSchedule"}]}
        });
        nodes
            .create(&PostParams::default(), &serde_json::from_value(node)?)
            .await?;
    }
    Ok(())
}

pub async fn delete_hollow_node(client: &kube::Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(HOLLOW_NODE).await?.is_some() {
        nodes.delete(HOLLOW_NODE, &DeleteParams::default()).await?;
    }
    Ok(())
}

/// Pods (injected by the webhook: the namespace is labelled), Services with their
/// EndpointSlices, and the two MeshPolicies the benchmark changes.
pub async fn create(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let policies: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &policy_resource());
    let create = PostParams::default();
    for i in 0..workloads() {
        pods.create(&create, &serde_json::from_value(pod(i, runs(i)))?)
            .await?;
    }
    for j in 0..super::services() {
        let service = json!({"metadata": {"name": format!("svc-{j}")}, "spec": {"ports": [{"name": "http", "port": 80}]}});
        services
            .create(&create, &serde_json::from_value(service)?)
            .await?;
        let slice = json!({
            "metadata": {"name": slice_name(j), "labels": {"kubernetes.io/service-name": format!("svc-{j}")}},
            "addressType": "IPv4", "endpoints": endpoints(namespace, j, true), "ports": [{"name": "http", "port": 8080}]
        });
        slices
            .create(&create, &serde_json::from_value(slice)?)
            .await?;
    }
    for (name, selector) in [
        ("group-0", json!({"group": "g-0"})),
        ("svc-1-backends", json!({"service": "svc-1"})),
    ] {
        let policy = json!({"apiVersion": "braid.dev/v1alpha1", "kind": "MeshPolicy", "metadata": {"name": name},
                            "spec": {"selector": {"matchLabels": selector}}});
        policies
            .create(&create, &serde_json::from_value(policy)?)
            .await?;
    }
    Ok(())
}

/// The EndpointSlice of Service `svc-<j>`, which this benchmark writes.
pub fn slice_name(j: usize) -> String {
    format!("svc-{j}-bench")
}

/// The endpoints of Service `svc-<j>`: the pods of its two workloads, the first one `ready` or
/// not (the second always is).
pub fn endpoints(namespace: &str, j: usize, first_ready: bool) -> serde_json::Value {
    let endpoints: Vec<_> = (0..2)
        .map(|k| {
            let i = 2 * j + k;
            json!({"addresses": [format!("10.250.{}.{}", i / 250, i % 250 + 1)], "conditions": {"ready": k == 1 || first_ready},
                   "targetRef": {"kind": "Pod", "name": format!("w-{i}"), "namespace": namespace}})
        })
        .collect();
    json!(endpoints)
}

/// Workload `i`'s pod as this benchmark creates it (the webhook adds Braid's containers in a
/// labelled namespace): on the test node when it `runs`, else bound to [`HOLLOW_NODE`].
fn pod(i: usize, runs: bool) -> serde_json::Value {
    let labels = json!({"braid.dev/workload": format!("w-{i}"), "group": format!("g-{}", i % 10), "service": format!("svc-{}", i / 2)});
    let app = json!({"name": "app", "image": "braid.local/braid-shop:dev", "imagePullPolicy": "IfNotPresent", "args": ["serve"],
                     "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}}});
    let spec = if runs {
        json!({"containers": [app], "terminationGracePeriodSeconds": 1})
    } else {
        json!({"nodeName": HOLLOW_NODE, "tolerations": [{"operator": "Exists"}], "containers": [app]})
    };
    json!({"metadata": {"name": format!("w-{i}"), "labels": labels}, "spec": spec})
}

/// The same pods as [`create`]'s, all bound to [`HOLLOW_NODE`], in a namespace without
/// injection: the app container alone, for the cost of a pod write without Braid's containers.
pub async fn create_plain_pods(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let create = PostParams::default();
    futures::stream::iter((0..workloads()).map(Ok))
        .try_for_each_concurrent(8, |i| {
            let (pods, create) = (&pods, &create);
            async move {
                pods.create(create, &serde_json::from_value(pod(i, false))?)
                    .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .await
}

/// The status the kubelet wrote for the running pod `model` in `namespace`, as a hollow pod is
/// given it: phase `Pending` and no IP, so that the operator does not read back a proxy that is
/// not there (it reads those of running pods with an IP).
pub async fn status_of_running_pod(
    client: &kube::Client,
    namespace: &str,
    model: &str,
) -> anyhow::Result<serde_json::Value> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get(model).await?;
    let mut status = serde_json::to_value(pod.status)?;
    let Some(fields) = status.as_object_mut() else {
        bail!("pod {namespace}/{model} has no status");
    };
    fields.insert("phase".into(), json!("Pending"));
    for ip in ["podIP", "podIPs"] {
        fields.remove(ip);
    }
    Ok(status)
}

/// `status` as a pod without init containers (without Braid's) has it.
pub fn without_init_containers(status: &serde_json::Value) -> serde_json::Value {
    let mut status = status.clone();
    if let Some(fields) = status.as_object_mut() {
        fields.remove("initContainerStatuses");
    }
    status
}

/// Writes `status` on every pod in `namespace` that is bound to [`HOLLOW_NODE`], 32 at a time.
pub async fn give_hollow_pods_a_status(
    client: &kube::Client,
    namespace: &str,
    status: &serde_json::Value,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch = json!({ "status": status });
    let hollow = ListParams::default().fields(&format!("spec.nodeName={HOLLOW_NODE}"));
    let names = (pods.list_metadata(&hollow).await?.items.into_iter())
        .filter_map(|pod| pod.metadata.name)
        .map(Ok);
    futures::stream::iter(names)
        .try_for_each_concurrent(32, |name| {
            let (pods, patch) = (&pods, &patch);
            async move {
                pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .await
}
