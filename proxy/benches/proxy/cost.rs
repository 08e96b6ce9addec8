//! Instructions per request, counted by valgrind's callgrind: what a feature costs on the
//! per-request path, measured so that one run settles it. CPU time per request on this shared
//! 2-core machine moved by ±20% between runs of the same build (the timed rounds above); an
//! instruction count repeats within a fraction of a per cent for the same binary and the same
//! requests. It counts user-space work only: the kernel's share (sockets, TLS records, wake-ups)
//! is the same for every variant of one path, since they make the same system calls.
//!
//! Each variant restarts both proxies under callgrind (its build, its configs), warms them up,
//! zeroes their counters (`callgrind_control -z`), sends [`REQUESTS`] requests one after the
//! other on one connection — HTTP/1.1, then HTTP/2 with `h2load -c1 -m1` — and reads each
//! proxy's count (`callgrind_control -d`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::pods::{Pod, publish, run};
use crate::{h2load, load};

/// Requests counted per variant and protocol.
pub const REQUESTS: u64 = 1_000;
const WARM_UP: u64 = 100;

/// One way of reaching the upstream, measured.
pub struct Variant {
    /// Its name in the report.
    pub name: &'static str,
    /// The braid-proxy binary both pods run.
    pub binary: String,
    /// The server pod's `proxy.json`.
    pub server_config: String,
    /// The address the client dials.
    pub target: &'static str,
}

/// Instructions per request of one variant over one protocol.
pub struct Counted {
    /// The variant's name.
    pub variant: &'static str,
    /// HTTP/2 (else HTTP/1.1).
    pub http2: bool,
    /// The client pod's proxy, then the server pod's.
    pub per_request: [f64; 2],
}

/// What is measured: this build's pair (plain, to an opaque server port, with the server under
/// the 10-rule policy, with the client's retries and outlier detection) and one hop, and the
/// baseline build's pair and hop.
pub fn variants(
    this: &str,
    baseline: Option<&str>,
    server_config: &str,
    policy_config: &str,
) -> Vec<Variant> {
    let variant = |name, binary: &str, server_config: &str, target| Variant {
        name,
        binary: binary.to_string(),
        server_config: server_config.to_string(),
        target,
    };
    let mut all = vec![
        variant(PAIR, this, server_config, "10.96.0.10:80"),
        variant(PAIR_OPAQUE, this, server_config, "10.96.0.12:80"),
        variant(PAIR_POLICY, this, policy_config, "10.96.0.10:80"),
        variant(PAIR_RESILIENCE, this, server_config, "10.96.0.13:80"),
        variant(HOP, this, server_config, "10.96.0.11:80"),
    ];
    if let Some(baseline) = baseline {
        all.push(variant(
            BASELINE_PAIR,
            baseline,
            server_config,
            "10.96.0.10:80",
        ));
        all.push(variant(
            BASELINE_HOP,
            baseline,
            server_config,
            "10.96.0.11:80",
        ));
    }
    all
}

/// Runs `variants` in turn; the pods' running proxies are stopped first and replaced by
/// callgrind's. `version` numbers the server config files published.
pub fn measure(
    client: &mut Pod,
    server: &mut Pod,
    running: [u32; 2],
    variants: &[Variant],
    version: &mut u32,
    dir: &Path,
) -> Vec<Counted> {
    std::fs::create_dir_all(dir).expect("callgrind dir");
    run("chmod", &["0777", &dir.to_string_lossy()]);
    let mut pids = running;
    let mut counted = Vec::new();
    for variant in variants {
        for (pod, pid) in [(&mut *client, pids[0]), (&mut *server, pids[1])] {
            stop(pod, pid);
        }
        *version += 1;
        publish(
            &server.dir.join("config"),
            *version,
            &[("proxy.json", &variant.server_config)],
        );
        pids = [
            start(client, &variant.binary, dir),
            start(server, &variant.binary, dir),
        ];
        for pod in [&*client, &*server] {
            wait_ready(pod);
        }
        for http2 in [false, true] {
            let send = |n: u64| {
                if http2 {
                    h2load::sequence(client, variant.target, n)
                } else {
                    let output = client
                        .command(
                            false,
                            &std::env::current_exe().expect("self").to_string_lossy(),
                        )
                        .args(["sequence", variant.target, &n.to_string()])
                        .output()
                        .expect("load runs");
                    String::from_utf8_lossy(&output.stdout)
                        .lines()
                        .find_map(|l| l.strip_prefix("ok: "))
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0)
                }
            };
            assert_eq!(send(WARM_UP), WARM_UP, "{} warm-up", variant.name);
            for pid in pids {
                callgrind_control("-z", pid);
            }
            let ok = send(REQUESTS);
            assert_eq!(ok, REQUESTS, "{}: every request answered", variant.name);
            let per_request = pids.map(|pid| dump(pid, dir) as f64 / ok as f64);
            println!(
                "instructions {} {}: client {:.0}, server {:.0} per request",
                variant.name,
                if http2 { "HTTP/2" } else { "HTTP/1.1" },
                per_request[0],
                per_request[1]
            );
            counted.push(Counted {
                variant: variant.name,
                http2,
                per_request,
            });
        }
    }
    for (pod, pid) in [(client, pids[0]), (server, pids[1])] {
        stop(pod, pid);
    }
    counted
}

/// `n` HTTP/1.1 requests in sequence, for the `sequence` subcommand: `ok: <answered>`.
pub fn sequence_command(target: &str, n: &str) {
    let target = target.parse().expect("target");
    let n = n.parse().expect("count");
    println!("ok: {}", load::sequence(target, n));
}

fn stop(pod: &mut Pod, pid: u32) {
    run("kill", &["-9", &pid.to_string()]);
    if let Some(child) = pod.children.iter_mut().find(|c| c.id() == pid) {
        let _ = child.wait();
    }
    pod.children.retain(|c| c.id() != pid);
}

/// Starts `binary run` in `pod` under callgrind, as the pod's proxy.
fn start(pod: &mut Pod, binary: &str, dir: &Path) -> u32 {
    let log = std::fs::File::create(pod.dir.join("proxy.log")).expect("log");
    let child = pod
        .command(true, "valgrind")
        .args([
            "--tool=callgrind",
            "--dump-line=no",
            "--compress-strings=no",
        ])
        .arg(format!(
            "--callgrind-out-file={}/cg.%p",
            dir.to_string_lossy()
        ))
        .args([binary, "run"])
        .env("BRAID_CONFIG_DIR", pod.dir.join("config"))
        .env("BRAID_IDENTITY_DIR", pod.dir.join("identity"))
        .envs(VGDB_NAMES)
        .stderr(log)
        .spawn()
        .expect("valgrind starts");
    let pid = child.id();
    pod.children.push(child);
    pid
}

/// Waits for a proxy under callgrind (tens of times slower to start) to be ready.
fn wait_ready(pod: &Pod) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pod.admin("/ready").starts_with("HTTP/1.1 200") {
        assert!(
            Instant::now() < deadline,
            "a proxy under callgrind was not ready in 2 minutes: {}",
            pod.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What valgrind's gdbserver and `vgdb` name their pipes by (user and host, from the
/// environment): the same on both sides, whoever runs them.
const VGDB_NAMES: [(&str, &str); 2] = [("LOGNAME", "braid-bench"), ("HOST", "braid-bench")];

/// `callgrind_control <what> <pid>`, as the proxy's user: `vgdb` can then wake a proxy blocked in
/// a system call (as root it could not open the pipes of another user's valgrind).
fn callgrind_control(what: &str, pid: u32) {
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            "callgrind_control",
        ])
        .args([what, &pid.to_string()])
        .envs(VGDB_NAMES)
        .output()
        .expect("callgrind_control runs");
    assert!(
        output.status.success(),
        "callgrind_control {what} {pid}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Dumps `pid`'s counters and reads their total (instructions since the last zero).
fn dump(pid: u32, dir: &Path) -> u64 {
    let dumps = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("cg.{pid}.")))
            })
            .collect()
    };
    let before = dumps().len();
    callgrind_control("-d", pid);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files = dumps();
        if files.len() > before {
            let newest = files
                .iter()
                .max_by_key(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .and_then(|e| e.parse::<u32>().ok())
                })
                .expect("a dump");
            let text = std::fs::read_to_string(newest).unwrap_or_default();
            if let Some(total) = text
                .lines()
                .find_map(|l| l.strip_prefix("totals: ").or(l.strip_prefix("summary: ")))
                .and_then(|v| v.trim().parse().ok())
            {
                return total;
            }
        }
        assert!(Instant::now() < deadline, "no callgrind dump for {pid}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The report's section: instructions per request by variant, and the ratios the targets name.
pub fn section(counted: &[Counted], baseline: Option<&str>) -> String {
    let mut out = String::from(
        "\n## Instructions per request (callgrind)\n\nUser-space instructions each proxy \
         executed per request, in thousands: both proxies under valgrind's callgrind, ",
    );
    let _ = writeln!(
        out,
        "{REQUESTS} requests one after the other on one connection after {WARM_UP} of warm-up \
         (HTTP/2: `h2load -c1 -m1`). The same binary and requests give the same count to a \
         fraction of a per cent, so these ratios hold where the CPU times above move by ±20%.\n"
    );
    out.push_str(
        "| variant | HTTP/1.1 client hop | HTTP/1.1 server hop | HTTP/2 client hop | HTTP/2 server hop |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let get = |variant: &str, http2: bool| {
        counted
            .iter()
            .find(|c| c.variant == variant && c.http2 == http2)
            .map(|c| c.per_request)
    };
    let mut names: Vec<&str> = Vec::new();
    for c in counted {
        if !names.contains(&c.variant) {
            names.push(c.variant);
        }
    }
    for name in &names {
        let cell = |http2: bool, hop: usize| {
            get(name, http2).map_or("–".into(), |v| format!("{:.1}", v[hop] / 1000.0))
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} |",
            cell(false, 0),
            cell(false, 1),
            cell(true, 0),
            cell(true, 1)
        );
    }
    out.push('\n');
    let ratio = |what: &str, hop: usize, a: &str, b: &str, target: &str| {
        let line: Vec<String> = [false, true]
            .into_iter()
            .filter_map(|http2| {
                let (x, y) = (get(a, http2)?[hop], get(b, http2)?[hop]);
                Some(format!(
                    "{} ×{:.3}",
                    if http2 { "HTTP/2" } else { "HTTP/1.1" },
                    x / y
                ))
            })
            .collect();
        (!line.is_empty()).then(|| format!("- {what}: {}. Target: {target}.\n", line.join(", ")))
    };
    let lines = [
        ratio(
            "Server hop parsing HTTP against the same hop on an opaque port",
            1,
            PAIR,
            PAIR_OPAQUE,
            "≤ 1.15 (HTTP/2 is copied on both unless a policy reads requests)",
        ),
        ratio(
            "Server hop under the 10-rule authorization policy and a rate limit, against no policy",
            1,
            PAIR_POLICY,
            PAIR,
            "≤ 1.05 (HTTP/2: the policy makes the hop parse, which the first ratio prices)",
        ),
        ratio(
            "Client hop with a retry policy and outlier detection (nothing failing), against none",
            0,
            PAIR_RESILIENCE,
            PAIR,
            "≤ 1.05",
        ),
        ratio(
            "One hop, this build against the baseline",
            0,
            HOP,
            BASELINE_HOP,
            "no worse",
        ),
        ratio(
            "Pair's client hop, this build against the baseline",
            0,
            PAIR,
            BASELINE_PAIR,
            "no worse",
        ),
        ratio(
            "Pair's server hop, this build against the baseline",
            1,
            PAIR,
            BASELINE_PAIR,
            "no worse",
        ),
    ];
    for line in lines.into_iter().flatten() {
        out.push_str(&line);
    }
    if let Some(baseline) = baseline {
        let _ = writeln!(out, "\nBaseline build: `{baseline}`.");
    }
    out
}

/// The variants' names.
pub const PAIR: &str = "braid pair";
/// The pair to a port the server's config makes opaque.
pub const PAIR_OPAQUE: &str = "braid pair, server port opaque";
/// The pair with the server under the 10-rule policy.
pub const PAIR_POLICY: &str = "braid pair, server under the 10-rule policy";
/// The pair to a destination with a retry policy and outlier detection.
pub const PAIR_RESILIENCE: &str = "braid pair, client with retries and outlier detection";
/// The client proxy alone.
pub const HOP: &str = "braid one hop";
/// The pair with the baseline build.
pub const BASELINE_PAIR: &str = "braid pair, baseline build";
/// The one hop with the baseline build.
pub const BASELINE_HOP: &str = "braid one hop, baseline build";
