//! The proxy against careless and hostile peers, on the two pods of the mesh test:
//!
//! - a connection aimed at a proxy's own ports (15006 and 15001 on the server pod, from the
//!   client namespace unredirected, and from a mesh peer over mTLS; 127.0.0.1:15001/15006 from
//!   inside the pod), under PERMISSIVE and STRICT: refused at once, the proxy's descriptors and
//!   memory flat, other callers served;
//! - 500 slowloris connections against each listener: every one closed once the request-head
//!   deadline passes, a steady caller served throughout with no failure (its p99 reported),
//!   `/live` and `/ready` answering within a second;
//! - a flood past the inbound connection cap: the new connections refused, the held ones still
//!   served, `/live` answering;
//! - 500 connections at once to each listener while its proxy is stopped (as a busy proxy's one
//!   thread is): the kernel holds every one in the listener's queue, none waits for a SYN
//!   retransmit, and the proxy answers them all once it resumes.

use std::time::{Duration, Instant};

use crate::pods::{Pod, SERVER_IP, eventually, finished, publish, run};

/// The request-head deadline the test sets, in milliseconds.
const HEAD_MS: u64 = 2_000;

/// `config` (a `proxy.json`) with `limits` set.
pub fn with_limits(config: &str, limits: serde_json::Value) -> String {
    let mut document: serde_json::Value = serde_json::from_str(config).expect("json");
    document["limits"] = limits;
    document.to_string()
}

/// The pid of the pod's proxy (`braid-proxy run`).
fn proxy_pid(pod: &Pod) -> u32 {
    pod.children
        .iter()
        .map(|child| child.id())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.ends_with(b"braid-proxy\0run\0"))
        })
        .expect("the proxy runs")
}

/// Open descriptors and resident memory (KiB) of the pod's proxy.
fn footprint(pod: &Pod) -> (usize, u64) {
    let pid = proxy_pid(pod);
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count();
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    (descriptors, rss)
}

/// How long `/live` and `/ready` of the pod's proxy take to answer 200 (the slower of the two).
fn live_latency(pod: &Pod) -> Duration {
    ["/live", "/ready"]
        .iter()
        .map(|path| {
            let asked = Instant::now();
            let answer = pod.admin(path);
            assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer:?}");
            asked.elapsed()
        })
        .max()
        .unwrap_or_default()
}

/// The generation of the config the pod's proxy runs.
fn generation(pod: &Pod) -> u64 {
    let shown = pod.admin("/config");
    let body = shown.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(body)
        .map_or(0, |c| c["generation"].as_u64().unwrap_or(0))
}

fn opened_now(pod: &Pod, direction: &str) -> i64 {
    let series = |name: &str| pod.metric(&format!("{name}{{direction=\"{direction}\"}}")) as i64;
    series("braid_proxy_tcp_connections_opened_total")
        - series("braid_proxy_tcp_connections_closed_total")
}

/// Runs the checks; `server_config(mode)` and `client_config` are the pods' normal configs,
/// `version` the next free `publish` version of each pod's config directory.
pub fn check(
    client: &Pod,
    server: &Pod,
    server_config: impl Fn(&str) -> String,
    client_config: &str,
    mesh_identity_dir: &str,
    mut version: u32,
) {
    let head_limits = serde_json::json!({"requestHeadTimeoutMs": HEAD_MS});
    let in_force = |pod: &Pod, version: u32, config: &str| {
        let before = generation(pod);
        publish(&pod.dir.join("config"), version, &[("proxy.json", config)]);
        eventually("the new config", || generation(pod) > before);
    };
    in_force(
        client,
        version,
        &with_limits(client_config, head_limits.clone()),
    );
    let mut publish_server = |mode: &str, limits: serde_json::Value| {
        in_force(server, version, &with_limits(&server_config(mode), limits));
        version += 1;
    };

    // Connections aimed at the proxy's own ports.
    let served_before = footprint(server);
    for mode in ["PERMISSIVE", "STRICT"] {
        publish_server(mode, head_limits.clone());
        for _ in 0..10 {
            for port in [15006, 15001] {
                let answer = client.client(true, &["raw", &format!("{SERVER_IP}:{port}")]);
                assert!(
                    matches!(answer.as_str(), "refused" | "closed" | "reset"),
                    "{mode}: a connection to the server pod's {port} must be refused at once: {answer}"
                );
            }
            let peer = client.client(
                true,
                &["tls", &format!("{SERVER_IP}:15006"), mesh_identity_dir],
            );
            assert!(
                peer.starts_with("refused"),
                "{mode}: a mesh peer on 15006: {peer}"
            );
            for port in [15006, 15001] {
                let inside = server.client(false, &["raw", &format!("127.0.0.1:{port}")]);
                assert!(
                    matches!(inside.as_str(), "refused" | "closed" | "reset"),
                    "{mode}: the pod's own app to 127.0.0.1:{port}: {inside}"
                );
            }
        }
        assert_eq!(
            client.client(false, &["http", "10.96.0.11:80", "/after-loops", "5"]),
            "v1=5",
            "{mode}: other callers are served"
        );
    }
    let loops = server
        .metric("braid_proxy_tcp_connections_refused_total{direction=\"inbound\",reason=\"loop\"}")
        + server.metric(
            "braid_proxy_tcp_connections_refused_total{direction=\"outbound\",reason=\"loop\"}",
        );
    assert!(loops >= 40.0, "loops refused and counted: {loops}");
    let served_after = footprint(server);
    println!(
        "mesh: 80 connections to the proxy's own ports refused; server proxy descriptors {} -> {}, VmRSS {} -> {} KiB",
        served_before.0, served_after.0, served_before.1, served_after.1
    );
    assert!(
        served_after.0 <= served_before.0 + 16,
        "descriptors grew: {served_before:?} -> {served_after:?}"
    );
    assert!(
        served_after.1 <= served_before.1 + 4 * 1024,
        "memory grew: {served_before:?} -> {served_after:?}"
    );

    // 500 slowloris connections against each listener, a steady caller meanwhile.
    publish_server("PERMISSIVE", head_limits.clone());
    for (listener, as_proxy, target) in [
        ("outbound", false, "10.96.0.11:80".to_string()),
        ("inbound", true, format!("{SERVER_IP}:8081")),
    ] {
        let slow = client.spawn_client(as_proxy, &["slowloris", &target, "500", "10"]);
        let steady = client.spawn_client(false, &["steady", "10.96.0.11:80", "5"]);
        std::thread::sleep(Duration::from_millis(1_000));
        let live = [live_latency(client), live_latency(server)];
        let (slow, steady) = (finished(slow), finished(steady));
        println!(
            "mesh: slowloris x500 on {listener}: {slow}; steady caller: {steady}; /live {live:?}"
        );
        assert!(
            slow.starts_with("closed=500 answered=0 still_open=0"),
            "{listener}: every slow connection is closed: {slow}"
        );
        let field = |text: &str, key: &str| crate::count(text, key) as u64;
        assert!(
            field(&slow, "first_ms") >= HEAD_MS - 200 && field(&slow, "last_ms") <= HEAD_MS + 3_000,
            "{listener}: closed at the deadline: {slow}"
        );
        assert!(
            steady.contains(" failed=0 ") && field(&steady, "ok") > 50,
            "{listener}: the steady caller failed: {steady}"
        );
        assert!(
            live.iter().all(|d| *d < Duration::from_secs(1)),
            "/live: {live:?}"
        );
    }
    let timed_out = server.metric(
        "braid_proxy_tcp_connections_timed_out_total{direction=\"inbound\",deadline=\"request_head\"}",
    );
    assert!(timed_out >= 500.0, "counted: {timed_out}");

    // A flood past the inbound cap.
    const CAP: i64 = 50;
    publish_server("PERMISSIVE", serde_json::json!({"maxConnections": CAP}));
    let hold = CAP - opened_now(server, "inbound");
    let flood = client.spawn_client(
        true,
        &[
            "flood",
            &format!("{SERVER_IP}:8081"),
            &hold.to_string(),
            "30",
        ],
    );
    std::thread::sleep(Duration::from_millis(1_500));
    let live = live_latency(server);
    let flood = finished(flood);
    println!("mesh: flood past a cap of {CAP}: {flood}; /live {live:?}");
    assert_eq!(
        flood,
        format!("held={hold} refused=30 served=true"),
        "the cap refuses the flood and serves the held: {flood}"
    );
    assert!(live < Duration::from_secs(1), "/live took {live:?}");
    let refused = server.metric(
        "braid_proxy_tcp_connections_refused_total{direction=\"inbound\",reason=\"limit\"}",
    );
    assert!(refused >= 30.0, "counted: {refused}");
    publish_server("PERMISSIVE", head_limits);

    // A burst of connections while the proxy is stopped: the kernel completes each handshake
    // for the listener's queue within the client's second (a SYN dropped off a full queue is
    // sent again only after a second); the proxy answers them all once it resumes. (Last: the
    // outbound burst leaves the client's proxy a pool of mTLS connections to the server's,
    // which the flood's count of held connections would include.)
    const BURST: usize = 500;
    for (listener, pod, as_proxy, target) in [
        ("outbound", client, false, "10.96.0.11:80".to_string()),
        ("inbound", server, true, format!("{SERVER_IP}:8081")),
    ] {
        let open_before = opened_now(pod, listener);
        let pid = proxy_pid(pod).to_string();
        run("kill", &["-STOP", &pid]);
        let burst = &[
            "connect-burst",
            &target,
            &BURST.to_string(),
            "1000",
            "10000",
        ];
        let burst = client.spawn_client(as_proxy, burst);
        std::thread::sleep(Duration::from_millis(2_000));
        run("kill", &["-CONT", &pid]);
        let burst = finished(burst);
        println!("mesh: {BURST} connections at once to the stopped {listener} proxy: {burst}");
        assert_eq!(
            burst,
            format!("connected={BURST} answered={BURST}"),
            "{listener}: the listener's queue holds the burst"
        );
        eventually("the burst's connections closed", || {
            opened_now(pod, listener) <= open_before
        });
    }
}
