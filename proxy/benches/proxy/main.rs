//! `make bench` (proxy part): the same upstream application reached six ways, in one run on one
//! machine: direct; through a braid pair (client proxy → mTLS → server proxy, after
//! `braid-proxy init` installed the real iptables redirect); through a braid pair to a port the
//! server makes opaque (its proxy copies bytes: the price of its HTTP parsing); through the braid client proxy alone
//! to an endpoint outside the mesh (one hop in plain HTTP: the same work, and the same chain of
//! processes, as the other proxies'); through HAProxy; through nginx (both
//! Debian packages, as plain reverse proxies with upstream keep-alive, one thread or one process
//! each, like the one-thread braid-proxy). Three loads: HTTP/1.1 at a fixed rate of 1,000
//! requests per second over 100 connections (open loop), HTTP/1.1 at a fixed concurrency
//! (closed loop), and HTTP/2 (h2c) at a fixed concurrency with h2load. For each: p50, p99 and
//! p99.9 latency, throughput, each proxy's CPU time per request (from /proc) and peak RSS
//! (VmHWM). Writes bench/results/proxy.md and bench/results/proxy.svg. Needs root.
//!
//! The namespaces are the proxy test's pods (tests/mesh/pods.rs): the client pod runs the load
//! generator, braid's client proxy, HAProxy and nginx; the server pod runs the upstream on 8080
//! (behind braid's inbound), on 8084 (behind it, opaque) and on 9080 (excluded from
//! redirection: the direct path).

mod baseline_report;
mod cost;
mod h2load;
mod load;
mod others;
#[path = "../../tests/mesh/pods.rs"]
#[allow(dead_code)]
mod pods;
mod policy;
mod report;
mod svg;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use pods::{Ca, Pod, SERVER_IP, eventually, publish, run, runtime};
use report::{Load, Measured, Setup};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";
const RUN: Duration = Duration::from_secs(8);
/// Every setup runs every load this many times, in turns; the report shows the median of each
/// number (one run's CPU per request moved by up to ±20%).
const ROUNDS: usize = 3;
const CLOSED_CONNECTIONS: usize = 50;
const RATE: u64 = 1_000;
const RATE_CONNECTIONS: usize = 100;
/// HTTP/2: h2load's connections, and concurrent streams on each.
const H2_CONNECTIONS: usize = 10;
const H2_STREAMS: usize = 10;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("upstream") => return runtime().block_on(load::upstream(&[8080, 8084, 9080])),
        Some("sequence") => return cost::sequence_command(&args[1], &args[2]),
        Some("load") => {
            let target = args[1].parse().expect("target");
            let connections = args[2].parse().expect("connections");
            let rate = args[3].parse().expect("rate");
            let seconds: f64 = args[4].parse().expect("seconds");
            let duration = Duration::from_secs_f64(seconds);
            let outcome = if rate == 0 {
                runtime().block_on(load::closed_loop(target, connections, duration))
            } else {
                load::fixed_rate(target, connections, rate, duration)
            };
            println!("outcome: {}", outcome.to_line());
            return;
        }
        _ => {}
    }
    assert_eq!(
        run("id", &["-u"]).trim(),
        "0",
        "the proxy benchmark needs root: run `make bench`"
    );
    for program in ["haproxy", "nginx", "h2load", "valgrind"] {
        assert!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{program} is missing: `make bench` installs it \
             (apt-get install haproxy nginx-light nghttp2-client valgrind)"
        );
    }
    let root = std::env::temp_dir().join(format!("braid-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("temp dir");
    let result = std::panic::catch_unwind(|| bench(&root));
    let _ = std::fs::remove_dir_all(&root);
    match result {
        Ok((measured, counted)) => {
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
            std::fs::create_dir_all(&out).expect("results dir");
            let markdown =
                report::markdown(&measured) + &cost::section(&counted, baseline().as_deref());
            std::fs::write(out.join("proxy.md"), &markdown).expect("write");
            std::fs::write(out.join("proxy.svg"), svg::svg(&measured)).expect("write");
            println!("{markdown}");
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn proxy_config(
    workload: &str,
    identity: &str,
    mode: &str,
    destinations: serde_json::Value,
) -> String {
    serde_json::json!({
        "version": 1,
        "workload": {"namespace": "bench", "name": workload, "identity": identity},
        "inbound": {"mtlsMode": mode},
        "destinations": destinations,
    })
    .to_string()
}

fn spawn(pod: &mut Pod, as_proxy: bool, program: &str, args: &[&str], log: &str) -> u32 {
    let log = std::fs::File::create(pod.dir.join(log)).expect("log");
    let child: Child = pod
        .command(as_proxy, program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starts");
    let pid = child.id();
    pod.children.push(child);
    pid
}

/// The braid-proxy under test: `BRAID_PROXY` (`make bench` sets it to a copy of `cargo build
/// --release -p braid-proxy`, built as the baseline is), else the binary cargo built with this
/// benchmark.
/// The latter carries the features the benchmark's dev-dependencies turn on in shared crates
/// (tokio's `test-util` clock checks, for one): measured against a baseline built alone it
/// counted 3–5% more instructions per request with the very same source.
fn proxy_under_test() -> String {
    std::env::var("BRAID_PROXY")
        .ok()
        .filter(|path| !path.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_braid-proxy").to_owned())
}

/// The baseline build of braid-proxy to measure beside this one, from `BRAID_BASELINE_PROXY`
/// (`make bench BASELINE=<git revision>` builds and sets it).
pub fn baseline() -> Option<String> {
    std::env::var("BRAID_BASELINE_PROXY")
        .ok()
        .filter(|path| !path.is_empty())
}

/// Which process of a setup is measured.
#[derive(Clone, Copy)]
enum Process {
    /// The client pod's braid-proxy, whichever build runs.
    ClientProxy,
    /// The server pod's braid-proxy.
    ServerProxy,
    /// Another process.
    Pid(u32),
}

fn bench(root: &Path) -> (Vec<Measured>, Vec<cost::Counted>) {
    let proxy = proxy_under_test();
    let proxy = proxy.as_str();
    let me = std::env::current_exe()
        .expect("self")
        .to_string_lossy()
        .into_owned();
    let (mut client, mut server, _) = pods::pair(root);
    std::fs::create_dir_all(&client.dir).expect("dir");
    std::fs::create_dir_all(&server.dir).expect("dir");
    // HAProxy and nginx run as UID 1337 too (so their upstream connections are not redirected)
    // and nginx writes its temporary files here.
    run("chmod", &["0777", &client.dir.to_string_lossy()]);

    let ca = Ca::new();
    for (pod, id) in [(&client, CLIENT_ID), (&server, SERVER_ID)] {
        let (cert, key) = ca.leaf(id, 2030);
        publish(
            &pod.dir.join("identity"),
            1,
            &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &ca.pem)],
        );
    }
    // The pair's destination (the server proxy, over mTLS) and the one hop's (the upstream's
    // port that is not redirected, in plain HTTP: an endpoint outside the mesh).
    let destination = serde_json::json!([{
        "name": "bench.bench", "clusterIps": ["10.96.0.10"],
        "ports": [{"port": 80, "protocol": "http",
                   "endpoints": [{"ip": SERVER_IP, "port": 8080, "identity": SERVER_ID}]}]
    }, {
        "name": "opaque-server.bench", "clusterIps": ["10.96.0.12"],
        "ports": [{"port": 80, "protocol": "http",
                   "endpoints": [{"ip": SERVER_IP, "port": 8084, "identity": SERVER_ID}]}]
    }, {
        "name": "resilient.bench", "clusterIps": ["10.96.0.13"],
        "ports": [{"port": 80, "protocol": "http",
                   "endpoints": [{"ip": SERVER_IP, "port": 8080, "identity": SERVER_ID}]}],
        "policy": policy::resilient()
    }, {
        "name": "plain.bench", "clusterIps": ["10.96.0.11"],
        "ports": [{"port": 80, "protocol": "http",
                   "endpoints": [{"ip": SERVER_IP, "port": 9080}]}]
    }]);
    publish(
        &client.dir.join("config"),
        1,
        &[(
            "proxy.json",
            &proxy_config("client", CLIENT_ID, "PERMISSIVE", destination),
        )],
    );
    // The server proxy parses HTTP on 8080 and copies bytes on 8084 (opaque).
    let mut server_config: serde_json::Value = serde_json::from_str(&proxy_config(
        "server",
        SERVER_ID,
        "STRICT",
        serde_json::json!([]),
    ))
    .expect("json");
    server_config["opaquePorts"] = serde_json::json!([8084]);
    let server_config = server_config.to_string();
    publish(
        &server.dir.join("config"),
        1,
        &[("proxy.json", &server_config)],
    );
    pods::init(&client, proxy, &[]);
    pods::init(&server, proxy, &["--exclude-inbound-ports=9080"]);
    spawn(&mut server, false, &me, &["upstream"], "upstream.log");
    let start_proxy = |pod: &mut Pod, binary: &str| {
        pod.start_proxy_binary(binary);
        pod.children.last().map_or(0, Child::id)
    };
    let mut proxies = [
        start_proxy(&mut client, proxy),
        start_proxy(&mut server, proxy),
    ];

    let haproxy_cfg = client.dir.join("haproxy.cfg");
    std::fs::write(&haproxy_cfg, others::haproxy_cfg()).expect("haproxy.cfg");
    let haproxy = spawn(
        &mut client,
        true,
        "haproxy",
        &["-db", "-f", &haproxy_cfg.to_string_lossy()],
        "haproxy.log",
    );
    let prefix = client.dir.to_string_lossy().into_owned();
    let nginx_conf = client.dir.join("nginx.conf");
    std::fs::write(&nginx_conf, others::nginx_conf(&prefix)).expect("nginx.conf");
    let nginx = spawn(
        &mut client,
        true,
        "nginx",
        &[
            "-e",
            "stderr",
            "-p",
            &prefix,
            "-c",
            &nginx_conf.to_string_lossy(),
        ],
        "nginx.log",
    );
    for pod in [&client, &server] {
        eventually("the proxy to be ready", || {
            pod.admin("/ready").starts_with("HTTP/1.1 200")
        });
    }

    // How each setup is reached: its HTTP/1.1 and its HTTP/2 address, whether the load runs as
    // UID 1337 (the direct path must not be redirected to braid), the proxy processes.
    let direct = format!("{SERVER_IP}:9080");
    let pair = [
        ("braid client hop", Process::ClientProxy),
        ("braid server hop", Process::ServerProxy),
    ];
    let mut setups = vec![
        (
            Setup::Direct,
            [direct.as_str(), &direct],
            true,
            vec![],
            proxy,
        ),
        (
            Setup::BraidPair,
            ["10.96.0.10:80", "10.96.0.10:80"],
            false,
            pair.to_vec(),
            proxy,
        ),
        (
            Setup::BraidPairOpaqueServer,
            ["10.96.0.12:80", "10.96.0.12:80"],
            false,
            pair.to_vec(),
            proxy,
        ),
        (
            Setup::BraidPairPolicy,
            ["10.96.0.10:80", "10.96.0.10:80"],
            false,
            pair.to_vec(),
            proxy,
        ),
        (
            Setup::BraidPairResilience,
            ["10.96.0.13:80", "10.96.0.13:80"],
            false,
            pair.to_vec(),
            proxy,
        ),
        (
            Setup::BraidHop,
            ["10.96.0.11:80", "10.96.0.11:80"],
            false,
            vec![("braid", Process::ClientProxy)],
            proxy,
        ),
        (
            Setup::Haproxy,
            ["127.0.0.1:8181", "127.0.0.1:8183"],
            false,
            vec![("haproxy", Process::Pid(haproxy))],
            proxy,
        ),
        (
            Setup::Nginx,
            ["127.0.0.1:8282", "127.0.0.1:8283"],
            false,
            vec![("nginx", Process::Pid(nginx))],
            proxy,
        ),
    ];
    let baseline = baseline();
    if let Some(baseline) = &baseline {
        setups.push((
            Setup::BaselinePair,
            ["10.96.0.10:80", "10.96.0.10:80"],
            false,
            pair.to_vec(),
            baseline.as_str(),
        ));
        setups.push((
            Setup::BaselineHop,
            ["10.96.0.11:80", "10.96.0.11:80"],
            false,
            vec![("braid", Process::ClientProxy)],
            baseline.as_str(),
        ));
    }
    let policy_config = policy::with_policy(&server_config, CLIENT_ID);
    let (mut server_version, mut server_has_policy) = (1, false);
    let mut runs = Vec::new();
    // `BRAID_BENCH_ONLY=instructions`: the instruction counts alone (a quick look while working).
    let instructions_only = std::env::var("BRAID_BENCH_ONLY").is_ok_and(|v| v == "instructions");
    for round in 1..=if instructions_only { 0 } else { ROUNDS } {
        for (setup, [target, h2_target], as_proxy, processes, binary) in &setups {
            let (setup, as_proxy) = (*setup, *as_proxy);
            let wants_policy = setup == Setup::BraidPairPolicy;
            if wants_policy != server_has_policy {
                let generation = || server.metric("braid_proxy_config_generation");
                let before = generation();
                server_version += 1;
                let config = if wants_policy {
                    &policy_config
                } else {
                    &server_config
                };
                publish(
                    &server.dir.join("config"),
                    server_version,
                    &[("proxy.json", config)],
                );
                eventually("the server's config", || generation() > before);
                server_has_policy = wants_policy;
            }
            // Every braid setup starts on fresh proxies of its build (same config and identity):
            // no connection pooled under another setup's config, no memory kept from one.
            let swap = processes
                .iter()
                .any(|(_, p)| matches!(p, Process::ClientProxy | Process::ServerProxy));
            if swap {
                let [client_pid, server_pid] = &mut proxies;
                for (pod, pid) in [(&mut client, client_pid), (&mut server, server_pid)] {
                    run("kill", &[&pid.to_string()]);
                    if let Some(child) = pod.children.iter_mut().find(|c| c.id() == *pid) {
                        let _ = child.wait();
                    }
                    pod.children.retain(|c| c.id() != *pid);
                    *pid = start_proxy(pod, binary);
                }
                for pod in [&client, &server] {
                    eventually("the proxy to be ready", || {
                        pod.admin("/ready").starts_with("HTTP/1.1 200")
                    });
                }
            }
            let processes: Vec<(&str, u32)> = processes
                .iter()
                .map(|(name, process)| {
                    let pid = match process {
                        Process::ClientProxy => proxies[0],
                        Process::ServerProxy => proxies[1],
                        Process::Pid(pid) => *pid,
                    };
                    (*name, pid)
                })
                .collect();
            let load = |connections: usize, rate: u64, seconds: f64| {
                let output = client
                    .command(as_proxy, &me)
                    .args(["load", target, &connections.to_string(), &rate.to_string()])
                    .arg(seconds.to_string())
                    .output()
                    .expect("load runs");
                let stdout = String::from_utf8_lossy(&output.stdout);
                stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("outcome: "))
                    .and_then(load::Outcome::from_line)
                    .unwrap_or_else(|| panic!("no outcome from the load: {stdout}"))
            };
            if round == 1 || swap {
                let warmup = load(10, 0, 1.0);
                assert!(warmup.ok > 0, "{setup:?} answered nothing during warm-up");
            }
            for (kind, connections) in [
                (Load::FixedRate, RATE_CONNECTIONS),
                (Load::Closed, CLOSED_CONNECTIONS),
                (Load::Http2, H2_CONNECTIONS),
            ] {
                let before: Vec<report::CpuTicks> = processes
                    .iter()
                    .map(|(_, pid)| {
                        report::reset_peak_rss(*pid);
                        report::cpu_ticks(*pid)
                    })
                    .collect();
                let outcome = match kind {
                    Load::FixedRate => load(connections, RATE, RUN.as_secs_f64()),
                    Load::Closed => load(connections, 0, RUN.as_secs_f64()),
                    Load::Http2 => h2load::timed(&client, as_proxy, h2_target),
                };
                let per_process = processes
                    .iter()
                    .zip(before)
                    .map(|((name, pid), before)| {
                        let after = report::cpu_ticks(*pid);
                        let per_request = |ticks: u64| {
                            ticks as f64 * report::tick_us() / outcome.ok.max(1) as f64
                        };
                        let user = after.user - before.user;
                        let system = after.system - before.system;
                        report::ProcessCost {
                            name: name.to_string(),
                            cpu_us_per_request: per_request(user + system),
                            user_us_per_request: per_request(user),
                            peak_rss_kib: report::peak_rss_kib(*pid),
                        }
                    })
                    .collect();
                println!("round {round} {setup:?} {kind:?} connections={connections}: {outcome:?}");
                runs.push(Measured {
                    setup,
                    load: kind,
                    connections,
                    outcome,
                    processes: per_process,
                });
            }
        }
    }
    let measured = report::medians(&runs);
    let variants = cost::variants(proxy, baseline.as_deref(), &server_config, &policy_config);
    let counted = cost::measure(
        &mut client,
        &mut server,
        proxies,
        &variants,
        &mut server_version,
        &root.join("callgrind"),
    );
    (measured, counted)
}
