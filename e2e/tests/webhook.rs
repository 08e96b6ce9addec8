//! The injection webhook on a real cluster: the API server calls it for pods in labelled
//! namespaces (and only there), the operator keeps its caBundle and certificate, and rotating that
//! certificate fails no admission.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use braid_e2e::{Cluster, eventually};
use serde_json::{Value, json};

const IMAGE: &str = "braid.local/braid-shop:dev";

fn deployment(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "args": ["serve"]}]}}
        }
    })
}

fn pods(cluster: &Cluster, ns: &str, app: &str) -> anyhow::Result<Vec<Value>> {
    let list = cluster.get_json(&["pods", "-n", ns, "-l", &format!("app={app}")])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// A test namespace labelled for injection.
fn injected_namespace(cluster: &Cluster, prefix: &str) -> anyhow::Result<braid_e2e::Namespace> {
    let namespace = cluster.namespace(prefix)?;
    cluster.kubectl(&[
        "label",
        "namespace",
        &namespace.name,
        "braid.dev/inject=enabled",
    ])?;
    Ok(namespace)
}

/// Waits for the Deployment `app`'s two pods to exist.
fn two_pods(cluster: &Cluster, ns: &str, app: &str) -> anyhow::Result<Vec<Value>> {
    eventually(Duration::from_secs(60), || {
        let pods = pods(cluster, ns, app)?;
        ensure!(pods.len() == 2, "{} pods", pods.len());
        Ok(pods)
    })
}

fn names(containers: &Value) -> Vec<String> {
    containers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

/// The volume each container of `pod` has at the API token's path, as the API server stored the
/// pod: its ServiceAccount admission mounts the token in every container that has nothing there.
fn token_dir_volumes(pod: &Value) -> std::collections::BTreeMap<String, String> {
    let spec = &pod["spec"];
    let containers = spec["initContainers"].as_array().into_iter().flatten();
    containers
        .chain(spec["containers"].as_array().into_iter().flatten())
        .map(|container| {
            let at_token_dir = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount");
            let volume = at_token_dir
                .and_then(|m| m["name"].as_str())
                .unwrap_or("none");
            (
                container["name"].as_str().unwrap_or("").to_owned(),
                volume.to_owned(),
            )
        })
        .collect()
}

/// Waits until the operator has put the CA into the webhook configuration.
fn webhook_ready(cluster: &Cluster) -> anyhow::Result<()> {
    eventually(Duration::from_secs(90), || {
        let config = cluster.get_json(&["mutatingwebhookconfiguration", "braid-webhook"])?;
        ensure!(
            config["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .is_some_and(|b| !b.is_empty()),
            "no caBundle yet"
        );
        Ok(())
    })
}

/// A server-side dry run of a pod in `ns`: goes through admission, creates nothing.
fn dry_run_pod(cluster: &Cluster, ns: &str, name: &str) -> anyhow::Result<Value> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "app", "image": IMAGE, "args": ["serve"]}]}
    });
    let out = cluster.kubectl_with_input(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        Some(&pod.to_string()),
    )?;
    Ok(serde_json::from_str(&out)?)
}

#[test]
fn pods_in_labelled_namespaces_are_injected_by_the_api_server_and_others_are_not()
-> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    webhook_ready(&cluster)?;
    let meshed = injected_namespace(&cluster, "braid-e2e-injected")?;
    let plain = cluster.namespace("braid-e2e-plain")?;
    // The webhook configuration reaches the API server's informer asynchronously.
    eventually(Duration::from_secs(30), || {
        let pod = dry_run_pod(&cluster, &meshed.name, "probe")?;
        ensure!(
            names(&pod["spec"]["initContainers"]).contains(&"braid-proxy".to_owned()),
            "not injected yet"
        );
        Ok(())
    })?;

    cluster.apply(&deployment(&meshed.name, "payment"))?;
    cluster.apply(&deployment(&plain.name, "payment"))?;
    let injected = two_pods(&cluster, &meshed.name, "payment")?;
    for pod in &injected {
        ensure!(
            names(&pod["spec"]["initContainers"]) == ["braid-init", "braid-proxy"],
            "pod {} not injected",
            pod["metadata"]["name"]
        );
        ensure!(
            pod["metadata"]["labels"]["braid.dev/workload"] == "payment",
            "workload label missing"
        );
        ensure!(
            pod["metadata"]["annotations"]["braid.dev/injected"].is_string(),
            "injected annotation missing"
        );
        let token_volumes = token_dir_volumes(pod);
        ensure!(
            token_volumes.get("braid-init").map(String::as_str) == Some("braid-no-token")
                && token_volumes.get("braid-proxy").map(String::as_str) == Some("braid-no-token")
                && token_volumes
                    .get("app")
                    .is_some_and(|v| v.starts_with("kube-api-access-")),
            "the API token is kept out of Braid's containers alone: {token_volumes:?}"
        );
    }
    // With the proxy image installed, the injected pods start: braid-init installs the rules and
    // exits 0, the proxy loads the config and identity the operator wrote, its startup probe
    // passes, and the pod becomes Ready with the proxy running beside the application.
    eventually(Duration::from_secs(120), || {
        for pod in pods(&cluster, &meshed.name, "payment")? {
            braid_e2e::meshed_and_ready(&pod)?;
        }
        Ok(())
    })?;
    let untouched = two_pods(&cluster, &plain.name, "payment")?;
    for pod in &untouched {
        ensure!(
            pod["spec"]["initContainers"].is_null(),
            "a pod in an unlabelled namespace was injected"
        );
        ensure!(pod["metadata"]["labels"]["braid.dev/workload"].is_null());
    }
    Ok(())
}

#[test]
fn rotating_the_webhook_certificate_fails_no_admission() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    webhook_ready(&cluster)?;
    let meshed = injected_namespace(&cluster, "braid-e2e-rotation")?;
    eventually(Duration::from_secs(30), || {
        dry_run_pod(&cluster, &meshed.name, "warmup").map(drop)
    })?;
    let certificate = || -> anyhow::Result<String> {
        cluster.kubectl(&[
            "get",
            "secret",
            "braid-webhook-tls",
            "-n",
            "braid-system",
            "-o",
            "jsonpath={.data.tls\\.crt}",
        ])
    };
    let before = certificate()?;
    let since = utc_now()?;
    // The operator re-issues a deleted certificate; the kubelet swaps the mounted files; the
    // webhook reloads them. Admissions go on throughout.
    cluster.kubectl(&[
        "delete",
        "secret",
        "braid-webhook-tls",
        "-n",
        "braid-system",
    ])?;
    let started = Instant::now();
    let (mut admitted, mut reloaded) = (0, false);
    while started.elapsed() < Duration::from_secs(120) {
        let pod = dry_run_pod(&cluster, &meshed.name, &format!("rotation-{admitted}"))
            .context("an admission failed during rotation")?;
        ensure!(
            names(&pod["spec"]["initContainers"]).contains(&"braid-proxy".to_owned()),
            "admission {admitted} was not injected"
        );
        admitted += 1;
        let logs = cluster.kubectl(&[
            "logs",
            "-n",
            "braid-system",
            "-l",
            "app.kubernetes.io/name=braid-webhook",
            "--since-time",
            &since,
            "--prefix",
        ])?;
        let pods_reloaded = logs
            .lines()
            .filter(|l| l.contains("serving certificate reloaded"))
            .map(|l| l.split(']').next().unwrap_or_default())
            .collect::<std::collections::BTreeSet<_>>();
        if pods_reloaded.len() == 2 && started.elapsed() > Duration::from_secs(5) {
            reloaded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    ensure!(
        certificate()? != before,
        "the operator did not issue a new certificate"
    );
    ensure!(
        reloaded,
        "both webhook replicas should have reloaded the new certificate within 120 s"
    );
    println!(
        "{admitted} admissions during rotation, all injected; reloaded after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Now, RFC 3339 UTC, for `kubectl logs --since-time` (the cluster runs on this machine's clock).
fn utc_now() -> anyhow::Result<String> {
    let output = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()?;
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}
