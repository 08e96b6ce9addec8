//! What the benchmark reads of this machine's processes in `/proc`: the CPU time of those that
//! share its two cores during a change (the API server, etcd, the kubelet, the operator's
//! replicas, the running proxies, the benchmark itself), and the operator's peak RSS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

/// The `/proc` directories of this machine's processes whose program and first argument
/// `match`.
fn processes(matches: impl Fn(&[u8], Option<&[u8]>) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            std::fs::read(path.join("cmdline")).is_ok_and(|cmdline| {
                let mut args = cmdline.split(|b| *b == 0);
                let program = args.next().unwrap_or_default();
                matches(program, args.next())
            })
        })
        .collect()
}

/// The CPU time (user and system) of the process at `path` so far.
fn cpu_of(path: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(path.join("stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime (fields 14 and 15 of proc(5)), in clock ticks: 100 a second on Linux.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The summed CPU time of the processes `matches` picks; `None` when none runs here.
fn cpu_of_all(matches: impl Fn(&[u8], Option<&[u8]>) -> bool) -> Option<Duration> {
    let paths = processes(matches);
    (!paths.is_empty()).then(|| paths.iter().filter_map(|p| cpu_of(p)).sum())
}

/// Whether a process is the test cluster's one binary running `component` (`kube apiserver`),
/// or that component's own binary (`kube-apiserver`).
fn kube_component(component: &str) -> impl Fn(&[u8], Option<&[u8]>) -> bool + '_ {
    move |program, first| {
        program.ends_with(format!("kube-{component}").as_bytes())
            || (program.ends_with(b"/kube") && first == Some(component.as_bytes()))
    }
}

/// The CPU time of the API server process on this machine so far; `None` when it runs
/// elsewhere.
pub fn apiserver_cpu() -> Option<Duration> {
    cpu_of_all(kube_component("apiserver"))
}

/// CPU time spent so far by each of the processes that share the machine during a change
/// (zero for one that does not run here).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    pub apiserver: Duration,
    pub etcd: Duration,
    pub kubelet: Duration,
    /// Both replicas.
    pub operator: Duration,
    /// Every braid-proxy process (the running workloads' sidecars).
    pub proxies: Duration,
    /// This benchmark (its watches of pods and ConfigMaps, its reads of the proxies' hashes).
    pub benchmark: Duration,
}

impl CpuTimes {
    /// Now.
    pub fn now() -> Self {
        let or_zero = Option::unwrap_or_default;
        Self {
            apiserver: or_zero(apiserver_cpu()),
            etcd: or_zero(cpu_of_all(|program, _| program.ends_with(b"/etcd"))),
            kubelet: or_zero(cpu_of_all(kube_component("kubelet"))),
            operator: or_zero(cpu_of_all(|program, _| {
                program.ends_with(b"braid-operator")
            })),
            proxies: or_zero(cpu_of_all(|program, _| program.ends_with(b"braid-proxy"))),
            benchmark: or_zero(cpu_of(Path::new("/proc/self"))),
        }
    }

    /// Each process's time, in the report's column order: API server, etcd, kubelet, operator,
    /// proxies, benchmark.
    pub fn each(&self) -> [Duration; 6] {
        [
            self.apiserver,
            self.etcd,
            self.kubelet,
            self.operator,
            self.proxies,
            self.benchmark,
        ]
    }

    /// What was spent from `before` to `self`.
    pub fn since(self, before: Self) -> Self {
        let minus = |a: Duration, b: Duration| a.saturating_sub(b);
        Self {
            apiserver: minus(self.apiserver, before.apiserver),
            etcd: minus(self.etcd, before.etcd),
            kubelet: minus(self.kubelet, before.kubelet),
            operator: minus(self.operator, before.operator),
            proxies: minus(self.proxies, before.proxies),
            benchmark: minus(self.benchmark, before.benchmark),
        }
    }
}

/// The largest VmHWM among braid-operator processes on this machine, in MiB.
pub fn operator_peak_rss_mib() -> anyhow::Result<f64> {
    let mut peak_kib = 0u64;
    for path in processes(|program, _| program.ends_with(b"braid-operator")) {
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok());
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
    }
    if peak_kib == 0 {
        bail!("no braid-operator process found on this machine");
    }
    Ok(peak_kib as f64 / 1024.0)
}
