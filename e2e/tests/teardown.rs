//! `make cluster-down` leaves nothing of the test cluster behind: no process it started, no mount,
//! no network namespace, interface, route or iptables chain. This test tears the cluster down, so
//! `make test` runs it last and alone (`cargo test -p braid-e2e --test teardown`).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, ensure};

const STATE_DIR: &str = "/var/lib/braid-cluster";
const RUN_DIR: &str = "/run/braid-cluster";

#[test]
fn cluster_down_leaves_no_process_mount_namespace_route_or_chain() -> anyhow::Result<()> {
    let pids = recorded_pids()?;
    ensure!(
        pids.len() >= 6,
        "the test cluster is not running (found PIDs {pids:?})"
    );
    ensure!(
        count_mounts_below(STATE_DIR)? > 0,
        "a running cluster has pod volume and snapshot mounts"
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/scripts/cluster-down.sh");
    let status = Command::new(&script)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(status.success(), "cluster-down failed: {status}");

    for (name, pid) in &pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) still runs"
        );
    }
    let leftovers = processes_mentioning(&[STATE_DIR, RUN_DIR])?;
    ensure!(
        leftovers.is_empty(),
        "processes of the cluster remain: {leftovers:?}"
    );
    ensure!(
        count_mounts_below(STATE_DIR)? == 0,
        "mounts remain below {STATE_DIR}"
    );
    ensure!(
        count_mounts_below(RUN_DIR)? == 0,
        "mounts remain below {RUN_DIR}"
    );
    ensure!(
        !Path::new("/run/netns/braid-cluster").exists(),
        "network namespace braid-cluster remains"
    );
    // Pods' network namespaces are bind mounts (nsfs) that containerd names cni-*; one left
    // mounted keeps its namespace alive. (A host running another CNI runtime would have its own.)
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let pod_namespaces: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|path| path.contains("/cni-"))
        .collect();
    ensure!(
        pod_namespaces.is_empty(),
        "pod network namespaces remain mounted: {pod_namespaces:?}"
    );
    let links = run("ip", &["-o", "link"])?;
    ensure!(
        !links.contains("braid-host"),
        "interface braid-host remains"
    );
    let routes = run("ip", &["route", "show", "table", "all"])?;
    for cidr in ["10.244.0.0/16", "10.96.0.0/16"] {
        ensure!(
            !routes.contains(cidr),
            "a route for {cidr} remains:\n{routes}"
        );
    }
    for save in ["iptables-save", "iptables-legacy-save"] {
        let rules = run(save, &[])?;
        for chain in [":KUBE-", ":CNI-", ":BRAID-"] {
            ensure!(!rules.contains(chain), "{save} still lists chains {chain}*");
        }
    }
    Ok(())
}

fn recorded_pids() -> anyhow::Result<Vec<(String, u32)>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(format!("{STATE_DIR}/pids"))? {
        let path = entry?.path();
        let name = path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        pids.push((name, std::fs::read_to_string(&path)?.trim().parse()?));
    }
    Ok(pids)
}

fn count_mounts_below(dir: &str) -> anyhow::Result<usize> {
    let prefix = format!("{dir}/");
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    Ok(mounts
        .lines()
        .filter(|line| {
            line.split(' ')
                .nth(1)
                .is_some_and(|m| m.starts_with(&prefix))
        })
        .count())
}

/// Processes whose command line names one of `dirs` (every cluster process does).
fn processes_mentioning(dirs: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if dirs.iter().any(|dir| cmdline.contains(dir)) {
            found.push(format!("{}: {cmdline}", path.display()));
        }
    }
    Ok(found)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}
