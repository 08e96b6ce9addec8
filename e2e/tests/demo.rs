//! The demo shop through the mesh, on the real cluster with Braid installed from manifests: every
//! shop pod is injected, STRICT mTLS keeps the bytes between pods encrypted and refuses a pod
//! outside the mesh, a MeshRoute canary splits payments 80/20 and then moves them all to v2
//! without a failed order, LEAST_CONN sends fewer requests than ROUND_ROBIN to a slow backend,
//! rolling restarts, a canary failing half its requests and a hung pod cost (next to) no order
//! under the demo's retry and outlier policy, and only order may call payment: loadgen and a pod
//! of another service account get 403 from payment's proxy while orders succeed, until dry-run
//! lets them through and counts them.
//! The measured numbers are printed (run with `--nocapture` to see them).

#[path = "demo/authz.rs"]
mod authz;
#[path = "demo/resilience.rs"]
mod resilience;
#[path = "demo/synced.rs"]
mod synced;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use braid_e2e::{Cluster, eventually};
use serde_json::{Value, json};

const NS: &str = "shop";
const ORDER_URL: &str = "http://order:8080/order";
/// The network namespace of the local test cluster (e2e/cluster/scripts/lib.sh).
const CLUSTER_NETNS: &str = "braid-cluster";
/// The bridge every pod of the local cluster is plugged into.
const POD_BRIDGE: &str = "braid0";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy_dir() -> String {
    repo()
        .join("examples/shop/deploy")
        .to_string_lossy()
        .into_owned()
}

/// Places `count` orders from the traffic generator's pod (so through its proxy); the summary.
fn orders(cluster: &Cluster, count: u32, concurrency: u32) -> anyhow::Result<Value> {
    let out = cluster.exec(
        NS,
        "deploy/loadgen",
        &[
            "braid-shop",
            "orders",
            "--url",
            ORDER_URL,
            "--count",
            &count.to_string(),
            "--concurrency",
            &concurrency.to_string(),
        ],
    )?;
    Ok(serde_json::from_str(out.trim())?)
}

fn share(summary: &Value, service: &str, version: &str) -> f64 {
    let versions = &summary["versions"][service];
    let total: u64 = versions
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    versions[version].as_u64().unwrap_or(0) as f64 * 100.0 / total.max(1) as f64
}

/// The config generation of the order pod's proxy, read from its admin port over loopback.
fn order_proxy_generation(cluster: &Cluster) -> anyhow::Result<u64> {
    let out = cluster.exec(
        NS,
        "deploy/order",
        &["braid-shop", "get", "http://127.0.0.1:15020/config"],
    )?;
    let config: Value = serde_json::from_str(out.trim())?;
    config["generation"].as_u64().context("no generation")
}

/// Applies `object` and waits until the order pod's proxy has loaded a newer config.
fn apply_and_wait_for_order_proxy(cluster: &Cluster, object: &Value) -> anyhow::Result<Duration> {
    let before = order_proxy_generation(cluster)?;
    let started = Instant::now();
    cluster.apply(object)?;
    eventually(Duration::from_secs(90), || {
        ensure!(
            order_proxy_generation(cluster)? > before,
            "old config still in force"
        );
        Ok(())
    })?;
    Ok(started.elapsed())
}

/// The traffic generator in the background for `seconds`, two orders at a time.
fn background_orders(cluster: &Cluster, seconds: u32) -> anyhow::Result<std::process::Child> {
    let seconds = seconds.to_string();
    cluster.spawn(&[
        "exec",
        "-n",
        NS,
        "deploy/loadgen",
        "--",
        "braid-shop",
        "orders",
        "--url",
        ORDER_URL,
        "--duration",
        &seconds,
        "--concurrency",
        "2",
    ])
}

/// The summary a background traffic generator printed when it finished.
fn summary_of(load: std::process::Child) -> anyhow::Result<Value> {
    let output = load.wait_with_output()?;
    serde_json::from_slice(&output.stdout)
        .with_context(|| String::from_utf8_lossy(&output.stderr).into_owned())
}

fn route(v1: u32, v2: u32) -> Value {
    json!({
        "apiVersion": "braid.dev/v1alpha1", "kind": "MeshRoute",
        "metadata": {"name": "payment-canary", "namespace": NS},
        "spec": {"service": "payment", "rules": [{"backends": [
            {"service": "payment-v1", "weight": v1}, {"service": "payment-v2", "weight": v2}]}]}
    })
}

fn inventory_policy(balancer: &str) -> Value {
    json!({
        "apiVersion": "braid.dev/v1alpha1", "kind": "MeshPolicy",
        "metadata": {"name": "inventory", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "inventory"}},
                 "mtls": {"mode": "STRICT"}, "loadBalancer": balancer}
    })
}

/// Waits until `deployment` of the shop has rolled out.
fn rollout_status(cluster: &Cluster, deployment: &str) -> anyhow::Result<()> {
    cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        NS,
        &format!("deployment/{deployment}"),
        "--timeout=180s",
    ])?;
    Ok(())
}

fn deploy_shop(cluster: &Cluster) -> anyhow::Result<()> {
    cluster.kubectl(&["apply", "-k", &deploy_dir()])?;
    cluster.kubectl(&["apply", "-f", &format!("{}/policies.yaml", deploy_dir())])?;
    for deployment in [
        "user",
        "order",
        "inventory-fast",
        "inventory-slow",
        "payment-v1",
        "payment-v2",
        "loadgen",
    ] {
        rollout_status(cluster, deployment)?;
    }
    Ok(())
}

fn every_pod_is_meshed(cluster: &Cluster) -> anyhow::Result<()> {
    let pods = cluster.get_json(&["pods", "-n", NS])?;
    let pods = pods["items"].as_array().cloned().unwrap_or_default();
    ensure!(pods.len() >= 7, "{} shop pods", pods.len());
    for pod in &pods {
        braid_e2e::meshed_and_ready(pod)?;
    }
    Ok(())
}

/// Captures TCP on the pod bridge while `traffic` runs; the bytes of the capture.
fn capture(traffic: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<Vec<u8>> {
    let file = std::env::temp_dir().join(format!("braid-demo-{}.pcap", std::process::id()));
    let mut dump = Command::new("ip")
        .args(["netns", "exec", CLUSTER_NETNS, "tcpdump", "-i", POD_BRIDGE])
        .args([
            "--immediate-mode",
            "-U",
            "-w",
            &file.to_string_lossy(),
            "tcp port 8080",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("tcpdump in the cluster's network namespace (the local test cluster only)")?;
    let stderr = dump.stderr.take().context("stderr")?;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    ensure!(
        lines.any(|l| l.is_ok_and(|l| l.contains("listening on"))),
        "tcpdump did not start"
    );
    let outcome = traffic();
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").arg(dump.id().to_string()).status();
    let _ = dump.wait();
    outcome?;
    let bytes = std::fs::read(&file)?;
    let _ = std::fs::remove_file(&file);
    Ok(bytes)
}

/// Starts a bare `braid-shop serve` pod (as `service_account`, or the default one) and waits
/// until it is Ready.
fn shop_pod(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    service_account: Option<&str>,
) -> anyhow::Result<()> {
    let mut spec = json!({"containers": [{"name": "app", "image": "braid.local/braid-shop:dev",
                                          "imagePullPolicy": "IfNotPresent", "args": ["serve"]}]});
    if let Some(account) = service_account {
        spec["serviceAccountName"] = account.into();
    }
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec
    }))?;
    cluster.kubectl(&[
        "wait",
        "-n",
        namespace,
        &format!("pod/{name}"),
        "--for=condition=Ready",
        "--timeout=90s",
    ])?;
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_demo_shop_runs_through_the_mesh() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    deploy_shop(&cluster)?;
    every_pod_is_meshed(&cluster)?;
    let policies = cluster.kubectl(&["get", "meshpolicies", "-n", NS])?;
    println!("{policies}");
    ensure!(
        policies.contains("MTLS") && policies.contains("WORKLOADS"),
        "{policies}"
    );
    ensure!(
        policies
            .lines()
            .any(|l| l.starts_with("shop ") && l.contains("STRICT")),
        "{policies}"
    );

    // STRICT: wait until payment refuses a pod outside the mesh, then capture meshed traffic.
    let outsider = cluster.namespace("braid-e2e-outsider")?;
    shop_pod(&cluster, &outsider.name, "outsider", None)?;
    let from_outside = || {
        cluster.exec(
            &outsider.name,
            "outsider",
            &[
                "braid-shop",
                "get",
                "http://payment.shop:8080/outsider-probe",
            ],
        )
    };
    eventually(Duration::from_secs(90), || {
        ensure!(from_outside().is_err(), "payment still serves plaintext");
        Ok(())
    })?;
    // Pods are Ready before their EndpointSlices reach the operator and its ConfigMaps reach the
    // callers' proxies (the kubelet syncs volumes about once a minute): wait until order's proxy
    // knows every backend, payment-v2 included, before asking that nothing fails.
    eventually(Duration::from_secs(120), || {
        let probe = orders(&cluster, 30, 3)?;
        ensure!(probe["failed"] == 0, "the mesh has not converged: {probe}");
        Ok(())
    })?;
    let first = orders(&cluster, 20, 2)?;
    ensure!(
        first["failed"] == 0,
        "meshed orders failed under STRICT: {first}"
    );
    let captured = capture(|| {
        let summary = orders(&cluster, 50, 2)?;
        ensure!(summary["failed"] == 0, "{summary}");
        let refused = from_outside();
        ensure!(
            refused.is_err(),
            "payment served a pod outside the mesh: {refused:?}"
        );
        Ok(())
    })?;
    ensure!(
        contains(&captured, b"/outsider-probe"),
        "the capture missed the outsider's plaintext request ({} bytes)",
        captured.len()
    );
    for plaintext in [&b"/charge"[..], b"\"role\"", b"/stock/"] {
        ensure!(
            !contains(&captured, plaintext),
            "{} crossed the pod network in the clear",
            String::from_utf8_lossy(plaintext)
        );
    }
    ensure!(
        contains(&captured, &[0x17, 0x03, 0x03]),
        "no TLS records between the shop pods"
    );
    drop(outsider);

    // Canary: 80/20 over 1,000 orders, then 0/100 under load without a failed order.
    eventually(Duration::from_secs(90), || {
        let summary = orders(&cluster, 100, 4)?;
        ensure!(
            share(&summary, "payment", "v2") > 0.0,
            "no payment reached v2 yet: {summary}"
        );
        Ok(())
    })?;
    let split = orders(&cluster, 1000, 4)?;
    let v2 = share(&split, "payment", "v2");
    println!("canary 80/20 over 1,000 orders: v2 took {v2:.1}% ({split})");
    ensure!(split["failed"] == 0, "{split}");
    ensure!(
        (16.0..=24.0).contains(&v2),
        "80/20 off by more than 4 points: {split}"
    );

    let load = background_orders(&cluster, 40)?;
    std::thread::sleep(Duration::from_secs(3));
    let started = Instant::now();
    cluster.apply(&route(0, 100))?;
    eventually(Duration::from_secs(90), || {
        let summary = orders(&cluster, 20, 2)?;
        ensure!(
            share(&summary, "payment", "v2") == 100.0,
            "still split: {summary}"
        );
        Ok(())
    })?;
    let switch = started.elapsed();
    println!(
        "canary 0/100: every order on v2 {:.1} s after kubectl apply",
        switch.as_secs_f64()
    );
    let during = summary_of(load)?;
    println!("orders during the switch: {during}");
    ensure!(
        during["failed"] == 0,
        "orders failed during the switch: {during}"
    );
    ensure!(
        share(&during, "payment", "v1") > 0.0 && share(&during, "payment", "v2") > 0.0,
        "the load did not span the switch: {during}"
    );

    // Ten canary changes under load on the kubelet's stock sync period: each from `kubectl
    // apply` to the MeshRoute reporting every proxy running it (Programmed, from the operator's
    // read-back of each proxy; the operator nudges the pods so the kubelet swaps the file).
    let load = background_orders(&cluster, 30)?;
    let mut applied = Vec::new();
    for change in 0..10 {
        let (v1, v2) = if change % 2 == 0 { (80, 20) } else { (0, 100) };
        applied.push(synced::apply_and_wait_programmed(&cluster, &route(v1, v2))?);
    }
    applied.sort();
    let (p50, p99) = (applied[4], applied[9]);
    println!(
        "10 canary changes, kubectl apply to every proxy running it (Programmed): p50 {:.2} s, p99 {:.2} s",
        p50.as_secs_f64(),
        p99.as_secs_f64()
    );
    println!("{}", cluster.kubectl(&["get", "meshroute", "-n", NS])?);
    let during = summary_of(load)?;
    println!("orders during the ten changes: {during}");
    ensure!(
        during["failed"] == 0,
        "orders failed during the changes: {during}"
    );
    // The figure against the 3 s target is reported above, not asserted (speed is the
    // benchmarks' business); what is asserted is the mechanism: without the nudge a change
    // waits for the kubelet's sync, a minute or more.
    ensure!(
        p99 < Duration::from_secs(30),
        "a config change took {:.2} s to reach the order proxy: the kubelet's sync, not the nudge",
        p99.as_secs_f64()
    );
    synced::a_proxy_that_cannot_load_its_config_is_named(&cluster)?;

    // Least connections against round robin, with one slow (200 ms) inventory backend.
    let mut slow_share = Vec::new();
    for balancer in ["ROUND_ROBIN", "LEAST_CONN"] {
        let waited = apply_and_wait_for_order_proxy(&cluster, &inventory_policy(balancer))?;
        let summary = orders(&cluster, 300, 8)?;
        ensure!(summary["failed"] == 0, "{summary}");
        let slow = share(&summary, "inventory", "slow");
        println!(
            "{balancer}: {:.1}% of 300 orders to the slow inventory ({}), config in force {:.1} s after apply",
            slow,
            summary["versions"]["inventory"],
            waited.as_secs_f64()
        );
        slow_share.push(slow);
    }
    ensure!(
        slow_share[1] + 10.0 < slow_share[0],
        "LEAST_CONN ({:.1}%) did not send clearly fewer requests to the slow backend than ROUND_ROBIN ({:.1}%)",
        slow_share[1],
        slow_share[0]
    );

    resilience::rolling_restarts_fail_no_order(&cluster)?;
    resilience::a_failing_canary_costs_under_a_tenth_of_a_percent(&cluster)?;
    resilience::a_hung_pod_is_timed_out_and_ejected(&cluster)?;
    authz::only_order_may_call_payment(&cluster)?;
    authz::probes_pass_under_a_deny_default(&cluster)?;
    cluster.kubectl(&["delete", "namespace", NS, "--wait=true", "--timeout=120s"])?;
    Ok(())
}
