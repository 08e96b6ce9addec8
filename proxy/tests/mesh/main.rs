//! Two "pods" on one machine, meshed by braid-proxy (needs root; `make netns-test` runs it).
//!
//! Each pod is a network namespace this test creates, joined by one veth pair and nothing else:
//! no default route, so no packet can leave them. The client pod routes the test's Service range
//! (10.96.0.0/16) onto the veth, as a node would, so that a missing redirect sends packets only
//! into the server namespace, where nothing answers them. In each pod `braid-proxy init` installs
//! the real iptables rules and `braid-proxy run` runs as UID 1337. The server pod runs plain
//! applications (`apps`); the client pod's application is this binary (`client ...`), so every
//! request goes app → iptables → proxy → mTLS → proxy → app. The certificates come from a mesh
//! CA the test makes with rcgen, as the operator does.
//!
//! What it shows: HTTP/1.1, h2c, gRPC unary and streaming, websockets, opaque TCP (client- and
//! server-speaks-first) and passthrough all pass; a gRPC client gets the proxy's own failures as
//! gRPC codes (no endpoint 14, timeout 4); a config field this proxy does not know is ignored and
//! named; a capture between the pods sees only TLS for
//! meshed calls; the wrong peer identity is refused; STRICT refuses a caller without a certificate
//! and one from another CA, PERMISSIVE serves plaintext; a weight change 100/0 → 80/20 in the file
//! applies without a restart within ±5 points over 1,000 requests; a corrupt file is refused,
//! counted, and the old config kept; rotating both pods' certificates under load fails nothing;
//! the HTTP-aware inbound side forwards pipelined, chunked, HTTP/2, gRPC and websocket traffic
//! under both modes and refuses smuggling ([`inbound`]); authorization and rate limits are
//! enforced on real mTLS callers ([`authz`]); retries, failover, outlier ejection and the
//! circuit breaker work over mTLS ([`resilience`]); the proxy holds against careless and hostile
//! peers ([`hardening`]); and the end of a pod fails no caller's request ([`drain`]).

mod apps;
mod attack;
mod authz;
mod client;
mod configs;
mod drain;
mod hardening;
mod inbound;
mod pods;
mod resilience;

use std::io::{BufRead as _, BufReader};

use configs::{ORDER, PAYMENT, client_config, server_config};
use pods::{Ca, Pod, SERVER_IP, eventually, new_year, publish, run, runtime};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn count(result: &str, key: &str) -> usize {
    result
        .split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("apps") => return runtime().block_on(apps::run()),
        Some("client") => return runtime().block_on(client::run(&args[1..])),
        Some("drain-app") => return runtime().block_on(drain::app(&args[1])),
        _ => {}
    }
    assert_eq!(
        run("id", &["-u"]).trim(),
        "0",
        "this test needs root (network namespaces, iptables): run it with `make netns-test`"
    );
    let started = Instant::now();
    let root = std::env::temp_dir().join(format!("braid-mesh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("temp dir");
    let result = std::panic::catch_unwind(|| scenario(&root));
    let _ = std::fs::remove_dir_all(&root);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    println!(
        "mesh: every check passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn scenario(root: &Path) {
    let (mut client, mut server, veth_server) = pods::pair(root);
    let ca = Ca::new();
    let identity = |pod: &Pod, id: &str, year: i32, version: u32| {
        let (cert, key) = ca.leaf(id, year);
        publish(
            &pod.dir.join("identity"),
            version,
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca.pem)],
        );
    };
    identity(&client, ORDER, 2030, 1);
    identity(&server, PAYMENT, 2030, 1);
    publish(
        &client.dir.join("config"),
        1,
        &[("proxy.json", &client_config(100, 0))],
    );
    publish(
        &server.dir.join("config"),
        1,
        &[("proxy.json", &server_config("PERMISSIVE"))],
    );

    for pod in [&client, &server] {
        pods::init(pod, env!("CARGO_BIN_EXE_braid-proxy"), &[]);
    }
    let apps = server
        .command(
            false,
            &std::env::current_exe().expect("self").to_string_lossy(),
        )
        .arg("apps")
        .spawn()
        .expect("apps start");
    server.children.push(apps);
    // An application that speaks TLS itself (its own certificate, not the mesh's), for callers
    // outside the mesh.
    let (cert, key) = Ca::new().leaf("spiffe://elsewhere/app", 2030);
    let (cert_file, key_file) = (
        server.dir.join("app-tls.crt"),
        server.dir.join("app-tls.key"),
    );
    std::fs::write(&cert_file, cert).expect("write");
    std::fs::write(&key_file, key).expect("write");
    let tls_app = server
        .command(false, "openssl")
        .args(["s_server", "-4", "-accept", "8443", "-www", "-quiet"])
        .arg("-cert")
        .arg(&cert_file)
        .arg("-key")
        .arg(&key_file)
        .stdout(Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    server.children.push(tls_app);
    client.start_proxy();
    server.start_proxy();
    for pod in [&client, &server] {
        eventually("the proxy to be ready", || {
            pod.admin("/ready").starts_with("HTTP/1.1 200")
        });
    }

    // Every protocol, app to app through both proxies.
    assert_eq!(
        client.client(false, &["http", "10.96.0.11:80", "/hello", "3"]),
        "v1=3"
    );
    let h2 = client.client(false, &["h2", "10.96.0.11:80", "20"]);
    assert!(h2.starts_with("ok=20 sample=v1 /h2/"), "h2c: {h2}");
    assert_eq!(
        client.client(false, &["grpc", "10.96.0.20:9000"]),
        "unary=ok stream=ok"
    );
    assert_eq!(
        client.client(false, &["ws", "10.96.0.21:80"]),
        "upgraded=true echo=true"
    );
    assert_eq!(
        client.client(false, &["tcp", "10.96.0.22:7000"]),
        "banner= echo=true"
    );
    assert_eq!(
        client.client(false, &["tcp", "10.96.0.23:7001", "banner"]),
        "banner=HELLO echo=true",
        "a server-speaks-first protocol must not stall in detection"
    );
    assert_eq!(
        client.client(
            false,
            &["http", &format!("{SERVER_IP}:8082"), "/direct", "1"]
        ),
        "v2=1",
        "a call to a pod IP is meshed too"
    );
    assert_eq!(
        client.client(false, &["tcp", &format!("{SERVER_IP}:7002")]),
        "banner= echo=true",
        "a destination the config does not name passes through"
    );
    let impostor = client.client(false, &["http", "10.96.0.30:80", "/", "1"]);
    assert!(
        impostor.starts_with("status:502:")
            && impostor.contains("expected spiffe://cluster.local/ns/shop/sa/someone-else"),
        "a peer with another identity must be refused: {impostor}"
    );
    inbound::check(&client, &server, &ca, root, "PERMISSIVE");
    resilience::check(&client);
    // The proxy's own failures reach a gRPC client as gRPC codes, not as an HTTP mapping.
    assert_eq!(
        client.client(false, &["grpc-status", "10.96.0.40:9000"]),
        "http=200 grpc-status=14 message=nowhere.shop has no endpoint on port 9000 proxy-error=yes",
        "no endpoint: UNAVAILABLE"
    );
    assert_eq!(
        client.client(false, &["grpc-status", "10.96.0.41:9000"]),
        "http=200 grpc-status=4 message=no response within 300 ms proxy-error=yes",
        "route timeout: DEADLINE_EXCEEDED"
    );
    // The config carries a field this proxy does not know: accepted, and said.
    assert!(
        client
            .admin("/config")
            .contains("\"ignoredFields\":[\"futureFeature\"]"),
        "{}",
        client.admin("/config")
    );

    // A capture between the pods: meshed bytes are TLS; the plaintext control shows it sees all.
    let pcap = root.join("between-pods.pcap");
    let mut dump = server
        .command(false, "tcpdump")
        .args([
            "-i",
            &veth_server,
            "--immediate-mode",
            "-U",
            "-w",
            &pcap.to_string_lossy(),
            "tcp",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    let mut lines = BufReader::new(dump.stderr.take().expect("stderr")).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("listening on"))),
        "tcpdump did not start"
    );
    assert_eq!(
        client.client(
            false,
            &["http", "10.96.0.11:80", "/mesh-secret-marker", "1"]
        ),
        "v1=1"
    );
    let plain = client.client(
        true,
        &[
            "plain",
            &format!("{SERVER_IP}:8081"),
            "/plain-control-marker",
        ],
    );
    assert!(
        plain.starts_with("HTTP/1.1 200"),
        "PERMISSIVE serves plaintext: {plain}"
    );
    // A client outside the mesh speaking TLS to the application itself: under PERMISSIVE its
    // bytes reach the application untouched (no mesh ALPN in its ClientHello).
    let outside_tls = |pod: &Pod| {
        pod.command(true, "curl")
            .args([
                "-sk",
                "--max-time",
                "5",
                &format!("https://{SERVER_IP}:8443/"),
            ])
            .output()
            .expect("curl runs")
    };
    let own_tls = outside_tls(&client);
    assert!(
        String::from_utf8_lossy(&own_tls.stdout).contains("s_server"),
        "PERMISSIVE passes the application's own TLS: {own_tls:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    run("kill", &[&dump.id().to_string()]);
    let _ = dump.wait();
    let tail: Vec<String> = lines.map_while(Result::ok).collect();
    let captured = std::fs::read(&pcap).expect("pcap");
    let contains = |needle: &[u8]| captured.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"plain-control-marker"),
        "the capture missed the plaintext control ({} bytes, {tail:?}): {}",
        captured.len(),
        run("tcpdump", &["-nr", &pcap.to_string_lossy()])
    );
    assert!(
        !contains(b"mesh-secret-marker"),
        "meshed bytes crossed in the clear"
    );
    assert!(
        contains(&[0x17, 0x03, 0x03]),
        "no TLS application data between the pods"
    );
    let mtls = server.metric("braid_proxy_inbound_connections_total{accepted=\"mtls\"}");
    assert!(mtls >= 1.0, "{mtls}: {}", server.admin("/metrics"));

    // STRICT: no certificate or another CA's is refused; the mesh still works.
    publish(
        &server.dir.join("config"),
        2,
        &[("proxy.json", &server_config("STRICT"))],
    );
    eventually("STRICT in force", || {
        server.admin("/config").contains("\"mtlsMode\":\"STRICT\"")
    });
    assert_eq!(
        client.client(true, &["plain", &format!("{SERVER_IP}:8081"), "/"]),
        "refused",
        "STRICT must refuse a caller without a certificate"
    );
    let own_tls = outside_tls(&client);
    assert!(
        !own_tls.status.success() && !String::from_utf8_lossy(&own_tls.stdout).contains("s_server"),
        "STRICT must refuse TLS from outside the mesh: {own_tls:?}"
    );
    assert_eq!(
        client.client(false, &["http", "10.96.0.11:80", "/strict", "5"]),
        "v1=5"
    );
    // Every HTTP protocol through the HTTP-aware inbound side under STRICT too.
    let inbound_requests = || server.metric("braid_proxy_requests_total{direction=\"inbound\"}");
    let before = inbound_requests();
    let h2 = client.client(false, &["h2", "10.96.0.11:80", "20"]);
    assert!(h2.starts_with("ok=20 sample=v1 /h2/"), "STRICT h2c: {h2}");
    let parsed = inbound_requests() - before;
    assert!(
        parsed >= 20.0,
        "the server's proxy served {parsed} of 20 h2c requests one by one"
    );
    assert_eq!(
        client.client(false, &["grpc", "10.96.0.20:9000"]),
        "unary=ok stream=ok",
        "STRICT gRPC"
    );
    assert_eq!(
        client.client(false, &["ws", "10.96.0.21:80"]),
        "upgraded=true echo=true",
        "STRICT websockets"
    );
    inbound::check(&client, &server, &ca, root, "STRICT");
    let write_client_identity = |name: &str, cert: &str, key: &str| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        for (file, content) in [
            ("tls.crt", cert),
            ("tls.key", key),
            ("ca.crt", ca.pem.as_str()),
        ] {
            std::fs::write(dir.join(file), content).expect("write");
        }
        dir.to_string_lossy().into_owned()
    };
    let (cert, key) = ca.leaf(ORDER, 2030);
    let ours = write_client_identity("ours", &cert, &key);
    let served = client.client(true, &["tls", &format!("{SERVER_IP}:8081"), &ours]);
    assert!(
        served.starts_with("HTTP/1.1 200"),
        "a mesh certificate is served: {served}"
    );
    let foreign = Ca::new();
    let (cert, key) = foreign.leaf(ORDER, 2030);
    let theirs = write_client_identity("theirs", &cert, &key);
    let refused = client.client(true, &["tls", &format!("{SERVER_IP}:8081"), &theirs]);
    assert!(
        refused.starts_with("refused"),
        "another CA's certificate must be refused: {refused}"
    );
    assert!(server.metric("braid_proxy_inbound_connections_total{accepted=\"refused\"}") >= 2.0);

    // Weights: 100/0, then 80/20 written to the file, on the same running proxy.
    let all_v1 = client.client(false, &["http", "10.96.0.10:80", "/split", "1000"]);
    assert_eq!(all_v1, "v1=1000");
    publish(
        &client.dir.join("config"),
        2,
        &[("proxy.json", &client_config(80, 20))],
    );
    eventually("generation 2", || {
        client.admin("/config").contains("\"generation\":2")
    });
    let split = client.client(false, &["http", "10.96.0.10:80", "/split", "1000"]);
    let v2 = count(&split, "v2");
    assert_eq!(count(&split, "v1") + v2, 1000, "{split}");
    assert!(
        (150..=250).contains(&v2),
        "80/20 off by more than 5 points: {split}"
    );
    println!("mesh: 80/20 split measured {}/{}", 1000 - v2, v2);
    assert!(
        client.children[0].try_wait().expect("status").is_none(),
        "the proxy restarted"
    );

    // A corrupt file is refused whole, counted, and the 80/20 config stays.
    publish(
        &client.dir.join("config"),
        3,
        &[("proxy.json", "{\"version\": 1, \"workload\": ")],
    );
    eventually("the refusal", || {
        client.metric("braid_proxy_config_reload_errors_total") == 1.0
    });
    assert!(client.admin("/config").contains("\"generation\":2"));
    // The reason is in the proxy's log (BRAID_LOG defaults to info; refusals are warnings).
    let log = client.proxy_log();
    assert!(
        log.contains("WARN") && log.contains("proxy.json"),
        "the refusal is not logged with its reason: {log}"
    );
    let after = client.client(false, &["http", "10.96.0.10:80", "/after", "200"]);
    assert_eq!(count(&after, "v1") + count(&after, "v2"), 200, "{after}");
    assert!(
        count(&after, "v2") > 0,
        "the old split is still in force: {after}"
    );

    // Rotating both pods' certificates under steady load fails no request.
    let load = client.spawn_client(false, &["load", "10.96.0.11:80", "6"]);
    std::thread::sleep(Duration::from_millis(1500));
    identity(&client, ORDER, 2031, 2);
    identity(&server, PAYMENT, 2031, 2);
    let load = pods::finished(load);
    println!("mesh: load during rotation: {load}");
    assert!(
        load.contains("failed=0 "),
        "requests failed during rotation: {load}"
    );
    assert!(
        count(&load, "ok") > 100,
        "too little load to prove anything: {load}"
    );
    for pod in [&client, &server] {
        let expiry = pod.metric("braid_proxy_certificate_expiry_seconds");
        assert_eq!(
            expiry as i64,
            new_year(2031),
            "{} did not load its new certificate",
            pod.netns
        );
    }
    let rotated = client.client(true, &["tls", &format!("{SERVER_IP}:8081"), &ours]);
    assert!(
        rotated.contains(&format!("peer-expiry={}", new_year(2031))),
        "new handshakes must get the new certificate: {rotated}"
    );

    let next_free = authz::check(&client, &server, &ca, root, 3);
    assert!(next_free <= 10, "hardening publishes from version 10 on");
    hardening::check(
        &client,
        &server,
        server_config,
        &client_config(100, 0),
        &ours,
        10,
    );
    for pod in [&client, &server] {
        let threads: Vec<String> = pod
            .children
            .iter()
            .filter(|child| {
                std::fs::read(format!("/proc/{}/cmdline", child.id()))
                    .is_ok_and(|cmdline| cmdline.ends_with(b"braid-proxy\0run\0"))
            })
            .filter_map(|child| {
                std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()
            })
            .filter_map(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("Threads:"))
                    .map(String::from)
            })
            .collect();
        assert_eq!(
            threads,
            ["Threads:\t1"],
            "the proxy of {} is not one thread",
            pod.netns
        );
    }
    let logs = client.proxy_log() + &server.proxy_log();
    assert!(
        !logs.contains("PRIVATE KEY"),
        "a private key reached the log"
    );
    drain::check(&mut client, &mut server, &server_config("PERMISSIVE"), 90);
}
