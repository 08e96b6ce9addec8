//! The Markdown report of the operator benchmark (bench/results/operator-scale.md).

use std::collections::BTreeSet;
use std::time::Duration;

use super::{Change, SERVICES, WORKLOADS};

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// `p50 / p99` of one measure over the rounds.
fn spread(changes: &[Change], measure: impl Fn(&Change) -> Duration) -> String {
    let samples: Vec<Duration> = changes.iter().map(measure).collect();
    format!(
        "{:.2} s / {:.2} s",
        percentile(&samples, 0.5).as_secs_f64(),
        percentile(&samples, 0.99).as_secs_f64()
    )
}

pub fn report(
    converged: Duration,
    running: usize,
    server: &[Change],
    client: &[Change],
    [baseline_100, baseline_1000, concurrent_1000, pods_annotated]: [Duration; 4],
    (size, json_size): (usize, usize),
    peak_mib: f64,
) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let row = |name: &str, changes: &[Change], base: Duration| {
        let p99 = percentile(&changes.iter().map(|c| c.configs).collect::<Vec<_>>(), 0.99);
        format!(
            "| {name} | {} | {} | {} | {} | {:.2} s | {:.2} |\n",
            changes.len(),
            spread(changes, |c| c.configs),
            spread(changes, |c| c.nudged),
            spread(changes, |c| c.applied),
            base.as_secs_f64(),
            p99.as_secs_f64() / base.as_secs_f64(),
        )
    };
    // API writes per change, by resource: the median over the rounds.
    let writes = |name: &str, changes: &[Change]| {
        let mut resources: BTreeSet<&String> = BTreeSet::new();
        for change in changes {
            resources.extend(change.writes.keys());
        }
        let cells: Vec<String> = resources
            .into_iter()
            .map(|resource| {
                let mut counts: Vec<f64> = changes
                    .iter()
                    .map(|c| c.writes.get(resource).copied().unwrap_or(0.0))
                    .collect();
                counts.sort_by(f64::total_cmp);
                format!("{resource} {}", counts[counts.len() / 2])
            })
            .collect();
        format!("| {name} | {} |\n", cells.join(", "))
    };
    format!(
        "# Operator at scale\n\n{WORKLOADS} workloads, {SERVICES} Services, each `proxy.json` {json_size} bytes of JSON, stored as {size} bytes{}. \
         {running} of the workloads' pods run on the test node with their proxies; the others are bound to a node no kubelet runs, \
         so the operator nudges every one of the {WORKLOADS} pods as it would running ones, and only the running proxies can show the change applied. \
         Machine: {} cores, {cpu}; the test cluster (kubelet `syncFrequency` 1 min, the upstream default), the operator (2 replicas) and this benchmark share it.\n\n\
         | MeshPolicy change | rounds | ConfigMaps written p50 / p99 | pods nudged p50 / p99 | applied by the running proxies p50 / p99 | ConfigMaps baseline | ConfigMaps p99 / baseline |\n|---|---|---|---|---|---|---|\n{}{}\n\
         Each time runs from the `patch` of the MeshPolicy to the last affected object: ConfigMap rewritten, pod annotated, \
         running proxy answering with the new file's hash on its admin port (asked every 50 ms). \
         The baseline is the API server storing the same number of ConfigMaps of the same size, written one by one \
         from the benchmark in the same run (100 for the server-side change, {WORKLOADS} for the client-side one). \
         With {} rounds, p99 is the slowest round.\n\n\
         API write requests per change (the API server's `apiserver_request_total`, median of the rounds, \
         whatever wrote them: the operator's ConfigMaps, pod nudges and statuses, leader-election renewals, the kubelet's pod statuses):\n\n\
         | change | writes by resource |\n|---|---|\n{}{}\n\
         | measure | value | target |\n|---|---|---|\n\
         | initial convergence ({WORKLOADS} configs and certificates) | {:.1} s | — |\n\
         | operator peak RSS (VmHWM) | {peak_mib:.1} MiB | < 256 MiB |\n\
         | the API server storing {WORKLOADS} such ConfigMaps written 16 at a time | {:.2} s | — |\n\
         | the API server taking an annotation on each of the {WORKLOADS} pods, 16 at a time (the nudges alone) | {:.2} s | — |\n",
        if size < json_size {
            " (gzip under `binaryData`)"
        } else {
            ""
        },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        row(
            "server side (mTLS mode; 100 workloads affected)",
            server,
            baseline_100
        ),
        row(
            "client side (load balancer; all 1,000 affected)",
            client,
            baseline_1000
        ),
        server.len(),
        writes("server side", server),
        writes("client side", client),
        converged.as_secs_f64(),
        concurrent_1000.as_secs_f64(),
        pods_annotated.as_secs_f64(),
    )
}
