//! The demo's `payment` policy on the real cluster: only order may charge a payment; loadgen and
//! a pod of another service account get 403 from payment's proxy, until dry-run lets them
//! through and counts them.

use std::time::Duration;

use anyhow::ensure;
use braid_e2e::{Cluster, eventually};

use super::{NS, orders};

/// A direct call to payment from `pod` (through its proxy): stdout, or the error with the status.
fn call_payment(cluster: &Cluster, pod: &str) -> anyhow::Result<String> {
    cluster.exec(
        NS,
        pod,
        &["braid-shop", "get", "http://payment:8080/charge"],
    )
}

/// The would-deny counts of both payment versions' proxies, added up.
fn payment_would_deny(cluster: &Cluster) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for deployment in ["deploy/payment-v1", "deploy/payment-v2"] {
        let metrics = cluster.exec(
            NS,
            deployment,
            &["braid-shop", "get", "http://127.0.0.1:15020/metrics"],
        )?;
        total += metrics
            .lines()
            .filter(|l| {
                l.starts_with("braid_proxy_inbound_authz_total{")
                    && l.contains("decision=\"would_deny\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total)
}

/// The demo's `payment` policy (policies.yaml): only order, only `GET /charge`.
pub fn only_order_may_call_payment(cluster: &Cluster) -> anyhow::Result<()> {
    let policies = cluster.kubectl(&["get", "meshpolicies", "-n", NS])?;
    println!("{policies}");
    ensure!(
        policies
            .lines()
            .any(|l| l.starts_with("payment ") && l.contains("1 rule")),
        "the AUTHZ column: {policies}"
    );
    // loadgen calling payment directly is refused; orders (order calling payment) go through.
    eventually(Duration::from_secs(90), || {
        let refused = call_payment(cluster, "deploy/loadgen");
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("403")),
            "loadgen was not refused: {refused:?}"
        );
        Ok(())
    })?;
    println!(
        "loadgen -> payment: {}",
        call_payment(cluster, "deploy/loadgen").expect_err("refused")
    );
    let summary = orders(cluster, 50, 2)?;
    ensure!(
        summary["failed"] == 0,
        "orders failed under the payment policy: {summary}"
    );
    // A pod in the shop namespace running as another service account (user's).
    super::shop_pod(cluster, NS, "intruder", Some("user"))?;
    eventually(Duration::from_secs(60), || {
        let refused = call_payment(cluster, "intruder");
        ensure!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("403")),
            "a pod of service account user was not refused: {refused:?}"
        );
        Ok(())
    })?;
    // Dry run: the same rules let every caller through, and count what they would refuse.
    let before = payment_would_deny(cluster)?;
    cluster.kubectl(&[
        "patch",
        "meshpolicy",
        "payment",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"authorizationMode":"DryRun"}}"#,
    ])?;
    eventually(Duration::from_secs(90), || {
        call_payment(cluster, "deploy/loadgen").map(drop)?;
        call_payment(cluster, "intruder").map(drop)
    })?;
    let after = payment_would_deny(cluster)?;
    println!("dry run: payment's would-deny count {before} -> {after}");
    ensure!(
        after > before,
        "dry run counted nothing: {before} -> {after}"
    );
    let policies = cluster.kubectl(&["get", "meshpolicies", "-n", NS])?;
    ensure!(policies.contains("1 rule, dry-run"), "{policies}");
    Ok(())
}

/// Under the Mesh default `deny`, callers of a workload without rules are refused while the
/// kubelet's probes keep passing: they go to the admin port's probe rewrite, which
/// authorization never sees. A restarted pod becomes Ready, and the running ones stay Ready
/// for four probe periods. The default is put back afterwards.
pub fn probes_pass_under_a_deny_default(cluster: &Cluster) -> anyhow::Result<()> {
    let set_default = |value: &str| {
        cluster.kubectl(&[
            "patch",
            "mesh",
            "default",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"defaultAuthorization":{value}}}}}"#),
        ])
    };
    set_default("\"deny\"")?;
    let outcome = (|| {
        let call_user = || {
            cluster.exec(
                NS,
                "deploy/loadgen",
                &["braid-shop", "get", "http://user:8080/healthz"],
            )
        };
        eventually(Duration::from_secs(90), || {
            let refused = call_user();
            ensure!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains("403")),
                "user is not refused under the deny default: {refused:?}"
            );
            Ok(())
        })?;
        cluster.kubectl(&["rollout", "restart", "-n", NS, "deployment/user"])?;
        cluster.kubectl(&[
            "rollout",
            "status",
            "-n",
            NS,
            "deployment/user",
            "--timeout=120s",
        ])?;
        std::thread::sleep(Duration::from_secs(20));
        let pods = cluster.get_json(&["pods", "-n", NS])?;
        for pod in pods["items"].as_array().into_iter().flatten() {
            if pod["metadata"]["deletionTimestamp"].is_null() {
                braid_e2e::meshed_and_ready(pod)?;
            }
        }
        ensure!(
            call_user().is_err_and(|e| e.to_string().contains("403")),
            "the restarted user pod is not refusing callers"
        );
        println!(
            "defaultAuthorization deny: callers of user get 403, every shop pod stays Ready, \
             a restarted user pod became Ready"
        );
        Ok(())
    })();
    set_default("null")?;
    outcome
}
