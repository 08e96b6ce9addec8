//! A burst of changes, as a rollout makes them: one endpoint of each of [`CHANGES`] Services
//! turns not ready (or ready again in the next round), [`SPACING`] apart. Each change rewrites
//! the destinations every proxy runs, so each, nudged on its own, would write every pod. What
//! the burst costs in API writes, and how long after its first and its last change every running
//! proxy runs the final files.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use braid_api::{DESTINATIONS_CONFIG_MAP, proxy_config_map_name};
use braid_operator::configs::FILE_HASH;
use braid_proxy_config::Destination;
use braid_proxy_config::split::{DESTINATIONS_FILE, combined_hash};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::procs::CpuTimes;
use super::{CHANGE_TIMEOUT, NS, applied, fixture, services, stored_file};

/// Changes in a burst.
pub const CHANGES: usize = 10;
/// Between two changes of a burst.
pub const SPACING: Duration = Duration::from_millis(200);
/// The burst is over once no running proxy took other files for this long after its last change.
const QUIET: Duration = Duration::from_secs(5);
/// How often each running proxy is asked which files it runs.
const POLL: Duration = Duration::from_millis(50);

/// What one burst cost.
pub struct Burst {
    /// From the first change until every running proxy ran the final files.
    pub from_first: Duration,
    /// From the last change until then.
    pub from_last: Duration,
    /// The API server's write requests, by resource, from the first change until a quiet
    /// [`QUIET`] after the last proxy took its files (and 2 s for the statuses).
    pub writes: BTreeMap<String, f64>,
    /// CPU time spent on this machine from the first change until the last running proxy took
    /// the final files.
    pub cpu: CpuTimes,
}

impl std::fmt::Display for Burst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "applied {:.2?} after the first change, {:.2?} after the last (writes {:?}; CPU {:?})",
            self.from_first, self.from_last, self.writes, self.cpu
        )
    }
}

/// The Service whose endpoint the `k`th change of a burst changes: away from the one the
/// MeshPolicies select.
fn service(k: usize) -> usize {
    (services() / 2 + k) % services()
}

/// Runs one burst (`round` decides whether its endpoints go not ready or ready again) while
/// asking every proxy in `proxies` (pod name → IP) which files it runs, and checks that each
/// ends on the files the operator last wrote.
pub async fn rollout(
    client: &kube::Client,
    proxies: &BTreeMap<String, String>,
    round: usize,
) -> anyhow::Result<Burst> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let first_ready = round % 2 == 1;
    let mut hashes = applied::hashes(proxies).await?;
    let writes_before = braid_e2e::apiserver::writes(client).await?;
    let cpu_before = CpuTimes::now();
    let started = Instant::now();
    let last_change = OnceLock::new();
    let changes = async {
        for k in 0..CHANGES {
            tokio::time::sleep_until((started + SPACING * k as u32).into()).await;
            let patch = json!({"endpoints": fixture::endpoints(NS, service(k), first_ready)});
            slices
                .patch(
                    &fixture::slice_name(service(k)),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await?;
        }
        let _ = last_change.set(started.elapsed());
        Ok::<_, anyhow::Error>(())
    };
    let watch = async {
        let mut took_files: Option<Duration> = None;
        let mut cpu = CpuTimes::default();
        loop {
            if let Some(last) = last_change.get()
                && started.elapsed() >= took_files.unwrap_or_default().max(*last) + QUIET
            {
                return Ok((took_files.unwrap_or_default(), cpu));
            }
            if started.elapsed() > CHANGE_TIMEOUT {
                bail!("the running proxies still took new files {CHANGE_TIMEOUT:?} into a burst");
            }
            let now = applied::hashes(proxies).await?;
            if now != hashes {
                took_files = Some(started.elapsed());
                cpu = CpuTimes::now().since(cpu_before);
                hashes = now;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let ((), (took_files, cpu)) = tokio::try_join!(changes, watch)?;
    let last = *last_change
        .get()
        .context("the burst's changes did not end")?;
    expect_final_files(client, &hashes, first_ready).await?;
    // Let the operator finish its status writes before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes =
        braid_e2e::apiserver::since(&writes_before, braid_e2e::apiserver::writes(client).await?);
    Ok(Burst {
        from_first: took_files,
        from_last: took_files.saturating_sub(last),
        writes,
        cpu,
    })
}

/// Fails unless the namespace's `destinations.json` holds every change of the burst and each
/// proxy in `hashes` (pod name → the hash it reports) runs it beside its workload's `proxy.json`
/// as the operator last wrote them.
async fn expect_final_files(
    client: &kube::Client,
    hashes: &BTreeMap<String, String>,
    first_ready: bool,
) -> anyhow::Result<()> {
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let shared = configs.get(DESTINATIONS_CONFIG_MAP).await?;
    let (_, json) = stored_file(&shared, DESTINATIONS_FILE)?;
    let destinations: Vec<Destination> = serde_json::from_slice(&json)?;
    let ready = if first_ready { 2 } else { 1 };
    for k in 0..CHANGES {
        let name = format!("svc-{}.{NS}", service(k));
        let endpoints = destinations
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.ports.first())
            .map_or(0, |p| p.endpoints.len());
        if endpoints != ready {
            bail!(
                "after the burst, destinations.json gives {name} {endpoints} ready endpoints, not {ready}"
            );
        }
    }
    let file_hash = |config: &ConfigMap| {
        let annotations = config.metadata.annotations.as_ref();
        annotations.and_then(|a| a.get(FILE_HASH)).cloned()
    };
    let destinations_hash = file_hash(&shared).context("braid-destinations has no file hash")?;
    for (pod, runs) in hashes {
        // The benchmark names each workload's pod after it.
        let own = configs.get(&proxy_config_map_name(pod)).await?;
        let own_hash =
            file_hash(&own).with_context(|| format!("{pod}'s ConfigMap has no file hash"))?;
        if *runs != combined_hash(&own_hash, &destinations_hash) {
            bail!(
                "after the burst, the proxy of pod {pod} does not run the files the operator last wrote"
            );
        }
    }
    Ok(())
}
