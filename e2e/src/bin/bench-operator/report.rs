//! The Markdown report of the operator benchmark (bench/results/operator-scale.md).

use std::collections::BTreeSet;
use std::time::Duration;

use super::burst::{self, Burst};
use super::procs::CpuTimes;
use super::{Change, services, workloads};

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

/// The median of `samples` (the upper one of an even count).
fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `p50 / p99` of one measure over the rounds.
fn spread<T>(rounds: &[T], measure: impl Fn(&T) -> Duration) -> String {
    let samples: Vec<Duration> = rounds.iter().map(measure).collect();
    format!(
        "{:.2} s / {:.2} s",
        percentile(&samples, 0.5).as_secs_f64(),
        percentile(&samples, 0.99).as_secs_f64()
    )
}

/// The baselines, measured in the same run.
pub struct Baselines {
    /// The API server storing as many ConfigMaps of the destinations file's size as the
    /// server-side change rewrites, one by one.
    pub configs_one_by_one: Duration,
    /// The same for one per workload, 32 at a time.
    pub configs_all: Duration,
    /// An annotation on each of the benchmark's meshed pods.
    pub meshed: Annotated,
    /// An annotation on as many pods without Braid's containers.
    pub plain: Annotated,
}

/// The API server taking an annotation on each of a namespace's pods, 32 at a time.
pub struct Annotated {
    pub took: Duration,
    /// The API server's CPU time meanwhile (`None`: it does not run on this machine).
    pub apiserver_cpu: Option<Duration>,
    /// One such pod as the API server returns it, managed fields included, in bytes.
    pub pod_bytes: usize,
}

impl Annotated {
    fn cpu_per_pod(&self) -> String {
        self.apiserver_cpu.map_or("—".into(), |cpu| {
            format!("{:.1} ms", cpu.as_secs_f64() * 1000.0 / workloads() as f64)
        })
    }
}

/// The rounds measured: server-side changes, client-side changes, bursts.
#[derive(Clone, Copy)]
pub struct Rounds<'a> {
    pub server: &'a [Change],
    pub client: &'a [Change],
    pub bursts: &'a [Burst],
}

pub fn report(
    converged: Duration,
    running: usize,
    rounds: Rounds<'_>,
    baselines: Baselines,
    [(document, document_json), (destinations, destinations_json)]: [(usize, usize); 2],
    peak_mib: f64,
) -> String {
    let Rounds {
        server,
        client,
        bursts,
    } = rounds;
    let Baselines {
        configs_one_by_one,
        configs_all,
        meshed,
        plain,
    } = baselines;
    let (workloads, services) = (workloads(), services());
    let selected = workloads.div_ceil(10);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let row = |name: &str, changes: &[Change], base: Duration| {
        let p99 = percentile(&changes.iter().map(|c| c.applied).collect::<Vec<_>>(), 0.99);
        format!(
            "| {name} | {} | {} | {} | {} | {:.2} s | {:.2} |\n",
            changes.len(),
            spread(changes, |c| c.configs),
            spread(changes, |c| c.nudged),
            spread(changes, |c| c.applied),
            base.as_secs_f64(),
            p99.as_secs_f64() / base.as_secs_f64(),
        )
    };
    // API writes per change, by resource: the median over the rounds.
    let writes = |name: &str, changes: &[Change]| {
        let mut resources: BTreeSet<&String> = BTreeSet::new();
        for change in changes {
            resources.extend(change.writes.keys());
        }
        let cells: Vec<String> = resources
            .into_iter()
            .map(|resource| {
                let counts = changes
                    .iter()
                    .map(|c| c.writes.get(resource).copied().unwrap_or(0.0));
                format!("{resource} {}", median(counts.collect()))
            })
            .collect();
        format!("| {name} | {} |\n", cells.join(", "))
    };
    // CPU time per change, by process, and all of it against what two cores give in the time
    // the change took: the median over the rounds.
    // Each round's CPU and the time it was spent in.
    let cpu_row = |name: &str, rounds: &[(CpuTimes, Duration)]| {
        let over_rounds =
            |pick: &dyn Fn(&(CpuTimes, Duration)) -> f64| median(rounds.iter().map(pick).collect());
        let all = |c: &CpuTimes| c.each().iter().sum::<Duration>().as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
        let cells: Vec<String> = (0..CpuTimes::default().each().len())
            .map(|column| {
                let spent = over_rounds(&|(cpu, _)| cpu.each()[column].as_secs_f64());
                format!("{spent:.2} s")
            })
            .collect();
        format!(
            "| {name} | {} | {:.2} s | {:.0} % |\n",
            cells.join(" | "),
            over_rounds(&|(cpu, _)| all(cpu)),
            100.0 * over_rounds(&|(cpu, took)| all(cpu) / (cores * took.as_secs_f64())),
        )
    };
    let spent = |changes: &[Change]| -> Vec<(CpuTimes, Duration)> {
        changes.iter().map(|c| (c.cpu, c.applied)).collect()
    };
    let burst_spent: Vec<(CpuTimes, Duration)> =
        bursts.iter().map(|b| (b.cpu, b.from_first)).collect();
    let burst_row = {
        let pod_writes = median(bursts.iter().map(|b| pod_writes(&b.writes)).collect());
        format!(
            "| {} endpoint changes {} ms apart | {} | {} | {} | {pod_writes} | {} |\n",
            burst::CHANGES,
            burst::SPACING.as_millis(),
            bursts.len(),
            spread(bursts, |b| b.from_first),
            spread(bursts, |b| b.from_last),
            burst::CHANGES * workloads,
        )
    };
    let stored = |size: usize, json: usize| {
        if size < json {
            format!(
                "{json} bytes of JSON, stored as {size} bytes gzip-compressed under `binaryData`"
            )
        } else {
            format!("{json} bytes")
        }
    };
    format!(
        "# Operator at scale\n\n{workloads} workloads, {services} Services. Every pod mounts its workload's `proxy.json` ({}) and the namespace's \
         `destinations.json` ({}) in one projected volume. \
         {running} of the workloads' pods run on the test node with their proxies; the others are bound to a node no kubelet runs, \
         so the operator nudges every one of the {workloads} pods as it would running ones, and only the running proxies can show the change applied. \
         Those others carry the status the kubelet wrote for a running one, so that a nudge writes a pod of a running pod's size, \
         except that their phase stays Pending and they have no IP (the operator reads back the proxies of running pods only). \
         Machine: {} cores, {cpu}; the test cluster (kubelet `syncFrequency` 1 min, the upstream default), the operator (2 replicas) and this benchmark share it.\n\n\
         | MeshPolicy change | rounds | ConfigMaps written p50 / p99 | pods nudged p50 / p99 | applied by the running proxies p50 / p99 | baseline | applied p99 / baseline |\n|---|---|---|---|---|---|---|\n{}{}\n\
         Each time runs from the `patch` of the MeshPolicy to the last affected object: ConfigMap rewritten (the {selected} workloads' `proxy.json` \
         for the server-side change, the namespace's `destinations.json` for the client-side one), pod annotated, \
         running proxy answering with the new files' hash on its admin port (asked every 50 ms). \
         The baselines are measured from the benchmark in the same run: for the server-side change, the API server storing {selected} ConfigMaps \
         of the destinations file's size one by one; for the client-side change, the API server taking an annotation on each of the {workloads} pods, \
         32 at a time as the operator nudges (the nudges alone). With {} rounds, p99 is the slowest round.\n\n\
         API write requests per change (the API server's `apiserver_request_total`, median of the rounds, \
         whatever wrote them: the operator's ConfigMaps, pod nudges and statuses, leader-election renewals, the kubelet's pod statuses):\n\n\
         | change | writes by resource |\n|---|---|\n{}{}\n\
         CPU time spent on this machine per change, from the `patch` until every running proxy applied it (`/proc`, median of the rounds): \
         the processes that share its cores, and all of them against what the cores give in the time the change took.\n\n\
         | change | API server | etcd | kubelet | operator (2 replicas) | {running} proxies | this benchmark | all | of the cores |\n\
         |---|---|---|---|---|---|---|---|---|\n{}{}{}\n\
         A burst of changes, as a rollout makes them: one endpoint of each of {} Services turns not ready (ready again in the next round), \
         {} ms apart. Each change rewrites the destinations every proxy runs; a nudge wave per change would write every pod once per change. \
         Times run from the burst's first and from its last `patch` until every running proxy runs the final files (checked against the \
         hashes of the files the operator last wrote); writes are the API server's, from the first `patch` until no proxy took other files \
         for 5 s; the CPU row above is the burst's, until the last proxy took its files.\n\n\
         | burst | rounds | applied after the first change p50 / p99 | applied after the last change p50 / p99 | pod writes (median) | pod writes at one nudge wave per change |\n\
         |---|---|---|---|---|---|\n{burst_row}\n\
         | measure | value | target |\n|---|---|---|\n\
         | initial convergence ({workloads} configs and certificates) | {:.1} s | — |\n\
         | operator peak RSS (VmHWM) | {peak_mib:.1} MiB | < 256 MiB |\n\
         | the API server storing {workloads} ConfigMaps of the destinations file's size, 32 at a time (what a client-side change cost when every `proxy.json` carried the destinations) | {:.2} s | — |\n\
         | the API server taking an annotation on each of the {workloads} pods, 32 at a time (the nudges alone; a pod of {} bytes with managed fields): time, and the API server's CPU per pod | {:.2} s, {} | — |\n\
         | the same on {workloads} pods without Braid's containers (the app container alone, and a running pod's status without the init containers'; a pod of {} bytes) | {:.2} s, {} | — |\n",
        stored(document, document_json),
        stored(destinations, destinations_json),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        row(
            &format!("server side (mTLS mode; {selected} workloads affected)"),
            server,
            configs_one_by_one
        ),
        row(
            &format!("client side (load balancer; all {workloads} affected)"),
            client,
            meshed.took
        ),
        server.len(),
        writes("server side", server),
        writes("client side", client),
        cpu_row("server side", &spent(server)),
        cpu_row("client side", &spent(client)),
        cpu_row("burst", &burst_spent),
        burst::CHANGES,
        burst::SPACING.as_millis(),
        converged.as_secs_f64(),
        configs_all.as_secs_f64(),
        meshed.pod_bytes,
        meshed.took.as_secs_f64(),
        meshed.cpu_per_pod(),
        plain.pod_bytes,
        plain.took.as_secs_f64(),
        plain.cpu_per_pod(),
    )
}

/// Every round's figures, a line each, tab-separated (`BENCH_ROUNDS`): what a comparison of two
/// operator builds over several runs takes its medians from (`operator-ab.sh`). Seconds; pod
/// writes as the API server counted them.
pub fn rounds_tsv(converged: Duration, rounds: &Rounds<'_>) -> String {
    let line = |kind: &str, [applied, other]: [Duration; 2], cpu: &CpuTimes, writes: &_| {
        let pods = pod_writes(writes);
        format!(
            "{kind}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{pods}\n",
            applied.as_secs_f64(),
            other.as_secs_f64(),
            cpu.apiserver.as_secs_f64(),
            cpu.operator.as_secs_f64(),
        )
    };
    let mut tsv = String::from(
        "measure\tapplied_s\tnudged_or_from_first_s\tapiserver_cpu_s\toperator_cpu_s\tpod_writes\n",
    );
    tsv += &format!("converged\t{:.3}\t\t\t\t\n", converged.as_secs_f64());
    for (kind, changes) in [("server", rounds.server), ("client", rounds.client)] {
        for c in changes {
            tsv += &line(kind, [c.applied, c.nudged], &c.cpu, &c.writes);
        }
    }
    for b in rounds.bursts {
        tsv += &line("burst", [b.from_last, b.from_first], &b.cpu, &b.writes);
    }
    tsv
}

/// The pod writes among the API server's writes by resource.
fn pod_writes(writes: &std::collections::BTreeMap<String, f64>) -> f64 {
    writes.get("pods").copied().unwrap_or(0.0)
}
