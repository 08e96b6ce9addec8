//! Measurements from /proc, and the Markdown table and SVG plot of the results.

use std::fmt::Write as _;

use crate::load::Outcome;

/// How the upstream was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// No proxy.
    Direct,
    /// braid client proxy → mTLS → braid server proxy.
    BraidPair,
    /// [`Setup::BraidPair`] to a port the server's config makes opaque: its proxy copies bytes
    /// instead of parsing HTTP (the client proxy's work is the same).
    BraidPairOpaqueServer,
    /// [`Setup::BraidPair`] with the server workload under a 10-rule authorization policy and
    /// a rate limit that never refuses ([`crate::policy`]).
    BraidPairPolicy,
    /// [`Setup::BraidPair`] to a destination whose client policy retries and ejects outliers
    /// (nothing fails: the price of having them).
    BraidPairResilience,
    /// The braid client proxy alone, to an upstream outside the mesh (plain HTTP on its side):
    /// the same work and the same chain of processes as HAProxy's and nginx's.
    BraidHop,
    /// [`Setup::BraidPair`] with the baseline build of braid-proxy (`BRAID_BASELINE_PROXY`).
    BaselinePair,
    /// [`Setup::BraidHop`] with the baseline build.
    BaselineHop,
    /// HAProxy, one thread.
    Haproxy,
    /// nginx, one worker.
    Nginx,
}

impl Setup {
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::BraidPair => "braid pair (mTLS)",
            Self::BraidPairOpaqueServer => "braid pair, server port opaque",
            Self::BraidPairPolicy => "braid pair, server under a 10-rule policy",
            Self::BraidPairResilience => "braid pair, client with retries and outlier detection",
            Self::BraidHop => "braid one hop",
            Self::BaselinePair => "braid pair, baseline build",
            Self::BaselineHop => "braid one hop, baseline build",
            Self::Haproxy => "HAProxy",
            Self::Nginx => "nginx",
        }
    }
}

/// The load of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// HTTP/1.1 at a fixed rate (open loop).
    FixedRate,
    /// HTTP/1.1 at a fixed concurrency (closed loop).
    Closed,
    /// HTTP/2 (h2c from the client) at a fixed concurrency, with h2load.
    Http2,
}

impl Load {
    pub fn title(self) -> &'static str {
        match self {
            Self::FixedRate => "HTTP/1.1 at a fixed rate",
            Self::Closed => "HTTP/1.1 closed loop",
            Self::Http2 => "HTTP/2",
        }
    }
}

/// One proxy process's cost during a run.
#[derive(Debug)]
pub struct ProcessCost {
    /// Which process.
    pub name: String,
    /// User plus system CPU time per answered request.
    pub cpu_us_per_request: f64,
    /// The user-space part of it (the rest is the kernel's: sockets, wake-ups).
    pub user_us_per_request: f64,
    /// VmHWM of the process and its children.
    pub peak_rss_kib: u64,
}

/// One run.
#[derive(Debug)]
pub struct Measured {
    /// How the upstream was reached.
    pub setup: Setup,
    /// What load.
    pub load: Load,
    /// Connections of the load generator.
    pub connections: usize,
    /// What the load generator saw.
    pub outcome: Outcome,
    /// The proxies' costs.
    pub processes: Vec<ProcessCost>,
}

fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[(values.len() - 1) / 2]
}

/// Per setup and load, the median over the rounds of each number: requests, seconds, each
/// percentile, each process's CPU per request. Errors are summed and peak RSS is the highest.
pub fn medians(runs: &[Measured]) -> Vec<Measured> {
    let mut out: Vec<Measured> = Vec::new();
    for run in runs {
        if out
            .iter()
            .any(|m| m.setup == run.setup && m.load == run.load)
        {
            continue;
        }
        let same: Vec<&Measured> = runs
            .iter()
            .filter(|m| m.setup == run.setup && m.load == run.load)
            .collect();
        let outcome = Outcome {
            ok: median(same.iter().map(|m| m.outcome.ok).collect()),
            errors: same.iter().map(|m| m.outcome.errors).sum(),
            seconds: median(same.iter().map(|m| m.outcome.seconds).collect()),
            percentiles_us: [0, 1, 2]
                .map(|i| median(same.iter().map(|m| m.outcome.percentiles_us[i]).collect())),
        };
        let processes = run
            .processes
            .iter()
            .enumerate()
            .map(|(i, p)| ProcessCost {
                name: p.name.clone(),
                cpu_us_per_request: median(
                    same.iter()
                        .map(|m| m.processes[i].cpu_us_per_request)
                        .collect(),
                ),
                user_us_per_request: median(
                    same.iter()
                        .map(|m| m.processes[i].user_us_per_request)
                        .collect(),
                ),
                peak_rss_kib: same
                    .iter()
                    .map(|m| m.processes[i].peak_rss_kib)
                    .max()
                    .unwrap_or(0),
            })
            .collect();
        out.push(Measured {
            setup: run.setup,
            load: run.load,
            connections: run.connections,
            outcome,
            processes,
        });
    }
    out
}

fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((child, ppid))
        })
        .collect();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    all
}

/// CPU time of a process tree, in clock ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTicks {
    /// utime.
    pub user: u64,
    /// stime.
    pub system: u64,
}

/// utime and stime of `pid` and its descendants.
pub fn cpu_ticks(pid: u32) -> CpuTicks {
    descendants(pid)
        .iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(CpuTicks {
                user: fields.get(11)?.parse().ok()?,
                system: fields.get(12)?.parse().ok()?,
            })
        })
        .fold(CpuTicks::default(), |sum, t| CpuTicks {
            user: sum.user + t.user,
            system: sum.system + t.system,
        })
}

/// Microseconds per clock tick.
pub fn tick_us() -> f64 {
    let hz: f64 = crate::run("getconf", &["CLK_TCK"])
        .trim()
        .parse()
        .unwrap_or(100.0);
    1e6 / hz
}

/// Resets the peak resident memory (VmHWM) of `pid` and its descendants to their current RSS, so
/// that the next reading is the peak of the run that follows (`clear_refs`, Linux 4.0+).
pub fn reset_peak_rss(pid: u32) {
    for p in descendants(pid) {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

/// Peak resident memory of `pid` and its descendants, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    descendants(pid)
        .iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches(" kB")
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024 / 1024);
    let kernel = crate::run("uname", &["-r"]);
    format!(
        "{model}, {cores} cores, {memory} GiB, Linux {}",
        kernel.trim()
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `<process> <value>` for each proxy process of `m`, comma-separated; `–` when there is none.
fn each_process(m: &Measured, value: impl Fn(&ProcessCost) -> String) -> String {
    if m.processes.is_empty() {
        return "–".into();
    }
    m.processes
        .iter()
        .map(|p| format!("{} {}", p.name, value(p)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn direct(all: &[Measured], load: Load) -> Option<&Measured> {
    all.iter()
        .find(|m| m.setup == Setup::Direct && m.load == load)
}

/// The results as Markdown.
pub fn markdown(all: &[Measured]) -> String {
    let mut out = String::from("# Proxy benchmark\n\n");
    let _ = writeln!(
        out,
        "Machine: {}. One run of `make bench`: every setup ran every load {} times, in turns; each \
         number is the median of those runs (errors are their sum). Same \
         upstream (a one-thread hyper server answering 30 bytes, HTTP/1.1 and h2c). The load \
         generators run on the same machine. CPU is user + system time of the proxy process(es) \
         divided by answered requests (in brackets: the user-space part, which the kernel \
         estimates by sampling at its clock tick: rough when a run uses little CPU, as at the fixed rate); RSS is the peak (VmHWM) during the run, the highest of the rounds.\n",
        machine(),
        crate::ROUNDS
    );
    for load in [Load::FixedRate, Load::Closed, Load::Http2] {
        let first = all.iter().find(|m| m.load == load);
        let Some(first) = first else { continue };
        let title = match load {
            Load::FixedRate => format!(
                "HTTP/1.1, fixed rate: {} requests/s over {} connections",
                crate::RATE,
                first.connections
            ),
            Load::Closed => format!(
                "HTTP/1.1, fixed concurrency: {} connections, closed loop",
                first.connections
            ),
            Load::Http2 => format!(
                "HTTP/2, fixed concurrency: h2load, {} connections × {} streams",
                first.connections,
                crate::H2_STREAMS
            ),
        };
        let _ = writeln!(out, "## {title}, {} s\n", crate::RUN.as_secs());
        if load == Load::Http2 {
            out.push_str(
                "The client speaks h2c. The braid pair carries HTTP/2 end to end (one multiplexed \
                 mTLS connection between the proxies); HAProxy speaks h2c to the upstream too; \
                 nginx cannot, and proxies to it over pooled HTTP/1.1 connections.\n\n",
            );
        }
        out.push_str(
            "| path | requests/s | errors | p50 ms | p99 ms | p99.9 ms | p99 added vs direct | proxy CPU µs/request | peak RSS MiB |\n\
             |---|---:|---:|---:|---:|---:|---:|---|---|\n",
        );
        let base = direct(all, load);
        for m in all.iter().filter(|m| m.load == load) {
            let [p50, p99, p999] = m.outcome.percentiles_us;
            let added = base.map_or(String::new(), |b| {
                format!(
                    "{:+.2} ms",
                    (p99 as f64 - b.outcome.percentiles_us[1] as f64) / 1000.0
                )
            });
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
                m.setup.label(),
                m.outcome.ok as f64 / m.outcome.seconds,
                m.outcome.errors,
                ms(p50),
                ms(p99),
                ms(p999),
                added,
                each_process(m, |p| format!(
                    "{:.1} ({:.1})",
                    p.cpu_us_per_request, p.user_us_per_request
                )),
                each_process(m, |p| format!("{:.1}", mib(p.peak_rss_kib))),
            );
        }
        out.push('\n');
    }
    out.push_str("## Against the targets\n\n");
    let cost = |setup: Setup, load: Load| -> Vec<f64> {
        all.iter()
            .filter(|m| m.setup == setup && m.load == load)
            .flat_map(|m| m.processes.iter().map(|p| p.cpu_us_per_request))
            .collect()
    };
    let first = |setup: Setup, load: Load| cost(setup, load).first().copied().unwrap_or(f64::NAN);
    for load in [Load::FixedRate, Load::Closed] {
        let hop = first(Setup::BraidHop, load);
        let nginx = first(Setup::Nginx, load);
        let haproxy = first(Setup::Haproxy, load);
        let pair = cost(Setup::BraidPair, load)
            .iter()
            .map(|us| format!("{us:.1}"))
            .collect::<Vec<_>>()
            .join(" and ");
        let _ = writeln!(
            out,
            "- CPU per HTTP/1.1 request, {}: one braid hop {hop:.1} µs; nginx {nginx:.1} µs \
             (braid/nginx {:.2}); HAProxy {haproxy:.1} µs (braid/HAProxy {:.2}). Target: ratio ≤ 1. \
             (The pair's client and server hops, with mTLS and twice the processes in the chain: \
             {pair} µs.)",
            if load == Load::FixedRate {
                "fixed rate"
            } else {
                "fixed concurrency"
            },
            hop / nginx,
            hop / haproxy
        );
    }
    for load in [Load::FixedRate, Load::Closed, Load::Http2] {
        let server_hop = |setup: Setup| cost(setup, load).get(1).copied().unwrap_or(f64::NAN);
        let (parsed, opaque) = (
            server_hop(Setup::BraidPair),
            server_hop(Setup::BraidPairOpaqueServer),
        );
        let _ = writeln!(
            out,
            "- Server hop, {}: parsing HTTP {parsed:.1} µs per request, the same hop on an opaque \
             port {opaque:.1} µs (×{:.3}). Target: ≤ 1.15.",
            load.title(),
            parsed / opaque
        );
    }
    out.push_str(&crate::policy::section(all, cost));
    if let (Some(braid), Some(base)) = (
        all.iter()
            .find(|m| m.setup == Setup::BraidPair && m.load == Load::FixedRate),
        direct(all, Load::FixedRate),
    ) {
        let added = (braid.outcome.percentiles_us[1] as f64
            - base.outcome.percentiles_us[1] as f64)
            / 1000.0;
        let _ = writeln!(
            out,
            "- Latency the braid pair adds at p99 at {} rps: {added:.2} ms. Target: under 1 ms.",
            crate::RATE
        );
        let _ = writeln!(
            out,
            "- Peak RSS at {} rps over {} connections: {}. Target: under 16 MiB.",
            crate::RATE,
            braid.connections,
            each_process(braid, |p| format!("{:.1} MiB", mib(p.peak_rss_kib)))
        );
    }
    if let Some(baseline) = &crate::baseline() {
        out.push_str(&crate::baseline_report::section(baseline, all));
    }
    out.push_str("\nPlot: [proxy.svg](proxy.svg).\n");
    out
}
