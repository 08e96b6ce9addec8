//! The test cluster does what Braid relies on: the scheduler and kubelet run pods from locally
//! built images, kube-proxy routes a Service's ClusterIP to every replica, CoreDNS resolves its
//! name, the kubelet swaps an updated ConfigMap into a running pod, and namespace deletion
//! completes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use braid_e2e::{Cluster, eventually};
use serde_json::{Value, json};

const IMAGE: &str = "braid.local/braid-shop:dev";

#[test]
fn pods_services_configmap_updates_and_namespace_deletion_work() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    let namespace = cluster.namespace("braid-e2e-cluster")?;
    let ns_name = namespace.name.clone();
    let ns = ns_name.as_str();

    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "content", "namespace": ns},
        "data": {"greeting": "hello-1"}
    }))?;
    cluster.apply(&echo_deployment(ns))?;
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "echo", "namespace": ns},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))?;
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "namespace": ns},
        "spec": {"containers": [{
            "name": "client", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "args": ["serve"]
        }]}
    }))?;

    cluster.kubectl(&[
        "rollout",
        "status",
        "deployment/echo",
        "-n",
        ns,
        "--timeout=180s",
    ])?;
    cluster.kubectl(&[
        "wait",
        "pod/client",
        "-n",
        ns,
        "--for=condition=Ready",
        "--timeout=180s",
    ])?;
    let replicas = echo_pods(&cluster, ns)?;
    ensure!(
        replicas.len() == 2,
        "expected 2 echo pods, found {replicas:?}"
    );

    // The Service's ClusterIP, called from another pod, reaches both replicas.
    let service = cluster.get_json(&["service", "echo", "-n", ns])?;
    let cluster_ip = service["spec"]["clusterIP"]
        .as_str()
        .context("service has no clusterIP")?;
    let url = format!("http://{cluster_ip}/");
    // kube-proxy programs a new Service asynchronously: wait until it answers at all.
    eventually(Duration::from_secs(30), || {
        cluster.exec(ns, "client", &["braid-shop", "get", &url])
    })?;
    let mut answered_by = BTreeSet::new();
    for _ in 0..40 {
        let answer: Value =
            serde_json::from_str(&cluster.exec(ns, "client", &["braid-shop", "get", &url])?)?;
        answered_by.insert(answer["pod"].as_str().unwrap_or_default().to_owned());
        if answered_by.len() == 2 {
            break;
        }
    }
    let expected: BTreeSet<String> = replicas.iter().map(|(name, _)| name.clone()).collect();
    ensure!(
        answered_by == expected,
        "ClusterIP {cluster_ip} reached {answered_by:?}, not {expected:?}"
    );

    // Cluster DNS: the Service's name resolves (CoreDNS on the node IP) and answers.
    let by_name = format!("http://echo.{ns}.svc.cluster.local/");
    eventually(Duration::from_secs(30), || {
        cluster.exec(ns, "client", &["braid-shop", "get", &by_name])
    })?;

    // An updated ConfigMap shows up inside the running pods (the kubelet swaps the volume).
    for (pod, _) in &replicas {
        let greeting = file_in_pod(&cluster, ns, pod)?;
        ensure!(
            greeting == "hello-1",
            "{pod} serves {greeting:?} before the update"
        );
    }
    cluster.kubectl(&[
        "patch",
        "configmap",
        "content",
        "-n",
        ns,
        "-p",
        r#"{"data":{"greeting":"hello-2"}}"#,
    ])?;
    let updated = Instant::now();
    for (pod, _) in &replicas {
        eventually(Duration::from_secs(150), || {
            let greeting = file_in_pod(&cluster, ns, pod)?;
            ensure!(greeting == "hello-2", "{pod} still serves {greeting:?}");
            Ok(())
        })?;
    }
    println!(
        "ConfigMap update visible in both pods after {:.1} s",
        updated.elapsed().as_secs_f64()
    );

    let deletion = namespace.delete_and_wait(Duration::from_secs(120))?;
    println!("namespace {ns} deleted in {:.1} s", deletion.as_secs_f64());
    Ok(())
}

fn echo_deployment(ns: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "echo"}},
            "template": {
                "metadata": {"labels": {"app": "echo"}},
                "spec": {
                    "containers": [{
                        "name": "echo", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                        "args": ["serve", "--files", "/etc/content"],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "content", "mountPath": "/etc/content"}]
                    }],
                    "volumes": [{"name": "content", "configMap": {"name": "content"}}]
                }
            }
        }
    })
}

/// The Ready echo pods as (name, IP).
fn echo_pods(cluster: &Cluster, ns: &str) -> anyhow::Result<Vec<(String, String)>> {
    let pods = cluster.get_json(&["pods", "-n", ns, "-l", "app=echo"])?;
    let items = pods["items"].as_array().context("no items")?;
    Ok(items
        .iter()
        .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
        .map(|pod| {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let ip = pod["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (name, ip)
        })
        .collect())
}

/// The mounted ConfigMap key `greeting`, read by the echo pod's own server.
fn file_in_pod(cluster: &Cluster, ns: &str, pod: &str) -> anyhow::Result<String> {
    let body = cluster.exec(
        ns,
        pod,
        &["braid-shop", "get", "http://127.0.0.1:8080/files/greeting"],
    )?;
    Ok(body.trim().to_owned())
}
