//! `make uninstall` removes Braid and everything it made, and `kubectl apply -k config` alone
//! brings all of it back: the operator creates the default Mesh and re-creates the CA and the
//! objects of workloads that are still running.

use std::process::Command;
use std::time::Duration;

use anyhow::ensure;
use braid_e2e::{Cluster, eventually};
use serde_json::json;

fn make(target: &str) -> anyhow::Result<()> {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new("make").args(["-C", repo, target]).output()?;
    ensure!(
        output.status.success(),
        "make {target} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Names of cluster objects of `kind` that are Braid's: they mention braid, and are neither the
/// test cluster's own (`braid-cluster-*`) nor a test's namespace (`braid-e2e-*`).
fn braid_objects(cluster: &Cluster, kind: &str) -> anyhow::Result<Vec<String>> {
    Ok(cluster
        .kubectl(&["get", kind, "-o", "name"])?
        .lines()
        .filter(|name| {
            name.contains("braid")
                && !name.contains("/braid-cluster-")
                && !name.contains("/braid-e2e-")
        })
        .map(String::from)
        .collect())
}

#[test]
fn uninstall_leaves_nothing_behind_and_install_works_again() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    let namespace = cluster.namespace("braid-e2e-reinstall")?;
    let ns = namespace.name.as_str();
    cluster.kubectl(&["label", "namespace", ns, "braid.dev/inject=enabled"])?;
    cluster.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "user", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "user"}},
                 "template": {"metadata": {"labels": {"app": "user"}},
                              "spec": {"containers": [{"name": "user", "image": "braid.local/braid-shop:dev",
                                                       "imagePullPolicy": "IfNotPresent", "args": ["serve"]}]}}}
    }))?;
    let managed = || -> anyhow::Result<usize> {
        let objects = cluster.kubectl(&[
            "get",
            "configmaps,secrets",
            "-A",
            "-l",
            "app.kubernetes.io/managed-by=braid-operator",
            "-o",
            "name",
        ])?;
        Ok(objects.lines().count())
    };
    let workload_objects = || -> anyhow::Result<()> {
        cluster.kubectl(&[
            "get",
            "-n",
            ns,
            "configmap/braid-proxy-user",
            "secret/braid-identity-user",
        ])?;
        Ok(())
    };
    eventually(Duration::from_secs(90), workload_objects)?;

    make("uninstall")?;
    let leftovers = (|| -> anyhow::Result<()> {
        for kind in [
            "crd",
            "clusterroles",
            "clusterrolebindings",
            "mutatingwebhookconfigurations",
            "namespaces",
        ] {
            let left = braid_objects(&cluster, kind)?;
            ensure!(left.is_empty(), "uninstall left {kind}: {left:?}");
        }
        ensure!(
            managed()? == 0,
            "uninstall left proxy ConfigMaps or identity Secrets"
        );
        Ok(())
    })();
    // Install again whatever the check said, so that the tests after this one find Braid; with
    // the kustomization alone, as a GitOps tool would.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    cluster.kubectl(&["apply", "-k", config])?;
    for deployment in ["braid-operator", "braid-webhook"] {
        cluster.kubectl(&[
            "rollout",
            "status",
            "-n",
            "braid-system",
            &format!("deployment/{deployment}"),
            "--timeout=180s",
        ])?;
    }
    leftovers?;
    // The operator created the default Mesh, which nothing applied this time.
    eventually(Duration::from_secs(90), || {
        let mesh = cluster.get_json(&["mesh", "default"])?;
        let ready = mesh["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ensure!(ready, "Mesh not Ready again: {}", mesh["status"]);
        workload_objects()
    })?;
    cluster.kubectl(&["get", "-n", "braid-system", "secret/braid-ca"])?;
    Ok(())
}
