//! `make bench` part: the operator at scale, a change from `kubectl apply` to the proxies
//! running it. 1,000 meshed workloads behind 500 Services whose EndpointSlices this program
//! writes; every 50th workload's pod runs on the test node with its proxy, the others are bound
//! to a node no kubelet runs (see `fixture`), so the operator nudges all 1,000 as it would
//! running pods. Then, repeatedly:
//! - a server-side MeshPolicy change (mTLS mode) that affects the 100 workloads it selects (a
//!   tenth);
//! - a client-side change (load balancer) of the workloads behind one Service, which every
//!   workload calls, so the destinations every proxy runs change: the namespace's
//!   `destinations.json` is rewritten and all 1,000 pods are nudged;
//!
//! and the time from the `patch` to the last affected ConfigMap written, to the last affected
//! pod nudged, and to the last running proxy running the new files, with the API server's write
//! requests per change by resource. Then bursts of endpoint changes, as a rollout makes them
//! (see `burst`): the pod writes one costs, and when every running proxy runs its last change. The baselines, in the same run: the API server storing 100
//! ConfigMaps of a whole document's size one by one, 1,000 of them 32 at a time (what the
//! client-side change cost when every `proxy.json` carried the destinations), and taking an
//! annotation on every pod, 32 at a time as the operator nudges, and on as many pods without
//! Braid's containers (the share of a pod write that the injected spec adds).
//! Also the operator's peak RSS (VmHWM). Writes a Markdown table to bench/results/operator-scale.md
//! (`operator-scale-<n>.md` at another scale: `BENCH_WORKLOADS=<n>`, with n/2 Services;
//! elsewhere: `BENCH_RESULTS=<file>`), and every round's figures as tab-separated lines to
//! `BENCH_ROUNDS=<file>` when set (what `e2e/cluster/scripts/operator-ab.sh` compares).

mod applied;
mod baselines;
mod burst;
mod fixture;
mod procs;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde_json::json;

const NS: &str = "braid-bench-scale";
const BASELINE_NS: &str = "braid-bench-baseline";
/// The default scale: meshed workloads, and half as many Services.
const DEFAULT_WORKLOADS: usize = 1000;

/// Meshed workloads: `BENCH_WORKLOADS`, or [`DEFAULT_WORKLOADS`].
fn workloads() -> usize {
    static WORKLOADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKLOADS.get_or_init(|| {
        std::env::var("BENCH_WORKLOADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n >= 4)
            .unwrap_or(DEFAULT_WORKLOADS)
    })
}

/// Services, each in front of two workloads.
fn services() -> usize {
    workloads() / 2
}
const HASH: &str = "braid.dev/config-hash";
/// How long a change may take to reach everything before the benchmark gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the API server is left alone before a baseline is measured.
const SETTLE: Duration = Duration::from_secs(10);

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
    let injected = json!({"braid.dev/inject": "enabled"});
    fixture::recreate_namespace(&client, NS, Some(injected)).await?;
    fixture::recreate_namespace(&client, BASELINE_NS, Some(json!({}))).await?;
    fixture::create_hollow_node(&client).await?;

    let started = Instant::now();
    fixture::create(&client, NS).await?;
    let configs: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client.clone(), NS);
    let workloads = workloads();
    let all: BTreeSet<usize> = (0..workloads).collect();
    wait_until_stable(&configs, &all, Duration::from_secs(600)).await?;
    let converged = started.elapsed();
    eprintln!("initial: {workloads} workloads converged in {converged:.1?}");
    let running = (0..workloads).filter(|i| fixture::runs(*i)).count();
    let proxies = applied::running_proxies(&client, NS, running, Duration::from_secs(600)).await?;
    eprintln!("{} proxies running", proxies.len());
    let model = proxies.keys().next().context("no proxy runs")?;
    let running_status = fixture::status_of_running_pod(&client, NS, model).await?;
    fixture::give_hollow_pods_a_status(&client, NS, &running_status).await?;

    let policies: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &fixture::policy_resource());
    let (mut server_side, mut client_side) = (Vec::new(), Vec::new());
    let group0: BTreeSet<usize> = (0..workloads).filter(|i| i % 10 == 0).collect();
    for round in 0..iterations {
        let mode = if round % 2 == 0 {
            "STRICT"
        } else {
            "PERMISSIVE"
        };
        let patch = json!({"spec": {"mtls": {"mode": mode}}});
        let group0_configs = group0.iter().map(|i| config_map_of(*i)).collect();
        let change = timed_change(
            &client,
            &proxies,
            &policies,
            ("group-0", patch),
            &group0,
            group0_configs,
        )
        .await?;
        server_side.push(change);
        let balancer = if round % 2 == 0 {
            "LEAST_CONN"
        } else {
            "ROUND_ROBIN"
        };
        let patch = json!({"spec": {"loadBalancer": balancer}});
        let destinations = BTreeSet::from(["braid-destinations".to_owned()]);
        let change = timed_change(
            &client,
            &proxies,
            &policies,
            ("svc-1-backends", patch),
            &all,
            destinations,
        )
        .await?;
        client_side.push(change);
        eprintln!(
            "round {round}: server-side {}; client-side {}",
            server_side[round], client_side[round]
        );
    }

    let mut bursts = Vec::new();
    for round in 0..iterations {
        let burst = burst::rollout(&client, &proxies, round).await?;
        eprintln!("burst {round}: {burst}");
        bursts.push(burst);
    }

    let document = stored_size(&client, "braid-proxy-w-0", "proxy.json").await?;
    let destinations = stored_size(&client, "braid-destinations", "destinations.json").await?;
    // A whole document, as every workload's was before the split: about the destinations'.
    let whole = destinations.0;
    let one_by_one = baselines::baseline(&client, group0.len(), whole, 1).await?;
    let concurrent_all = baselines::baseline(&client, workloads, whole, 32).await?;
    // Each annotation baseline starts once the API server is done with what came before (the
    // ConfigMaps, the pods created), so that its CPU time is the annotations'.
    tokio::time::sleep(SETTLE).await;
    let meshed = baselines::annotate_every_pod(&client, NS, 32).await?;
    fixture::create_plain_pods(&client, BASELINE_NS).await?;
    let plain_status = fixture::without_init_containers(&running_status);
    fixture::give_hollow_pods_a_status(&client, BASELINE_NS, &plain_status).await?;
    tokio::time::sleep(SETTLE).await;
    let plain = baselines::annotate_every_pod(&client, BASELINE_NS, 32).await?;
    eprintln!(
        "baseline: {workloads} ConfigMaps 32 at a time {concurrent_all:.2?}; {workloads} pods \
         annotated 32 at a time {:.2?} (API server CPU {:?}), {:.2?} (CPU {:?}) without Braid's \
         containers (pods of {} and {} bytes)",
        meshed.took,
        meshed.apiserver_cpu,
        plain.took,
        plain.apiserver_cpu,
        meshed.pod_bytes,
        plain.pod_bytes
    );
    let peak = procs::operator_peak_rss_mib()?;
    let baselines = report::Baselines {
        configs_one_by_one: one_by_one,
        configs_all: concurrent_all,
        meshed,
        plain,
    };
    let rounds = report::Rounds {
        server: &server_side,
        client: &client_side,
        bursts: &bursts,
    };
    if let Ok(path) = std::env::var("BENCH_ROUNDS") {
        std::fs::write(path, report::rounds_tsv(converged, &rounds))?;
    }
    let report = report::report(
        converged,
        proxies.len(),
        rounds,
        baselines,
        [document, destinations],
        peak,
    );
    std::fs::create_dir_all("bench/results")?;
    let file = if let Ok(file) = std::env::var("BENCH_RESULTS") {
        file
    } else if workloads == DEFAULT_WORKLOADS {
        "bench/results/operator-scale.md".to_owned()
    } else {
        format!("bench/results/operator-scale-{workloads}.md")
    };
    std::fs::write(&file, &report)?;
    print!("{report}");
    fixture::recreate_namespace(&client, BASELINE_NS, None).await?;
    fixture::recreate_namespace(&client, NS, None).await?;
    fixture::delete_hollow_node(&client).await?;
    Ok(())
}

/// Waits until the ConfigMap of every workload in `workloads` exists and none changed for 5 s.
async fn wait_until_stable(
    configs: &Api<PartialObjectMeta<ConfigMap>>,
    workloads: &BTreeSet<usize>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = BTreeMap::new();
    let mut stable_since = Instant::now();
    loop {
        let list = configs.list_metadata(&Default::default()).await?;
        let now: BTreeMap<String, String> = list
            .items
            .into_iter()
            .filter_map(|m| Some((m.metadata.name?, m.metadata.annotations?.get(HASH)?.clone())))
            .collect();
        if now != last {
            stable_since = Instant::now();
            last = now;
        } else if workloads
            .iter()
            .all(|i| last.contains_key(&config_map_of(*i)))
            && stable_since.elapsed() > Duration::from_secs(5)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {} ConfigMaps after {timeout:?}",
                last.len(),
                workloads.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn config_map_of(workload: usize) -> String {
    format!("braid-proxy-w-{workload}")
}

fn pod_of(workload: usize) -> String {
    format!("w-{workload}")
}

type Events<K> = futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// Starts watching `api`; the [`HASH`] annotation of every object now, and the watch, whose
/// events from then on are changes.
async fn watch_hashes<K>(
    api: &Api<PartialObjectMeta<K>>,
) -> anyhow::Result<(BTreeMap<String, String>, Events<PartialObjectMeta<K>>)>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut hashes = BTreeMap::new();
    while let Some(event) = events.next().await {
        match event? {
            watcher::Event::InitApply(meta) => {
                if let (Some(name), Some(hash)) =
                    (meta.metadata.name, annotation(&meta.metadata.annotations))
                {
                    hashes.insert(name, hash);
                }
            }
            watcher::Event::InitDone => return Ok((hashes, events)),
            _ => {}
        }
    }
    bail!("the watch ended before its initial list")
}

fn annotation(annotations: &Option<BTreeMap<String, String>>) -> Option<String> {
    annotations.as_ref()?.get(HASH).cloned()
}

/// Waits until every object in `names` carries another [`HASH`] than in `before`; the time
/// from `started` to the last of them.
async fn all_rehashed<K>(
    mut events: Events<PartialObjectMeta<K>>,
    mut names: BTreeSet<String>,
    before: &BTreeMap<String, String>,
    started: Instant,
    what: &str,
) -> anyhow::Result<Duration> {
    while !names.is_empty() {
        let left = CHANGE_TIMEOUT.saturating_sub(started.elapsed());
        let event = tokio::time::timeout(left, events.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!("{} {what} unchanged after {CHANGE_TIMEOUT:?}", names.len())
            })?
            .context("watch ended")??;
        if let watcher::Event::Apply(meta) = event
            && let (Some(name), Some(hash)) =
                (meta.metadata.name, annotation(&meta.metadata.annotations))
            && before.get(&name) != Some(&hash)
        {
            names.remove(&name);
        }
    }
    Ok(started.elapsed())
}

/// What one change cost: the time from the patch to the last affected ConfigMap written, to the
/// last affected pod nudged and to the last running proxy running the new file, and the API
/// server's write requests in that time, by resource.
struct Change {
    configs: Duration,
    nudged: Duration,
    applied: Duration,
    writes: BTreeMap<String, f64>,
    /// CPU time spent on the machine from the patch until every running proxy applied it.
    cpu: procs::CpuTimes,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConfigMaps {:.2?}, pods nudged {:.2?}, applied {:.2?} (writes {:?}; CPU {:?})",
            self.configs, self.nudged, self.applied, self.writes, self.cpu
        )
    }
}

/// Patches a policy and waits until every ConfigMap in `config_maps` changed, each pod of the
/// workloads in `affected` was nudged and each of their running proxies runs the new files.
async fn timed_change(
    client: &kube::Client,
    proxies: &BTreeMap<String, String>,
    policies: &Api<kube::api::DynamicObject>,
    (policy, patch): (&str, serde_json::Value),
    affected: &BTreeSet<usize>,
    config_maps: BTreeSet<String>,
) -> anyhow::Result<Change> {
    let (configs_before, config_events) = watch_hashes(
        &Api::<PartialObjectMeta<ConfigMap>>::namespaced(client.clone(), NS),
    )
    .await?;
    let (pods_before, pod_events) = watch_hashes(&Api::<PartialObjectMeta<Pod>>::namespaced(
        client.clone(),
        NS,
    ))
    .await?;
    let affected_pods: BTreeSet<String> = affected.iter().map(|i| pod_of(*i)).collect();
    let proxies_before = applied::hashes(proxies)
        .await?
        .into_iter()
        .filter(|(name, _)| affected_pods.contains(name))
        .collect();
    let writes_before = braid_e2e::apiserver::writes(client).await?;
    let cpu_before = procs::CpuTimes::now();
    let started = Instant::now();
    policies
        .patch(policy, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    let (configs, nudged, applied) = tokio::try_join!(
        all_rehashed(
            config_events,
            config_maps,
            &configs_before,
            started,
            "ConfigMaps"
        ),
        all_rehashed(
            pod_events,
            affected_pods.clone(),
            &pods_before,
            started,
            "pods"
        ),
        applied::all_changed(proxies, &proxies_before, started, CHANGE_TIMEOUT),
    )?;
    let cpu = procs::CpuTimes::now().since(cpu_before);
    // Let the pass finish its status writes before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes =
        braid_e2e::apiserver::since(&writes_before, braid_e2e::apiserver::writes(client).await?);
    Ok(Change {
        configs,
        nudged,
        applied,
        writes,
        cpu,
    })
}

/// The size of file `key` of ConfigMap `name` as stored (gzip above 64 KiB) and as JSON.
async fn stored_size(
    client: &kube::Client,
    name: &str,
    key: &str,
) -> anyhow::Result<(usize, usize)> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let (stored, json) = stored_file(&api.get(name).await?, key)?;
    Ok((stored, json.len()))
}

/// File `key` of `config`: its size as stored (under `data`, or gzip-compressed under
/// `binaryData`), and its JSON.
fn stored_file(config: &ConfigMap, key: &str) -> anyhow::Result<(usize, Vec<u8>)> {
    if let Some(json) = config.data.as_ref().and_then(|d| d.get(key)) {
        return Ok((json.len(), json.clone().into_bytes()));
    }
    let stored = config
        .binary_data
        .as_ref()
        .and_then(|d| d.get(key))
        .with_context(|| format!("the ConfigMap holds no {key}"))?;
    let json = braid_proxy_config::encoding::decode(&stored.0).map_err(anyhow::Error::msg)?;
    Ok((stored.0.len(), json.into_owned()))
}
