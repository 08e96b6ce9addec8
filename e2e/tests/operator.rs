//! The operator on a real cluster (installed by `make install`): it writes exactly the expected
//! ConfigMaps and Secrets, rewrites only what a change affects, follows scaling and deletion,
//! reports bad references in status, issues certificates that verify against the mesh CA, and
//! hands over writing when its leader dies. The test labels its pods `braid.dev/workload` itself,
//! as the webhook does, and leaves its namespaces unlabelled for injection: these tests are about
//! the operator, and pods stay runnable without the proxy image.

#[path = "operator/status.rs"]
mod status;

use std::time::Duration;

use anyhow::{Context as _, ensure};
use braid_e2e::{Cluster, eventually};
use serde_json::{Value, json};

const IMAGE: &str = "braid.local/braid-shop:dev";
const WAIT: Duration = Duration::from_secs(60);

fn workload(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    app: &str,
    account: &str,
    replicas: u32,
) -> anyhow::Result<()> {
    cluster.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": ns}}))?;
    cluster.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "workload": name}},
            "template": {
                "metadata": {"labels": {"app": app, "workload": name, "braid.dev/workload": name}},
                "spec": {
                    "serviceAccountName": account,
                    "containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "args": ["serve"],
                                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]
                }
            }
        }
    }))?;
    service(cluster, ns, name, json!({"workload": name}))
}

fn service(cluster: &Cluster, ns: &str, name: &str, selector: Value) -> anyhow::Result<()> {
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
}

/// The parsed `proxy.json` of a workload with its destinations (from the namespace's
/// `destinations.json` in the split layout, which pods this release injected use; this test's
/// pods are labelled, not injected, so theirs are whole), and the resourceVersions of the
/// ConfigMaps it comes from.
fn proxy_config(cluster: &Cluster, ns: &str, workload: &str) -> anyhow::Result<(Value, String)> {
    let file = |config_map: &str, key: &str| -> anyhow::Result<(Value, String)> {
        let config_map = cluster.get_json(&["configmap", config_map, "-n", ns])?;
        let text = config_map["data"][key]
            .as_str()
            .with_context(|| format!("no {key}"))?;
        let version = config_map["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok((serde_json::from_str(text)?, version))
    };
    let (mut config, version) = file(&format!("braid-proxy-{workload}"), "proxy.json")?;
    if config["sharedDestinations"] != true {
        return Ok((config, version));
    }
    let (destinations, destinations_version) = file("braid-destinations", "destinations.json")?;
    config["destinations"] = destinations;
    Ok((config, format!("{version}+{destinations_version}")))
}

fn endpoints_of(config: &Value, destination: &str) -> Vec<Value> {
    config["destinations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["name"] == destination)
        .flat_map(|d| {
            d["ports"][0]["endpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn condition(
    cluster: &Cluster,
    kind: &str,
    ns: &str,
    name: &str,
    type_: &str,
) -> anyhow::Result<(String, String)> {
    let object = cluster.get_json(&[kind, name, "-n", ns])?;
    let conditions = object["status"]["conditions"]
        .as_array()
        .context("no conditions yet")?;
    let found = conditions
        .iter()
        .find(|c| c["type"] == type_)
        .context("condition missing")?;
    Ok((
        found["status"].as_str().unwrap_or_default().into(),
        found["reason"].as_str().unwrap_or_default().into(),
    ))
}

#[test]
fn operator_writes_configs_and_certificates_and_follows_changes() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    let namespace = cluster.namespace("braid-e2e-operator")?;
    let ns = namespace.name.clone();
    let ns = ns.as_str();
    workload(&cluster, ns, "order", "order", "order", 1)?;
    workload(&cluster, ns, "payment-v1", "payment", "payment", 1)?;
    workload(&cluster, ns, "payment-v2", "payment", "payment", 1)?;
    service(&cluster, ns, "payment", json!({"app": "payment"}))?;
    cluster.apply(&json!({
        "apiVersion": "braid.dev/v1alpha1", "kind": "MeshPolicy",
        "metadata": {"name": "payment", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "payment"}}, "mtls": {"mode": "STRICT"}, "loadBalancer": "LEAST_CONN"}
    }))?;
    for name in ["order", "payment-v1", "payment-v2"] {
        cluster.kubectl(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "-n",
            ns,
            "--timeout=120s",
        ])?;
    }

    // Exactly one ConfigMap and one Secret per workload, with ready endpoints and identities.
    let payment_id = format!("spiffe://cluster.local/ns/{ns}/sa/payment");
    let (order, _) = eventually(WAIT, || {
        let (config, version) = proxy_config(&cluster, ns, "order")?;
        // Settled: every Service has all its ready endpoints, so later comparisons mean something.
        for (service, expected) in [
            ("payment", 2),
            ("payment-v1", 1),
            ("payment-v2", 1),
            ("order", 1),
        ] {
            let found = endpoints_of(&config, &format!("{service}.{ns}")).len();
            ensure!(
                found == expected,
                "{service} has {found} endpoints in order's config, not {expected}"
            );
        }
        Ok((config, version))
    })?;
    ensure!(order["workload"]["identity"] == format!("spiffe://cluster.local/ns/{ns}/sa/order"));
    for endpoint in endpoints_of(&order, &format!("payment.{ns}")) {
        ensure!(
            endpoint["identity"] == payment_id.as_str(),
            "endpoint {endpoint} lacks payment's identity"
        );
    }
    let payment = order["destinations"]
        .as_array()
        .context("destinations")?
        .iter()
        .find(|d| d["name"] == format!("payment.{ns}"));
    ensure!(
        payment.is_some_and(|d| d["policy"]["loadBalancer"] == "LEAST_CONN"),
        "client policy missing"
    );
    let managed = |kind: &str| -> anyhow::Result<Vec<String>> {
        let list = cluster.get_json(&[
            kind,
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/managed-by=braid-operator",
        ])?;
        let mut names: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
            .collect();
        names.sort();
        Ok(names)
    };
    eventually(WAIT, || {
        ensure!(
            managed("configmaps")?
                == [
                    "braid-proxy-order",
                    "braid-proxy-payment-v1",
                    "braid-proxy-payment-v2"
                ]
        );
        ensure!(
            managed("secrets")?
                == [
                    "braid-identity-order",
                    "braid-identity-payment-v1",
                    "braid-identity-payment-v2"
                ]
        );
        Ok(())
    })?;

    // The certificate verifies against the mesh CA and carries the SPIFFE ID.
    verify_certificate(&cluster, ns, "payment-v1", &payment_id)?;

    // A change to the payment policy's server side rewrites payment's configs, not order's.
    let (order_before, order_version) = proxy_config(&cluster, ns, "order")?;
    let (_, payment_version) = proxy_config(&cluster, ns, "payment-v1")?;
    cluster.kubectl(&[
        "patch",
        "meshpolicy",
        "payment",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"mtls":{"mode":"PERMISSIVE"}}}"#,
    ])?;
    eventually(WAIT, || {
        let (config, version) = proxy_config(&cluster, ns, "payment-v1")?;
        ensure!(
            version != payment_version && config["inbound"]["mtlsMode"] == "PERMISSIVE",
            "payment-v1 not rewritten"
        );
        Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let (order_after, order_version_after) = proxy_config(&cluster, ns, "order")?;
    ensure!(
        order_version_after == order_version,
        "order's proxy.json was rewritten for nothing; changed: {}",
        changed_fields(&order_before, &order_after, "").join(", ")
    );

    // Scaling updates the endpoint lists; deleting a workload removes its objects.
    cluster.kubectl(&["scale", "deployment/payment-v1", "-n", ns, "--replicas=2"])?;
    eventually(WAIT, || {
        let endpoints = endpoints_of(
            &proxy_config(&cluster, ns, "order")?.0,
            &format!("payment-v1.{ns}"),
        );
        ensure!(
            endpoints.len() == 2,
            "payment-v1 has {} endpoints",
            endpoints.len()
        );
        Ok(())
    })?;
    cluster.kubectl(&["delete", "deployment/payment-v2", "-n", ns, "--wait=true"])?;
    eventually(WAIT, || {
        ensure!(
            !managed("configmaps")?.contains(&"braid-proxy-payment-v2".to_owned()),
            "ConfigMap of payment-v2 remains"
        );
        ensure!(
            !managed("secrets")?.contains(&"braid-identity-payment-v2".to_owned()),
            "Secret of payment-v2 remains"
        );
        Ok(())
    })?;
    Ok(())
}

/// JSON paths where two documents differ, for failure messages.
fn changed_fields(a: &Value, b: &Value, at: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<_> = x.keys().chain(y.keys()).collect();
            let field = |m: &serde_json::Map<String, Value>, k: &str| {
                m.get(k).cloned().unwrap_or(Value::Null)
            };
            keys.into_iter()
                .flat_map(|k| changed_fields(&field(x, k), &field(y, k), &format!("{at}.{k}")))
                .collect()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .flat_map(|(i, (p, q))| changed_fields(p, q, &format!("{at}[{i}]")))
            .collect(),
        _ if a == b => Vec::new(),
        _ => vec![format!("{at}: {a} -> {b}")],
    }
}

fn verify_certificate(
    cluster: &Cluster,
    ns: &str,
    workload: &str,
    spiffe_id: &str,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("braid-e2e-certs-{ns}"));
    std::fs::create_dir_all(&dir)?;
    let data = |ns: &str, secret: &str, key: &str| -> anyhow::Result<String> {
        let escaped = key.replace('.', "\\.");
        let encoded = cluster.kubectl(&[
            "get",
            "secret",
            secret,
            "-n",
            ns,
            "-o",
            &format!("jsonpath={{.data.{escaped}}}"),
        ])?;
        run_with_input("base64", &["-d"], &encoded)
    };
    std::fs::write(
        dir.join("ca.pem"),
        data("braid-system", "braid-ca", "tls.crt")?,
    )?;
    std::fs::write(
        dir.join("leaf.pem"),
        data(ns, &format!("braid-identity-{workload}"), "tls.crt")?,
    )?;
    std::fs::write(
        dir.join("bundle.pem"),
        data(ns, &format!("braid-identity-{workload}"), "ca.crt")?,
    )?;
    let (ca, leaf, bundle) = (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("bundle.pem"),
    );
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let verified = run_with_input(
        "openssl",
        &["verify", "-CAfile", &path(&ca), &path(&leaf)],
        "",
    )?;
    ensure!(verified.contains("OK"), "openssl verify: {verified}");
    let bundle_verified = run_with_input(
        "openssl",
        &["verify", "-CAfile", &path(&bundle), &path(&leaf)],
        "",
    )?;
    ensure!(
        bundle_verified.contains("OK"),
        "the Secret's own ca.crt does not verify its leaf"
    );
    let san = run_with_input(
        "openssl",
        &[
            "x509",
            "-in",
            &path(&leaf),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        "",
    )?;
    ensure!(san.contains(&format!("URI:{spiffe_id}")), "SAN is {san}");
    Ok(())
}

fn run_with_input(program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
fn deleting_the_leader_hands_writing_to_the_other_replica() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    let holder = || -> anyhow::Result<String> {
        let lease = cluster.get_json(&["lease", "braid-operator", "-n", "braid-system"])?;
        Ok(lease["spec"]["holderIdentity"]
            .as_str()
            .context("no holder")?
            .to_owned())
    };
    let leader = eventually(WAIT, holder)?;
    cluster.kubectl(&[
        "delete",
        "pod",
        &leader,
        "-n",
        "braid-system",
        "--wait=false",
    ])?;
    let successor = eventually(Duration::from_secs(90), || {
        let now = holder()?;
        ensure!(now != leader, "{leader} still holds the Lease");
        Ok(now)
    })?;
    println!("leadership passed from {leader} to {successor}");

    // The new leader writes: a new workload gets its ConfigMap.
    let namespace = cluster.namespace("braid-e2e-failover")?;
    let ns = namespace.name.clone();
    workload(&cluster, &ns, "after-failover", "after", "default", 1)?;
    eventually(Duration::from_secs(90), || {
        proxy_config(&cluster, &ns, "after-failover").map(drop)
    })?;

    // The new leader's metrics, read through the API server's pod proxy, carry both expiries.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    eventually(Duration::from_secs(60), || {
        let path = format!("/api/v1/namespaces/braid-system/pods/{successor}:9090/proxy/metrics");
        let metrics = cluster.kubectl(&["get", "--raw", &path])?;
        for gauge in [
            "braid_operator_ca_expiry_timestamp_seconds",
            "braid_operator_leaf_earliest_expiry_timestamp_seconds",
        ] {
            let value: f64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix(gauge).and_then(|v| v.trim().parse().ok()))
                .with_context(|| format!("{gauge} missing"))?;
            ensure!(value > now, "{gauge} is {value}, not in the future");
        }
        Ok(())
    })?;
    Ok(())
}
