//! Meshed workloads: pods labelled `braid.dev/workload`, grouped by namespace and that label.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use braid_api::{DESTINATIONS_CONFIG_MAP, WORKLOAD_LABEL};
use k8s_openapi::api::core::v1::Pod;

/// A workload's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// Namespace.
    pub namespace: String,
    /// The `braid.dev/workload` label.
    pub name: String,
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A meshed workload and what the plan needs of its pods.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Its key.
    pub key: WorkloadKey,
    /// The service account its pods run as (the first pod's, by name).
    pub service_account: String,
    /// The labels of each live pod, for policy selection.
    pub pod_labels: Vec<BTreeMap<String, String>>,
    /// The container ports its pods declare (for authorization rules that name ports).
    pub ports: BTreeSet<u16>,
    /// Whether every pod of it mounts the namespace's destinations file beside its
    /// `proxy.json` ([`mounts_shared_destinations`]), so that its document may leave them out.
    /// A pod injected by an earlier release does not: its workload keeps whole documents
    /// until that pod is gone.
    pub shared_destinations: bool,
}

/// Whether `pod`'s config volume (`braid-config`, as the webhook injects it) projects the
/// namespace's ConfigMap `braid-destinations` beside the workload's own.
pub fn mounts_shared_destinations(pod: &Pod) -> bool {
    let volumes = pod
        .spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten());
    volumes
        .filter(|volume| volume.name == "braid-config")
        .filter_map(|volume| volume.projected.as_ref()?.sources.as_ref())
        .flatten()
        .any(|source| {
            source
                .config_map
                .as_ref()
                .is_some_and(|cm| cm.name == DESTINATIONS_CONFIG_MAP)
        })
}

/// The workload a pod belongs to, if the pod is meshed and alive.
pub fn workload_of(pod: &Pod) -> Option<WorkloadKey> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let name = pod.metadata.labels.as_ref()?.get(WORKLOAD_LABEL)?;
    Some(WorkloadKey {
        namespace: pod.metadata.namespace.clone()?,
        name: name.clone(),
    })
}

/// The service account a pod runs as.
pub fn service_account_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into())
}

/// Groups meshed pods into workloads.
pub fn workloads<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeMap<WorkloadKey, Workload> {
    let mut pods: Vec<&Pod> = pods.into_iter().collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut workloads = BTreeMap::new();
    for pod in pods {
        let Some(key) = workload_of(pod) else {
            continue;
        };
        let workload = workloads.entry(key.clone()).or_insert_with(|| Workload {
            key,
            service_account: service_account_of(pod),
            pod_labels: Vec::new(),
            ports: BTreeSet::new(),
            shared_destinations: true,
        });
        workload.shared_destinations &= mounts_shared_destinations(pod);
        workload
            .pod_labels
            .push(pod.metadata.labels.clone().unwrap_or_default());
        let containers = pod.spec.iter().flat_map(|spec| &spec.containers);
        let ports = containers.flat_map(|c| c.ports.iter().flatten());
        workload
            .ports
            .extend(ports.filter_map(|p| u16::try_from(p.container_port).ok()));
    }
    workloads
}
