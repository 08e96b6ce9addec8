//! Golden tests of injection: each fixture pod goes through the admission path exactly as the API
//! server would send it; the returned JSON patch is applied to the original pod and the result must
//! equal `tests/golden/<fixture>.json`. `BRAID_UPDATE_GOLDEN=1` rewrites the golden files.

use std::path::{Path, PathBuf};

use braid_webhook::cli::inject_manifests;
use braid_webhook::inject::InjectSettings;
use braid_webhook::review::{Outcome, review};
use serde_json::{Value, json};

fn settings() -> InjectSettings {
    InjectSettings::from_mesh(&braid_api::MeshSpec::default(), true)
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(dir().join("fixtures").join(format!("{name}.yaml")))
        .expect("fixture");
    serde_saphyr::from_str(&text).expect("fixture is YAML")
}

fn admission_review(pod: &Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-4a3c-9a1e-1d2c3b4a5968",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": null, "dryRun": false, "options": null
        }
    })
    .to_string()
    .into_bytes()
}

/// Admits `pod`; returns the outcome, the response and the pod with the patch applied.
fn admit(pod: &Value) -> (Outcome, Value, Value) {
    let (answer, outcome) = review(&admission_review(pod), &settings());
    let answer = serde_json::to_value(answer).expect("the review serializes");
    let response = answer["response"].clone();
    assert_eq!(
        response["uid"], "0df28fbd-5f5f-4a3c-9a1e-1d2c3b4a5968",
        "the response answers the request's uid"
    );
    let mut patched = pod.clone();
    // kube sends the patch bytes as a JSON array of numbers (Go decodes that into []byte too);
    // a base64 string is the other legal encoding.
    let bytes = match &response["patch"] {
        Value::String(text) => Some(base64_decode(text)),
        Value::Array(numbers) => Some(
            numbers
                .iter()
                .map(|n| n.as_u64().expect("a byte") as u8)
                .collect(),
        ),
        _ => None,
    };
    if let Some(bytes) = bytes {
        let patch: json_patch::Patch =
            serde_json::from_slice(&bytes).expect("the patch is a JSON patch");
        json_patch::patch(&mut patched, &patch).expect("the patch applies cleanly");
    }
    (outcome, response, patched)
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = ALPHABET.iter().position(|a| *a == byte).expect("base64") as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

fn check_golden(name: &str, actual: &Value) {
    let path = dir().join("golden").join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(actual).expect("json") + "\n";
    if std::env::var_os("BRAID_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("golden dir");
        std::fs::write(&path, &text).expect("write golden");
    }
    let expected =
        std::fs::read_to_string(&path).expect("golden file (BRAID_UPDATE_GOLDEN=1 writes it)");
    assert_eq!(
        text, expected,
        "{name} changed; if on purpose, rerun with BRAID_UPDATE_GOLDEN=1"
    );
}

fn container_names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_deployment_pod_gets_init_sidecar_volumes_and_workload_label() {
    let (outcome, _, pod) = admit(&fixture("plain"));
    assert_eq!(outcome, Outcome::Injected);
    assert_eq!(
        container_names(&pod, "initContainers"),
        ["braid-init", "braid-proxy"]
    );
    assert_eq!(
        pod["metadata"]["labels"]["braid.dev/workload"], "payment-v1",
        "the Deployment, not the ReplicaSet"
    );
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always", "a native sidecar");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1337);
    assert_eq!(proxy["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        proxy["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        pod["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    let volumes: Vec<_> = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .to_vec()
        .into_iter()
        .collect();
    // The workload's proxy.json and the namespace's destinations.json, in one volume.
    let config = volumes
        .iter()
        .find(|v| v["name"] == "braid-config")
        .expect("the config volume");
    assert_eq!(
        config["projected"]["sources"],
        json!([
            {"configMap": {"name": "braid-proxy-payment-v1", "optional": true}},
            {"configMap": {"name": "braid-destinations", "optional": true}},
        ])
    );
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "braid-identity-payment-v1")
    );
    assert!(
        pod["metadata"]["annotations"]["braid.dev/injected"]
            .as_str()
            .is_some_and(|a| a.contains("braid-proxy"))
    );
    check_golden("plain", &pod);
}

#[test]
fn app_init_containers_run_after_the_proxy_and_exclusions_reach_braid_init() {
    let (_, _, pod) = admit(&fixture("init-containers"));
    assert_eq!(
        container_names(&pod, "initContainers"),
        ["braid-init", "braid-proxy", "schema"]
    );
    let args = &pod["spec"]["initContainers"][0]["args"];
    assert_eq!(
        args,
        &json!([
            "init",
            "--proxy-uid=1337",
            "--exclude-inbound-ports=9100",
            "--exclude-outbound-ports=5432,6379",
            "--exclude-outbound-cidrs=169.254.169.254/32"
        ])
    );
    check_golden("init-containers", &pod);
}

#[test]
fn http_probes_are_rewritten_to_the_proxy_and_others_kept() {
    let (_, _, pod) = admit(&fixture("probes"));
    let app = &pod["spec"]["containers"][0];
    assert_eq!(
        app["livenessProbe"]["httpGet"],
        json!({"path": "/app-health/app/liveness", "port": 15020, "scheme": "HTTP"})
    );
    assert_eq!(
        app["readinessProbe"]["httpGet"]["path"],
        "/app-health/app/readiness"
    );
    assert_eq!(
        app["startupProbe"],
        json!({"tcpSocket": {"port": 8080}}),
        "TCP probes are left alone"
    );
    let env = pod["spec"]["initContainers"][1]["env"]
        .as_array()
        .expect("env");
    let probes = env
        .iter()
        .find(|e| e["name"] == "BRAID_APP_PROBES")
        .expect("originals for the proxy");
    let probes: Value =
        serde_json::from_str(probes["value"].as_str().expect("string")).expect("JSON");
    assert_eq!(
        probes["app/liveness"],
        json!({"port": 8080, "path": "/healthz", "scheme": "HTTP"}),
        "named port resolved"
    );
    assert_eq!(probes["app/readiness"]["path"], "/ready?full=1");
    check_golden("probes", &pod);
}

#[test]
fn host_network_opted_out_and_already_injected_pods_are_untouched() {
    for name in ["host-network", "opted-out"] {
        let (outcome, response, pod) = admit(&fixture(name));
        assert_eq!(
            (outcome, &response["allowed"]),
            (Outcome::Skipped, &json!(true)),
            "{name}"
        );
        assert!(response["patch"].is_null(), "{name} got a patch");
        assert_eq!(pod, fixture(name));
    }
    let (_, _, injected) = admit(&fixture("plain"));
    let (outcome, response, again) = admit(&injected);
    assert_eq!(outcome, Outcome::Skipped);
    assert!(response["patch"].is_null());
    assert_eq!(again, injected, "admitting an injected pod changes nothing");
}

#[test]
fn a_bad_exclusion_annotation_is_refused_naming_it() {
    let mut pod = fixture("opted-out");
    pod["metadata"]["annotations"] = json!({"braid.dev/exclude-outbound-ports": "5432,lots"});
    let (outcome, response, _) = admit(&pod);
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(
        message.contains("braid.dev/exclude-outbound-ports") && message.contains("lots"),
        "{message}"
    );
}

#[test]
fn the_cli_injects_a_deployment_template_and_passes_other_kinds_through() {
    let input = std::fs::read_to_string(dir().join("fixtures/deployment.yaml")).expect("fixture");
    let output = inject_manifests(&input, &settings()).expect("injects");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&output).expect("YAML out");
    assert_eq!(documents.len(), 2);
    let template = &documents[0]["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["braid.dev/workload"],
        "order"
    );
    assert_eq!(
        container_names(template, "initContainers"),
        ["braid-init", "braid-proxy"]
    );
    assert_eq!(
        template["spec"]["volumes"][0]["projected"]["sources"][0]["configMap"]["name"],
        "braid-proxy-order"
    );
    assert_eq!(
        documents[1],
        serde_saphyr::from_multiple::<Value>(&input).expect("input")[1],
        "the Service is unchanged"
    );
    check_golden("deployment-cli", &documents[0]);
}

#[test]
fn malformed_reviews_get_a_response_with_a_clear_message() {
    let cases: [(&[u8], &str); 5] = [
        (b"{not json", "not a JSON AdmissionReview"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "has no request"),
        (br#"{"request":{"uid":"u1","kind":{"group":"apps","version":"v1","kind":"Deployment"}}}"#, "Pods only"),
        (br#"{"request":{"uid":"u2","kind":{"group":"","version":"v1","kind":"Pod"}}}"#, "does not hold a valid Pod request"),
        (b"", "not a JSON AdmissionReview"),
    ];
    for (body, expected) in cases {
        let (answer, outcome) = review(body, &settings());
        assert_eq!(outcome, Outcome::Invalid);
        let response = serde_json::to_value(answer).expect("serializes")["response"].clone();
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected),
            "{:?}: {message}",
            String::from_utf8_lossy(body)
        );
    }
}
