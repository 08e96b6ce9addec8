//! Applied config made visible, on the real cluster: the operator reads every running proxy's
//! `/config` back, so a MeshRoute shows `SYNCED n/n` and `Programmed` only once every proxy runs
//! it, and a proxy that cannot load the new config (its config volume made unreadable on the
//! node, as the issue suggests) is named in the condition until it catches up.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use braid_e2e::{Cluster, eventually};
use serde_json::Value;

use super::{NS, route};

/// What the MeshRoute reports: (observed generation, generation, SYNCED, Programmed condition).
fn route_state(cluster: &Cluster) -> anyhow::Result<(i64, i64, String, Value)> {
    let object = cluster.get_json(&["meshroute", "-n", NS, "payment-canary"])?;
    let programmed = object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Programmed")
        .cloned()
        .unwrap_or_default();
    Ok((
        object["status"]["observedGeneration"].as_i64().unwrap_or(0),
        object["metadata"]["generation"].as_i64().unwrap_or(-1),
        object["status"]["synced"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        programmed,
    ))
}

/// Applies `object` (the canary route) and waits until the operator reports every proxy
/// running it; the time from the apply.
pub fn apply_and_wait_programmed(cluster: &Cluster, object: &Value) -> anyhow::Result<Duration> {
    let started = Instant::now();
    cluster.apply(object)?;
    eventually(Duration::from_secs(90), || {
        let (observed, generation, synced, programmed) = route_state(cluster)?;
        ensure!(
            observed == generation && programmed["status"] == "True",
            "not programmed yet: {synced} {programmed}"
        );
        Ok(())
    })?;
    Ok(started.elapsed())
}

/// Waits until the route reports `everyone` (`n/n`) in sync and `Programmed`.
fn programmed_on_all(cluster: &Cluster, everyone: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(60), || {
        let (_, _, synced, programmed) = route_state(cluster)?;
        ensure!(
            synced == everyone && programmed["status"] == "True",
            "{synced} {programmed}"
        );
        Ok(())
    })
}

/// Running meshed pods in the cluster (those the operator reads back).
fn running_meshed_pods(cluster: &Cluster) -> anyhow::Result<usize> {
    let pods = cluster.get_json(&["pods", "-A", "-l", "braid.dev/workload"])?;
    Ok(pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .count())
}

/// The node's directory of a pod's `braid-config` volume (the local test cluster's kubelet).
fn config_volume(uid: &str) -> anyhow::Result<PathBuf> {
    let state =
        std::env::var("BRAID_CLUSTER_DIR").unwrap_or_else(|_| "/var/lib/braid-cluster".into());
    let dir = PathBuf::from(state)
        .join("kubelet/pods")
        .join(uid)
        .join("volumes/kubernetes.io~projected/braid-config");
    ensure!(
        dir.is_dir(),
        "{} not found: this check makes a pod's config volume unreadable on the node, so it \
         needs the local test cluster (make cluster-up)",
        dir.display()
    );
    Ok(dir)
}

/// A pod whose proxy cannot read its new config is named until it can, then the route is
/// programmed everywhere again.
pub fn a_proxy_that_cannot_load_its_config_is_named(cluster: &Cluster) -> anyhow::Result<()> {
    super::shop_pod(cluster, NS, "laggard", None)?;
    let uid = cluster.get_json(&["pod", "-n", NS, "laggard"])?["metadata"]["uid"]
        .as_str()
        .context("pod uid")?
        .to_owned();
    let n = running_meshed_pods(cluster)?;
    let everyone = format!("{n}/{n}");
    programmed_on_all(cluster, &everyone)?;

    // The proxy runs as UID 1337; a volume directory only root may enter is unreadable to it.
    let volume = config_volume(&uid)?;
    let mode = std::fs::metadata(&volume)?.permissions().mode();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o700))?;
    let restore = || std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(mode));
    let lagging = (|| {
        cluster.apply(&route(50, 50))?;
        let behind = format!("{}/{n}", n - 1);
        eventually(Duration::from_secs(60), || {
            let (observed, generation, synced, programmed) = route_state(cluster)?;
            let message = programmed["message"].as_str().unwrap_or_default();
            ensure!(
                observed == generation
                    && synced == behind
                    && programmed["status"] == "False"
                    && message.contains("shop/laggard (cannot read")
                    && message.contains("Permission denied"),
                "the laggard is not named: {synced} {programmed}"
            );
            Ok(())
        })?;
        println!("{}", cluster.kubectl(&["get", "meshroute", "-n", NS])?);
        let (_, _, _, programmed) = route_state(cluster)?;
        println!("Programmed: {}", programmed["message"]);
        let ready = cluster.kubectl(&[
            "get",
            "meshroute",
            "-n",
            NS,
            "payment-canary",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
        ])?;
        ensure!(ready == "NotProgrammed", "Ready's reason: {ready}");
        // The shop's policy governs the laggard too: not Ready while its proxy lags.
        let policy = cluster.get_json(&["meshpolicy", "-n", NS, "shop"])?;
        let conditions = policy["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let of = |type_: &str| {
            conditions
                .iter()
                .find(|c| c["type"] == type_)
                .cloned()
                .unwrap_or_default()
        };
        ensure!(
            of("Ready")["reason"] == "NotProgrammed"
                && of("Programmed")["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("shop/laggard")),
            "MeshPolicy shop while the laggard lags: {}",
            policy["status"]
        );
        println!("{}", cluster.kubectl(&["get", "meshpolicies", "-n", NS])?);
        Ok::<_, anyhow::Error>(())
    })();
    restore()?;
    lagging?;

    // Readable again: the proxy loads the file and the route is programmed on every proxy.
    let started = Instant::now();
    programmed_on_all(cluster, &everyone)?;
    println!(
        "the laggard caught up: SYNCED {everyone} {:.1} s after its volume was readable again",
        started.elapsed().as_secs_f64()
    );
    println!("{}", cluster.kubectl(&["get", "meshroute", "-n", NS])?);
    cluster.kubectl(&["delete", "pod", "-n", NS, "laggard", "--wait=false"])?;
    Ok(())
}
