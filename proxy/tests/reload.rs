//! Hot reload as the kubelet drives it: a ConfigMap volume is `..<timestamp>/proxy.json`, a
//! `..data` symlink to the current timestamp directory, and `proxy.json -> ..data/proxy.json`;
//! an update writes a new timestamp directory and swaps `..data` atomically. The test does the
//! same, and reads the outcome through the admin server over real TCP.

use std::path::Path;
use std::time::{Duration, Instant};

use braid_proxy::admin;
use braid_proxy::state::reload;
use braid_proxy_config::split::sha256_hex;

#[path = "mesh/pods.rs"]
#[allow(dead_code)]
mod pods;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn config(mode: &str) -> String {
    format!(
        r#"{{"version": 1,
            "workload": {{"namespace": "shop", "name": "order", "identity": "spiffe://cluster.local/ns/shop/sa/order"}},
            "inbound": {{"mtlsMode": "{mode}"}}}}"#
    )
}

/// Writes `content` as the kubelet would: a new timestamp directory, then an atomic `..data` swap.
fn publish(dir: &Path, version: u32, content: &str) {
    pods::publish(dir, version, &[("proxy.json", content)]);
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to admin");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned(),
    )
}

/// A mesh CA and a workload certificate, PEM: tls.crt, tls.key, ca.crt.
fn issue() -> [String; 3] {
    let ca = pods::Ca::new();
    let (cert, key) = ca.leaf("spiffe://cluster.local/ns/shop/sa/order", 2030);
    [cert, key, ca.pem]
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn swaps_reload_and_a_bad_file_keeps_the_last_good_config() {
    let dir = std::env::temp_dir().join(format!("braid-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let context = braid_proxy::state::context::Context::new(Duration::from_millis(100));
    let state = context.config.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(admin::serve(listener, context.clone(), Default::default()));
    tokio::spawn(reload::watch_file(dir.join("proxy.json"), state.clone()));

    assert_eq!(
        get(addr, "/ready").await.0,
        503,
        "not ready before any config"
    );
    assert_eq!(get(addr, "/live").await.0, 200);

    publish(&dir, 1, &config("STRICT"));
    until("the first config", async || {
        get(addr, "/ready").await.1.contains("no identity")
    })
    .await;
    let identity_dir = dir.join("identity");
    std::fs::create_dir_all(&identity_dir).expect("dir");
    for (file, content) in ["tls.crt", "tls.key", "ca.crt"].iter().zip(issue()) {
        std::fs::write(identity_dir.join(file), content).expect("write");
    }
    tokio::spawn(reload::watch_identity(
        identity_dir,
        context.identity.clone(),
    ));
    until("ready with config and identity", async || {
        get(addr, "/ready").await.0 == 200
    })
    .await;
    let (_, summary) = get(addr, "/config").await;
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON");
    assert_eq!(
        (summary["generation"].as_u64(), summary["mtlsMode"].as_str()),
        (Some(1), Some("STRICT"))
    );

    publish(&dir, 2, &config("PERMISSIVE"));
    until("the second config", async || {
        state.current().is_some_and(|c| c.generation == 2)
    })
    .await;
    let (_, summary) = get(addr, "/config").await;
    assert!(summary.contains("PERMISSIVE"), "{summary}");

    publish(&dir, 3, &config("SOMETIMES"));
    until("the refusal", async || {
        state
            .reload_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    let (_, summary) = get(addr, "/config").await;
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON");
    assert_eq!(
        summary["generation"], 2,
        "the refused file replaced nothing"
    );
    assert_eq!(summary["mtlsMode"], "PERMISSIVE");
    assert!(
        summary["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("inbound.mtlsMode")),
        "{summary}"
    );
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains("braid_proxy_config_reload_errors_total 1")
            && metrics.contains("braid_proxy_config_generation 2"),
        "{metrics}"
    );
    assert_eq!(
        get(addr, "/ready").await.0,
        200,
        "still ready on the last good config"
    );

    // Version skew: a newer operator's document loads, its unknown fields named; one of a
    // version this proxy does not read is refused for its version.
    let newer = config("STRICT").replace(
        r#""inbound": {"#,
        r#""authorizationDefaults": {"mode": "mesh"}, "inbound": {"dryRun": true, "#,
    );
    publish(&dir, 4, &newer);
    until("the newer operator's config", async || {
        state.current().is_some_and(|c| c.generation == 3)
    })
    .await;
    let (_, summary) = get(addr, "/config").await;
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON");
    assert_eq!(summary["mtlsMode"], "STRICT", "{summary}");
    assert_eq!(
        summary["ignoredFields"],
        serde_json::json!(["authorizationDefaults", "inbound.dryRun"]),
        "{summary}"
    );
    publish(
        &dir,
        5,
        &config("PERMISSIVE").replace(r#""version": 1"#, r#""version": 3"#),
    );
    until("the refusal of version 3", async || {
        state
            .reload_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2
    })
    .await;
    let (_, summary) = get(addr, "/config").await;
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON");
    assert_eq!(summary["generation"], 3, "{summary}");
    assert!(
        summary["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("version: version 3 is not read by this proxy")),
        "{summary}"
    );

    // A file that is there but cannot be read (the kubelet's volume made unreadable; here a
    // directory in its place, since root reads any mode): the last good config stays, and
    // `/config` says why, which the operator's read-back names on the policies.
    let unreadable = dir.join("..2026_11_26_00_00_06");
    std::fs::create_dir_all(unreadable.join("proxy.json")).expect("a directory as the file");
    let staging = dir.join("..data_tmp");
    std::os::unix::fs::symlink(unreadable.file_name().expect("name"), &staging).expect("symlink");
    std::fs::rename(&staging, dir.join("..data")).expect("swap ..data");
    until("the unreadable file named", async || {
        let (_, summary) = get(addr, "/config").await;
        summary.contains("cannot read")
    })
    .await;
    let (_, summary) = get(addr, "/config").await;
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON");
    assert_eq!(summary["generation"], 3, "{summary}");
    assert!(
        summary["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("proxy.json: Is a directory")
                && e.ends_with("keeping the last good config")),
        "{summary}"
    );

    // Readable again: the next file is put in force and its hash is the SHA-256 of the file's
    // bytes, the contract the operator compares with (`braid.dev/file-hash`).
    let last = config("PERMISSIVE");
    publish(&dir, 7, &last);
    until("the file after the unreadable one", async || {
        state.current().is_some_and(|c| c.generation == 4)
    })
    .await;
    let (_, summary) = get(addr, "/config").await;
    let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON");
    let want = sha256_hex(last.as_bytes());
    assert_eq!(summary["hash"], want.as_str(), "{summary}");
    assert_eq!(summary["lastError"], serde_json::Value::Null, "{summary}");

    let _ = std::fs::remove_dir_all(&dir);
}

/// The split layout: the workload's `proxy.json` says its destinations are in the namespace's
/// `destinations.json`, projected beside it. A swap of that file alone is a new config, and the
/// hash the proxy reports covers both files (what the operator expects of it).
#[tokio::test]
async fn a_split_config_reloads_when_its_destinations_file_alone_changes() {
    let dir = std::env::temp_dir().join(format!("braid-reload-split-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let state = std::sync::Arc::new(reload::ConfigState::default());
    tokio::spawn(reload::watch_file(dir.join("proxy.json"), state.clone()));
    let document = config("STRICT").replace(
        r#""version": 1"#,
        r#""version": 2, "requires": ["sharedDestinations"], "sharedDestinations": true"#,
    );
    let destinations = |ip: &str| {
        format!(
            r#"[{{"name": "payment.shop", "clusterIps": ["10.96.0.9"], "ports": [{{"port": 8080,
                "endpoints": [{{"ip": "{ip}", "port": 8080,
                "identity": "spiffe://cluster.local/ns/shop/sa/payment"}}]}}]}}]"#
        )
    };
    let endpoint = |state: &reload::ConfigState| {
        state.current().map(|c| {
            c.config.destinations[0].ports[0].endpoints[0]
                .ip
                .to_string()
        })
    };

    // Without its destinations file, the document is refused and none is in force.
    publish(&dir, 1, &document);
    until("the refusal without destinations.json", async || {
        state
            .last_error()
            .is_some_and(|e| e.contains("sharedDestinations"))
    })
    .await;
    assert!(state.current().is_none());

    let first = destinations("10.244.0.7");
    pods::publish(
        &dir,
        2,
        &[("proxy.json", &document), ("destinations.json", &first)],
    );
    until("the split config", async || state.current().is_some()).await;
    assert_eq!(endpoint(&state).as_deref(), Some("10.244.0.7"));
    let hash = |destinations: &str| {
        braid_proxy_config::split::combined_hash(
            &sha256_hex(document.as_bytes()),
            &sha256_hex(destinations.as_bytes()),
        )
    };
    assert_eq!(state.current().expect("loaded").hash, hash(&first));

    let second = destinations("10.244.0.8");
    pods::publish(
        &dir,
        3,
        &[("proxy.json", &document), ("destinations.json", &second)],
    );
    until("the new destinations", async || {
        state.current().is_some_and(|c| c.generation == 2)
    })
    .await;
    assert_eq!(endpoint(&state).as_deref(), Some("10.244.0.8"));
    assert_eq!(state.current().expect("loaded").hash, hash(&second));
    let _ = std::fs::remove_dir_all(&dir);
}
