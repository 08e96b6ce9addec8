//! `make bench` (proxy part): the same upstream application reached four ways, in one run on one
//! machine: direct; through a braid pair (client proxy → mTLS → server proxy, after
//! `braid-proxy init` installed the real iptables redirect); through HAProxy; through nginx (both
//! Debian packages, as plain HTTP/1.1 reverse proxies with upstream keep-alive, one thread or
//! worker each, like the one-thread braid-proxy). Two loads: a fixed concurrency (closed loop)
//! and a fixed rate of 1,000 requests per second over 100 connections (open loop). For each: p50,
//! p99 and p99.9 latency, throughput, each proxy's CPU time per request (from /proc) and peak
//! RSS (VmHWM). Writes bench/results/proxy.md and bench/results/proxy.svg. Needs root.
//!
//! The namespaces are the proxy test's pods (tests/mesh/pods.rs): the client pod runs the load
//! generator, braid's client proxy, HAProxy and nginx; the server pod runs the upstream on 8080
//! (behind braid's inbound) and on 9080 (excluded from redirection: the direct path).

mod load;
#[path = "../../tests/mesh/pods.rs"]
#[allow(dead_code)]
mod pods;
mod report;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use pods::{Ca, Pod, SERVER_IP, eventually, publish, run, runtime};
use report::{Measured, Setup};

const CLIENT_ID: &str = "spiffe://cluster.local/ns/bench/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/bench/sa/server";
const RUN: Duration = Duration::from_secs(8);
const CLOSED_CONNECTIONS: usize = 50;
const RATE: u64 = 1_000;
const RATE_CONNECTIONS: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("upstream") => return runtime().block_on(load::upstream(&[8080, 9080])),
        Some("load") => {
            let target = args[1].parse().expect("target");
            let connections = args[2].parse().expect("connections");
            let rate = args[3].parse().expect("rate");
            let seconds: f64 = args[4].parse().expect("seconds");
            let outcome = runtime().block_on(load::run(
                target,
                connections,
                rate,
                Duration::from_secs_f64(seconds),
            ));
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
    for program in ["haproxy", "nginx"] {
        assert!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{program} is missing: `make bench` installs it (apt-get install haproxy nginx-light)"
        );
    }
    let root = std::env::temp_dir().join(format!("braid-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("temp dir");
    let result = std::panic::catch_unwind(|| bench(&root));
    let _ = std::fs::remove_dir_all(&root);
    match result {
        Ok(measured) => {
            let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results");
            std::fs::create_dir_all(&out).expect("results dir");
            let markdown = report::markdown(&measured);
            std::fs::write(out.join("proxy.md"), &markdown).expect("write");
            std::fs::write(out.join("proxy.svg"), report::svg(&measured)).expect("write");
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

fn bench(root: &Path) -> Vec<Measured> {
    let proxy = env!("CARGO_BIN_EXE_braid-proxy");
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
    let destination = serde_json::json!([{
        "name": "bench.bench", "clusterIps": ["10.96.0.10"],
        "ports": [{"port": 80, "protocol": "http",
                   "endpoints": [{"ip": SERVER_IP, "port": 8080, "identity": SERVER_ID}]}]
    }]);
    publish(
        &client.dir.join("config"),
        1,
        &[(
            "proxy.json",
            &proxy_config("client", CLIENT_ID, "PERMISSIVE", destination),
        )],
    );
    publish(
        &server.dir.join("config"),
        1,
        &[(
            "proxy.json",
            &proxy_config("server", SERVER_ID, "STRICT", serde_json::json!([])),
        )],
    );
    pods::init(&client, proxy, &[]);
    pods::init(&server, proxy, &["--exclude-inbound-ports=9080"]);
    spawn(&mut server, false, &me, &["upstream"], "upstream.log");
    let start_proxy = |pod: &mut Pod| {
        pod.start_proxy();
        pod.children.last().map_or(0, Child::id)
    };
    let client_proxy = start_proxy(&mut client);
    let server_proxy = start_proxy(&mut server);

    let haproxy_cfg = client.dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  \
             timeout client 30s\n  timeout server 30s\n  http-reuse always\nfrontend f\n  \
             bind 127.0.0.1:8181\n  default_backend b\nbackend b\n  server s1 {SERVER_IP}:9080\n"
        ),
    )
    .expect("haproxy.cfg");
    let haproxy = spawn(
        &mut client,
        true,
        "haproxy",
        &["-db", "-f", &haproxy_cfg.to_string_lossy()],
        "haproxy.log",
    );
    let prefix = client.dir.to_string_lossy().into_owned();
    let nginx_conf = client.dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {prefix}/nginx.pid;\nevents {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n  \
             fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n  \
             upstream u {{ server {SERVER_IP}:9080; keepalive 128; }}\n  \
             server {{ listen 127.0.0.1:8282; location / {{ proxy_pass http://u; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }} }}\n}}\n"
        ),
    )
    .expect("nginx.conf");
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

    let setups = [
        (Setup::Direct, format!("{SERVER_IP}:9080"), true, vec![]),
        (
            Setup::BraidPair,
            "10.96.0.10:80".to_string(),
            false,
            vec![
                ("braid client hop", client_proxy),
                ("braid server hop", server_proxy),
            ],
        ),
        (
            Setup::Haproxy,
            "127.0.0.1:8181".to_string(),
            false,
            vec![("haproxy", haproxy)],
        ),
        (
            Setup::Nginx,
            "127.0.0.1:8282".to_string(),
            false,
            vec![("nginx", nginx)],
        ),
    ];
    let mut measured = Vec::new();
    for (setup, target, as_proxy, processes) in setups {
        let load = |connections: usize, rate: u64, seconds: f64| {
            let output = client
                .command(as_proxy, &me)
                .args(["load", &target, &connections.to_string(), &rate.to_string()])
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
        let warmup = load(10, 0, 1.0);
        assert!(warmup.ok > 0, "{setup:?} answered nothing during warm-up");
        for (rate, connections) in [(RATE, RATE_CONNECTIONS), (0, CLOSED_CONNECTIONS)] {
            let before: Vec<u64> = processes
                .iter()
                .map(|(_, pid)| report::cpu_ticks(*pid))
                .collect();
            let outcome = load(connections, rate, RUN.as_secs_f64());
            let per_process = processes
                .iter()
                .zip(before)
                .map(|((name, pid), before)| report::ProcessCost {
                    name: name.to_string(),
                    cpu_us_per_request: (report::cpu_ticks(*pid) - before) as f64
                        * report::tick_us()
                        / outcome.ok.max(1) as f64,
                    peak_rss_kib: report::peak_rss_kib(*pid),
                })
                .collect();
            println!("{setup:?} rate={rate} connections={connections}: {outcome:?}");
            measured.push(Measured {
                setup,
                rate,
                connections,
                outcome,
                processes: per_process,
            });
        }
    }
    measured
}
