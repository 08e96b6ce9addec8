//! Whether the proxies concerned run the config the operator last wrote: a pure tally of what
//! the read-back ([`crate::readback`]) heard from each running proxy against the hash of the
//! file its workload's ConfigMap holds. This is what the `SYNCED` column and the `Programmed`
//! condition report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use braid_sidecar::PROXY_CONTAINER;
use k8s_openapi::api::core::v1::Pod;

use crate::workload::{WorkloadKey, workload_of};

/// How many lagging proxies a condition names before it only counts the rest.
const NAMED: usize = 5;

/// What a pod's proxy last told the read-back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// It runs the file with this SHA-256 (hex); `last_error` is why the file in place is not
    /// in force, when it is not (refused, or unreadable).
    Runs {
        /// SHA-256 of the file in force.
        hash: String,
        /// The proxy's own words for why a newer file is not in force.
        last_error: Option<String>,
    },
    /// Its admin port did not answer, or not with a config: why.
    Unreachable(String),
}

/// A running meshed pod whose proxy can be read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyPod {
    /// The pod's UID (a pod recreated under the same name is another proxy).
    pub uid: String,
    /// `namespace/name`, for messages.
    pub name: String,
    /// The pod's IP, where its admin port listens.
    pub ip: String,
    /// Its workload.
    pub workload: WorkloadKey,
}

/// The pods whose proxies run: meshed, in phase Running, with an IP and the injected proxy
/// container. Pending pods are left out: their proxy will read the file as it is when it starts.
/// So are terminating pods: the kubelet no longer updates the volumes of a pod it is stopping,
/// so their proxies keep the config they have until they exit, and are not counted as lagging.
pub fn proxy_pods(pods: &[Arc<Pod>]) -> Vec<ProxyPod> {
    pods.iter()
        .filter_map(|pod| {
            let workload = workload_of(pod)?;
            let status = pod.status.as_ref()?;
            // A native sidecar (an init container that keeps running) on Kubernetes 1.29+,
            // a plain container before.
            let spec = pod.spec.as_ref()?;
            let injected = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .any(|c| c.name == PROXY_CONTAINER);
            let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            let terminating = pod.metadata.deletion_timestamp.is_some();
            if !injected || terminating || status.phase.as_deref() != Some("Running") {
                return None;
            }
            Some(ProxyPod {
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                name: format!("{}/{}", workload.namespace, pod.metadata.name.as_deref()?),
                ip,
                workload,
            })
        })
        .collect()
}

/// A proxy that does not run the latest config, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behind {
    /// `namespace/pod`.
    pub pod: String,
    /// Why, in a few words.
    pub why: String,
}

/// How many of the proxies concerned run the latest config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Proxies that run it.
    pub in_sync: usize,
    /// Proxies concerned.
    pub total: usize,
    /// Those that do not, in pod order.
    pub behind: Vec<Behind>,
}

/// Tallies the proxies of `pods` whose workload is `concerned`: a proxy is in sync when it
/// reports the hash in `desired` for its workload.
pub fn tally<'a>(
    pods: impl IntoIterator<Item = &'a ProxyPod>,
    concerned: impl Fn(&WorkloadKey) -> bool,
    desired: &BTreeMap<WorkloadKey, String>,
    heard: &HashMap<String, Heard>,
) -> Synced {
    let mut synced = Synced::default();
    for pod in pods.into_iter().filter(|p| concerned(&p.workload)) {
        synced.total += 1;
        let why = match (desired.get(&pod.workload), heard.get(&pod.uid)) {
            (None, _) => "no config written for its workload yet".to_owned(),
            (Some(_), None) => "not read back yet".to_owned(),
            (Some(_), Some(Heard::Unreachable(error))) => format!("admin port: {error}"),
            (Some(want), Some(Heard::Runs { hash, .. })) if hash == want => {
                synced.in_sync += 1;
                continue;
            }
            (Some(_), Some(Heard::Runs { last_error, .. })) => last_error
                .clone()
                .unwrap_or_else(|| "runs an older config".to_owned()),
        };
        synced.behind.push(Behind {
            pod: pod.name.clone(),
            why,
        });
    }
    synced.behind.sort_by(|a, b| a.pod.cmp(&b.pod));
    synced
}

impl Synced {
    /// The printer column: `in sync/concerned`.
    pub fn column(&self) -> String {
        format!("{}/{}", self.in_sync, self.total)
    }

    /// Whether every proxy concerned runs the latest config (trivially so when none runs).
    pub fn complete(&self) -> bool {
        self.behind.is_empty()
    }

    /// The `Programmed` condition's message: the count, and the first few laggards with why.
    pub fn message(&self) -> String {
        if self.complete() {
            return match self.total {
                0 => "no proxy concerned is running".to_owned(),
                1 => "the 1 proxy concerned runs the latest config".to_owned(),
                n => format!("all {n} proxies concerned run the latest config"),
            };
        }
        let named: Vec<String> = self
            .behind
            .iter()
            .take(NAMED)
            .map(|b| format!("{} ({})", b.pod, b.why))
            .collect();
        let more = self.behind.len().saturating_sub(NAMED);
        format!(
            "{} of {} proxies concerned do not run the latest config: {}{}",
            self.behind.len(),
            self.total,
            named.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        )
    }
}
