//! When running proxies apply a change: each is asked for the hash of the config it runs
//! (`GET /config` on its admin port, 15020, what the operator's read-back asks too) until the
//! hash differs from the one it reported before the change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use braid_operator::readback::read_proxy;
use braid_operator::status::synced::Heard;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// How often a proxy is asked while the change has not reached it.
const POLL: Duration = Duration::from_millis(50);

/// The running meshed pods of the namespace, by name, with their IPs; waits up to `timeout` for
/// `expected` of them to run.
pub async fn running_proxies(
    client: &kube::Client,
    namespace: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    loop {
        let mut running = BTreeMap::new();
        for pod in pods.list(&ListParams::default()).await? {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
            let (Some(name), Some(ip)) = (pod.metadata.name.clone(), ip) else {
                continue;
            };
            if config_hash(&ip).await.is_ok() {
                running.insert(name, ip);
            }
        }
        if running.len() >= expected {
            return Ok(running);
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {expected} proxies answer on their pod IPs after {timeout:?} (the benchmark \
                 must run where pod IPs are routed; on the local test cluster, inside its network \
                 namespace, as `make bench` runs it)",
                running.len()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The hash of the config the proxy at `ip` runs, read as the operator reads it.
pub async fn config_hash(ip: &str) -> anyhow::Result<String> {
    match read_proxy(ip).await {
        Heard::Runs { hash, .. } if !hash.is_empty() => Ok(hash),
        Heard::Runs { last_error, .. } => bail!("the proxy runs no config: {last_error:?}"),
        Heard::Unreachable(why) => bail!("{why}"),
    }
}

/// The hash each proxy in `proxies` runs now.
pub async fn hashes(
    proxies: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut hashes = BTreeMap::new();
    for (name, ip) in proxies {
        let hash = config_hash(ip)
            .await
            .with_context(|| format!("proxy of pod {name} ({ip})"))?;
        hashes.insert(name.clone(), hash);
    }
    Ok(hashes)
}

/// Waits until every proxy in `before` runs another config than the one it had; the time from
/// `started` to the last of them.
pub async fn all_changed(
    proxies: &BTreeMap<String, String>,
    before: &BTreeMap<String, String>,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let waits = before.iter().map(|(name, old)| async move {
        let ip = &proxies[name];
        loop {
            if let Ok(hash) = config_hash(ip).await
                && hash != *old
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("the proxy of pod {name} still runs its old config after {timeout:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    });
    let applied = futures::future::try_join_all(waits).await?;
    Ok(applied.into_iter().max().unwrap_or_default())
}
