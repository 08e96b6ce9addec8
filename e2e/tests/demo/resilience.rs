//! Issue 14 on the real cluster, under the demo's steady load and with the demo's own retry,
//! timeout and outlier policy (`examples/shop/deploy/policies.yaml`): rolling restarts of three
//! services fail no order; payment-v2 failing half its requests costs fewer than 0.1% of orders;
//! an inventory pod that hangs keeps the orders' p99 under inventory's timeout. Every count is
//! printed.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use braid_e2e::Cluster;
use serde_json::{Value, json};

use super::{NS, background_orders, deploy_dir, orders, rollout_status, summary_of};

/// The order pod's proxy's value of a metric series (summed over its label sets when `series`
/// names none).
fn order_metric(cluster: &Cluster, series: &str) -> anyhow::Result<f64> {
    let metrics = cluster.exec(
        NS,
        "deploy/order",
        &["braid-shop", "get", "http://127.0.0.1:15020/metrics"],
    )?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// The demo's policies again (earlier checks changed the inventory policy and the route), in
/// effect on every proxy.
fn demo_policies(cluster: &Cluster) -> anyhow::Result<()> {
    cluster.kubectl(&["apply", "-f", &format!("{}/policies.yaml", deploy_dir())])?;
    cluster.kubectl(&[
        "wait",
        "-n",
        NS,
        "--for=condition=Ready",
        "meshpolicies,meshroutes",
        "--all",
        "--timeout=120s",
    ])?;
    Ok(())
}

/// How long the traffic generator runs while three deployments roll (about 25 s each).
const LOAD_SECONDS: u32 = 100;

/// `kubectl rollout restart` of payment-v1, inventory-fast and user, one after the other,
/// while the traffic generator places orders: not one fails.
pub fn rolling_restarts_fail_no_order(cluster: &Cluster) -> anyhow::Result<()> {
    demo_policies(cluster)?;
    let load = background_orders(cluster, LOAD_SECONDS)?;
    let started = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let failovers = order_metric(cluster, "braid_proxy_retries_total{kind=\"failover\"}")?;
    for deployment in ["payment-v1", "inventory-fast", "user"] {
        cluster.kubectl(&[
            "rollout",
            "restart",
            "-n",
            NS,
            &format!("deployment/{deployment}"),
        ])?;
        rollout_status(cluster, deployment)?;
        // The old pod stops after the new one is Ready; its endpoint leaves the callers' configs
        // a second or two later.
        std::thread::sleep(Duration::from_secs(12));
    }
    ensure!(
        started.elapsed() < Duration::from_secs(u64::from(LOAD_SECONDS)),
        "the rollouts outlasted the load ({:?})",
        started.elapsed()
    );
    let summary = summary_of(load)?;
    let failovers =
        order_metric(cluster, "braid_proxy_retries_total{kind=\"failover\"}")? - failovers;
    println!(
        "rolling restarts of payment-v1, inventory-fast and user: {} orders, {} failed \
         ({failovers} failovers in order's proxy): {summary}",
        summary["orders"], summary["failed"]
    );
    if summary["failed"] != 0 {
        // What order's proxy saw: its config swaps and the requests it answered itself.
        let log = cluster.kubectl(&[
            "logs",
            "-n",
            NS,
            "deploy/order",
            "-c",
            "braid-proxy",
            "--timestamps",
            &format!("--since={}s", started.elapsed().as_secs() + 10),
        ])?;
        anyhow::bail!("orders failed during the rollouts: {summary}\norder's proxy:\n{log}");
    }
    ensure!(
        summary["orders"].as_u64().unwrap_or(0) > 300,
        "too few orders to show anything: {summary}"
    );
    Ok(())
}

/// Sets payment-v2's `--fail-percent` (0: behaves), and waits for its new pod.
fn payment_v2_fails(cluster: &Cluster, percent: u32) -> anyhow::Result<()> {
    let args = json!([
        "serve",
        "--role",
        "payment",
        "--version",
        "v2",
        "--fail-percent",
        percent.to_string()
    ]);
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "payment", "args": args}]}}}});
    cluster.kubectl(&[
        "patch",
        "-n",
        NS,
        "deployment/payment-v2",
        "--type=strategic",
        "-p",
        &patch.to_string(),
    ])?;
    rollout_status(cluster, "payment-v2")?;
    std::thread::sleep(Duration::from_secs(15));
    Ok(())
}

/// payment-v2 (20% of the canary) answers every other request 503: the demo's retry policy
/// takes such a request to payment-v1 (v2 has no other pod), so fewer than 1 in 1,000 orders
/// fail.
pub fn a_failing_canary_costs_under_a_tenth_of_a_percent(cluster: &Cluster) -> anyhow::Result<()> {
    payment_v2_fails(cluster, 50)?;
    let retries = order_metric(cluster, "braid_proxy_retries_total{kind=\"retry\"}")?;
    let summary = orders(cluster, 3_000, 4)?;
    let retries = order_metric(cluster, "braid_proxy_retries_total{kind=\"retry\"}")? - retries;
    let (placed, failed) = (
        summary["orders"].as_u64().context("orders")?,
        summary["failed"].as_u64().context("failed")?,
    );
    println!(
        "payment-v2 failing 50%: {failed} of {placed} orders failed ({:.3}%), {retries} retries \
         in order's proxy: {summary}",
        failed as f64 * 100.0 / placed as f64
    );
    ensure!(
        failed * 1_000 < placed,
        "{failed} of {placed} orders failed: {summary}"
    );
    ensure!(
        retries >= placed as f64 * 0.05,
        "payment-v2 did not fail as asked ({retries} retries for {placed} orders)"
    );
    payment_v2_fails(cluster, 0)
}

/// A third inventory pod that never answers (`--hang-percent 100`; its health check still
/// passes, so it stays in the endpoints). Under the demo's LEAST_CONN its calls stay
/// outstanding and it gets (next to) none; under round robin it gets every third call: each
/// gives up after inventory's `perTryTimeout` (500 ms) and goes elsewhere, three in a row eject
/// it. Either way no order fails and their p99 stays under inventory's request timeout (2 s).
pub fn a_hung_pod_is_timed_out_and_ejected(cluster: &Cluster) -> anyhow::Result<()> {
    cluster.apply(&hung_inventory())?;
    rollout_status(cluster, "inventory-hung")?;
    std::thread::sleep(Duration::from_secs(15));
    for balancer in ["LEAST_CONN", "ROUND_ROBIN"] {
        inventory_balancer(cluster, balancer)?;
        let ejections = order_metric(cluster, "braid_proxy_outlier_ejections_total")?;
        let summary = orders(cluster, 600, 4)?;
        let ejections = order_metric(cluster, "braid_proxy_outlier_ejections_total")? - ejections;
        let p99 = summary["p99_ms"].as_f64().context("p99_ms")?;
        println!(
            "an inventory pod that hangs, {balancer}: {} of {} orders failed, p99 {p99:.0} ms, \
             max {} ms, {ejections} ejections in order's proxy: {summary}",
            summary["failed"], summary["orders"], summary["max_ms"]
        );
        ensure!(summary["failed"] == 0, "orders failed: {summary}");
        ensure!(
            p99 < 2_000.0,
            "the orders' p99 ({p99} ms) reached inventory's timeout"
        );
        ensure!(
            summary["versions"]["inventory"]["hung"].is_null(),
            "the hung pod answered: {summary}"
        );
        if balancer == "ROUND_ROBIN" {
            ensure!(ejections >= 1.0, "the hung pod was never ejected");
        }
    }
    inventory_balancer(cluster, "LEAST_CONN")?;
    cluster.kubectl(&[
        "delete",
        "-n",
        NS,
        "deployment/inventory-hung",
        "--wait=true",
    ])?;
    Ok(())
}

/// Sets the inventory policy's load balancer and waits until every proxy runs it.
fn inventory_balancer(cluster: &Cluster, balancer: &str) -> anyhow::Result<()> {
    let patch = json!({"spec": {"loadBalancer": balancer}});
    cluster.kubectl(&[
        "patch",
        "-n",
        NS,
        "meshpolicy/inventory",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])?;
    braid_e2e::eventually(Duration::from_secs(90), || {
        let policy = cluster.get_json(&["meshpolicy", "-n", NS, "inventory"])?;
        let programmed = policy["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Programmed" && c["status"] == "True");
        ensure!(
            policy["status"]["observedGeneration"] == policy["metadata"]["generation"]
                && programmed,
            "{balancer} not on every proxy yet: {}",
            policy["status"]
        );
        Ok(())
    })
}

fn hung_inventory() -> Value {
    let labels = json!({"app": "inventory", "version": "hung"});
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "inventory-hung", "namespace": NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "serviceAccountName": "inventory",
                "containers": [{"name": "inventory", "image": "braid.local/braid-shop:dev",
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["serve", "--role", "inventory", "--version", "hung",
                             "--hang-percent", "100"],
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                       "periodSeconds": 5}}]}}}
    })
}
