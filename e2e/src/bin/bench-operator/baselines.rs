//! The baselines the benchmark measures in the same run, what the operator's writes cost the
//! API server on their own: ConfigMaps of a document's size, an annotation on every pod (with
//! the API server's CPU time, when it runs on this machine); and the operator's peak RSS.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

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

/// The `/proc` directories of this machine's processes whose program and first argument
/// `match`.
fn processes(matches: impl Fn(&[u8], Option<&[u8]>) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            std::fs::read(path.join("cmdline")).is_ok_and(|cmdline| {
                let mut args = cmdline.split(|b| *b == 0);
                let program = args.next().unwrap_or_default();
                matches(program, args.next())
            })
        })
        .collect()
}

/// The CPU time (user and system) of the API server process on this machine so far; `None`
/// when it runs elsewhere.
fn apiserver_cpu() -> Option<Duration> {
    // kube-apiserver, or the test cluster's one binary for every component (`kube apiserver`).
    let path = processes(|program, first| {
        program.ends_with(b"kube-apiserver")
            || (program.ends_with(b"/kube") && first == Some(&b"apiserver"[..]))
    })
    .into_iter()
    .next()?;
    let stat = std::fs::read_to_string(path.join("stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime (fields 14 and 15 of proc(5)), in clock ticks: 100 a second on Linux.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The largest VmHWM among braid-operator processes on this machine, in MiB.
pub fn operator_peak_rss_mib() -> anyhow::Result<f64> {
    let mut peak_kib = 0u64;
    for path in processes(|program, _| program.ends_with(b"braid-operator")) {
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
