//! `make bench` part: the operator at scale. 1,000 meshed workloads (pods kept Pending by an
//! unsatisfiable nodeSelector, so they exist but never run, and are not nudged: see
//! `braid_operator::nudge`) behind 500 Services whose
//! EndpointSlices this program writes. Then, repeatedly:
//! - a server-side MeshPolicy change (mTLS mode) that affects the 100 workloads it selects;
//! - a client-side change (load balancer) of the workloads behind one Service, which every
//!   workload calls, so all 1,000 `proxy.json` change;
//!
//! and the time from the `patch` to the last affected ConfigMap written, with the API server's
//! write requests per change by resource. The baselines, in the same run: the API server storing
//! as many ConfigMaps of the same size written straight from here (one by one, and 16 at a time
//! as the operator writes), and taking an annotation on every pod (what nudging them would cost
//! were they running).
//! Also the operator's peak RSS (VmHWM). Writes a Markdown table to bench/results/operator-scale.md.

mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde_json::json;

const NS: &str = "braid-bench-scale";
const BASELINE_NS: &str = "braid-bench-baseline";
const WORKLOADS: usize = 1000;
const SERVICES: usize = 500;
const HASH: &str = "braid.dev/config-hash";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("no cluster: run make cluster-up install")?;
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    recreate_namespace(&client, NS).await?;
    recreate_namespace(&client, BASELINE_NS).await?;

    let started = Instant::now();
    create_fixture(&client).await?;
    let configs: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), NS);
    let all: BTreeSet<String> = (0..WORKLOADS)
        .map(|i| format!("braid-proxy-w-{i}"))
        .collect();
    let initial = wait_until_stable(&configs, &all, Duration::from_secs(600)).await?;
    let converged = started.elapsed();
    eprintln!("initial: {WORKLOADS} workloads converged in {converged:.1?}");

    let policies: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &policy_resource());
    let mut hashes = initial;
    let (mut server_side, mut client_side) = (Vec::new(), Vec::new());
    let group0: BTreeSet<String> = (0..WORKLOADS)
        .filter(|i| i % 10 == 0)
        .map(|i| format!("braid-proxy-w-{i}"))
        .collect();
    for round in 0..iterations {
        let mode = if round % 2 == 0 {
            "STRICT"
        } else {
            "PERMISSIVE"
        };
        let patch = json!({"spec": {"mtls": {"mode": mode}}});
        let (took, now) = timed_change(
            &client, &configs, &policies, "group-0", patch, &group0, &hashes,
        )
        .await?;
        hashes = now;
        server_side.push(took);
        let balancer = if round % 2 == 0 {
            "LEAST_CONN"
        } else {
            "ROUND_ROBIN"
        };
        let patch = json!({"spec": {"loadBalancer": balancer}});
        let (took, now) = timed_change(
            &client,
            &configs,
            &policies,
            "svc-1-backends",
            patch,
            &all,
            &hashes,
        )
        .await?;
        hashes = now;
        client_side.push(took);
        eprintln!(
            "round {round}: server-side {:.2?} (writes {:?}), client-side {:.2?} (writes {:?})",
            server_side[round].configs,
            server_side[round].writes,
            client_side[round].configs,
            client_side[round].writes
        );
    }

    let (size, json_size) = config_size(&client).await?;
    let baseline_100 = baseline(&client, 100, size, 1).await?;
    let baseline_1000 = baseline(&client, WORKLOADS, size, 1).await?;
    let concurrent_1000 = baseline(&client, WORKLOADS, size, 16).await?;
    let pods_annotated = annotate_every_pod(&client, 16).await?;
    eprintln!(
        "baseline: {WORKLOADS} ConfigMaps one by one {baseline_1000:.2?}, 16 at a time \
         {concurrent_1000:.2?}; {WORKLOADS} pods annotated 16 at a time {pods_annotated:.2?}"
    );
    let peak = operator_peak_rss_mib()?;
    let report = report::report(
        converged,
        &server_side,
        &client_side,
        [baseline_100, baseline_1000, concurrent_1000, pods_annotated],
        (size, json_size),
        peak,
    );
    std::fs::create_dir_all("bench/results")?;
    std::fs::write("bench/results/operator-scale.md", &report)?;
    print!("{report}");
    recreate_namespace(&client, BASELINE_NS).await?;
    Api::<Namespace>::all(client.clone())
        .delete(NS, &DeleteParams::default())
        .await?;
    Api::<Namespace>::all(client)
        .delete(BASELINE_NS, &DeleteParams::default())
        .await?;
    Ok(())
}

fn policy_resource() -> kube::api::ApiResource {
    kube::api::ApiResource {
        group: "braid.dev".into(),
        version: "v1alpha1".into(),
        api_version: "braid.dev/v1alpha1".into(),
        kind: "MeshPolicy".into(),
        plural: "meshpolicies".into(),
    }
}

async fn recreate_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        let _ = api.delete(name, &DeleteParams::default()).await;
        let deadline = Instant::now() + Duration::from_secs(300);
        while api.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("namespace {name} is not going away");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}}))?,
    )
    .await?;
    Ok(())
}

async fn create_fixture(client: &kube::Client) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let policies: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &policy_resource());
    let create = PostParams::default();
    for i in 0..WORKLOADS {
        let pod = json!({
            "metadata": {"name": format!("w-{i}"), "labels": {"braid.dev/workload": format!("w-{i}"), "group": format!("g-{}", i % 10), "service": format!("svc-{}", i / 2)}},
            "spec": {"nodeSelector": {"braid.dev/bench": "nowhere"}, "containers": [{"name": "app", "image": "braid.local/braid-shop:dev"}]}
        });
        pods.create(&create, &serde_json::from_value(pod)?).await?;
    }
    for j in 0..SERVICES {
        let service = json!({"metadata": {"name": format!("svc-{j}")}, "spec": {"ports": [{"name": "http", "port": 80}]}});
        services
            .create(&create, &serde_json::from_value(service)?)
            .await?;
        let endpoints: Vec<_> = (0..2)
            .map(|k| {
                let i = 2 * j + k;
                json!({"addresses": [format!("10.250.{}.{}", i / 250, i % 250 + 1)], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": format!("w-{i}"), "namespace": NS}})
            })
            .collect();
        let slice = json!({
            "metadata": {"name": format!("svc-{j}-bench"), "labels": {"kubernetes.io/service-name": format!("svc-{j}")}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "http", "port": 8080}]
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

/// The hash annotation of every managed ConfigMap in the namespace.
async fn hashes(
    configs: &Api<PartialObjectMeta<ConfigMap>>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let list = configs.list_metadata(&Default::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|m| Some((m.metadata.name?, m.metadata.annotations?.get(HASH)?.clone())))
        .collect())
}

/// Waits until every ConfigMap in `names` exists and none changed for 5 s; returns their hashes.
async fn wait_until_stable(
    configs: &Api<PartialObjectMeta<ConfigMap>>,
    names: &BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, String>> {
    let deadline = Instant::now() + timeout;
    let mut last = BTreeMap::new();
    let mut stable_since = Instant::now();
    loop {
        let now = hashes(configs).await?;
        if now != last {
            stable_since = Instant::now();
            last = now;
        } else if names.iter().all(|n| last.contains_key(n))
            && stable_since.elapsed() > Duration::from_secs(5)
        {
            return Ok(last);
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} ConfigMaps after {timeout:?}",
                last.len(),
                names.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Consumes a watch's initial list, so that only changes after it count.
async fn skip_initial_list<K>(
    events: &mut (impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin),
) -> anyhow::Result<()> {
    while let Some(event) = events.next().await {
        if matches!(event?, watcher::Event::InitDone) {
            break;
        }
    }
    Ok(())
}

/// What one change cost: the time from the patch to the last affected ConfigMap written, and
/// the API server's write requests in that time, by resource.
struct Change {
    configs: Duration,
    writes: BTreeMap<String, f64>,
}

/// Patches a policy and waits until every ConfigMap in `affected` has a new hash.
async fn timed_change(
    client: &kube::Client,
    configs: &Api<PartialObjectMeta<ConfigMap>>,
    policies: &Api<kube::api::DynamicObject>,
    policy: &str,
    patch: serde_json::Value,
    affected: &BTreeSet<String>,
    before: &BTreeMap<String, String>,
) -> anyhow::Result<(Change, BTreeMap<String, String>)> {
    let mut events = watcher(configs.clone(), watcher::Config::default()).boxed();
    skip_initial_list(&mut events).await?;
    let writes_before = braid_e2e::apiserver::writes(client).await?;
    let started = Instant::now();
    policies
        .patch(policy, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    let mut pending = affected.clone();
    let mut now = before.clone();
    while !pending.is_empty() {
        let event = tokio::time::timeout(Duration::from_secs(120), events.next())
            .await
            .with_context(|| format!("{} ConfigMaps still unchanged after 120 s", pending.len()))?
            .context("watch ended")??;
        if let watcher::Event::Apply(meta) = event {
            let (Some(name), Some(hash)) = (
                meta.metadata.name,
                meta.metadata.annotations.and_then(|a| a.get(HASH).cloned()),
            ) else {
                continue;
            };
            if before.get(&name) != Some(&hash) {
                pending.remove(&name);
            }
            now.insert(name, hash);
        }
    }
    let configs_written = started.elapsed();
    // Let the pass finish its status writes before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes =
        braid_e2e::apiserver::since(&writes_before, braid_e2e::apiserver::writes(client).await?);
    Ok((
        Change {
            configs: configs_written,
            writes,
        },
        now,
    ))
}

/// The size of a workload's `proxy.json` as stored (gzip above 64 KiB) and as JSON.
async fn config_size(client: &kube::Client) -> anyhow::Result<(usize, usize)> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let config = api.get("braid-proxy-w-0").await?;
    if let Some(json) = config.data.as_ref().and_then(|d| d.get("proxy.json")) {
        return Ok((json.len(), json.len()));
    }
    let stored = config
        .binary_data
        .as_ref()
        .and_then(|d| d.get("proxy.json"))
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let json = braid_proxy_config::encoding::decode(&stored).map_err(anyhow::Error::msg)?;
    Ok((stored.len(), json.len()))
}

/// The API server storing `count` ConfigMaps of `size` bytes, written from here `in_flight` at a
/// time (1: one after another; 16: as the operator writes them).
async fn baseline(
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

/// The API server taking an annotation on each of the benchmark's pods, `in_flight` at a time:
/// what nudging that many running pods costs (here they are Pending, so the scheduler also
/// looks at each again).
async fn annotate_every_pod(client: &kube::Client, in_flight: usize) -> anyhow::Result<Duration> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let started = Instant::now();
    let stamp = format!("{}", started.elapsed().as_nanos());
    let patches = (0..WORKLOADS).map(|i| {
        let (pods, stamp) = (&pods, &stamp);
        async move {
            let patch = json!({"metadata": {"annotations": {"braid.dev/bench-nudge": stamp}}});
            pods.patch(
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
    Ok(started.elapsed())
}

/// The largest VmHWM among braid-operator processes on this machine, in MiB.
fn operator_peak_rss_mib() -> anyhow::Result<f64> {
    let mut peak_kib = 0u64;
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        if !program.ends_with(b"braid-operator") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok());
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
    }
    if peak_kib == 0 {
        bail!("no braid-operator process found on this machine");
    }
    Ok(peak_kib as f64 / 1024.0)
}
