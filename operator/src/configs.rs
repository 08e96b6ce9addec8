//! Writing every workload's `proxy.json` (ConfigMap `braid-proxy-<workload>`) and each
//! namespace's `destinations.json` (ConfigMap `braid-destinations`), each only when its content
//! changed (judged by a hash annotation), then nudging the pods whose files changed
//! ([`crate::nudge`]).
//!
//! Two layouts ([`braid_proxy_config::split`]): a workload whose every pod mounts the
//! namespace's destinations file gets a `proxy.json` without destinations, so that a change to
//! the destinations (a client-side policy, a route, a Service's endpoints) is one write per
//! namespace plus a nudge per pod; a workload with a pod injected by an earlier release keeps
//! whole documents (one write per workload per change) until that pod is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use braid_api::{DESTINATIONS_CONFIG_MAP, proxy_config_map_name};
use braid_proxy_config::encoding::{self, Stored};
use braid_proxy_config::shared::{Document, SharedDestinations};
use braid_proxy_config::split::{DESTINATIONS_FILE, combined_hash, sha256_hex};
use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::nudge::{Nudged, Superseded};
use crate::plan::{Plan, Snapshot};
use crate::workload::{WorkloadKey, workload_of};
use crate::write::{MANAGER, Written, delete_all, delete_orphans, managed_metadata};

/// SHA-256 of the rendered document (of the destinations, for `braid-destinations`): decides
/// whether a ConfigMap must be written.
const HASH: &str = "braid.dev/config-hash";
/// SHA-256 of the file as the kubelet writes it (the gzip bytes when gzipped): what a proxy's
/// reported hash is made of, so the read-back compares with it ([`crate::readback`]).
pub const FILE_HASH: &str = "braid.dev/file-hash";

/// How many ConfigMap writes are in flight at once, and as many workloads' pod nudges beside
/// them: enough to hide the API server's round trip (tens of milliseconds under a burst of
/// writes), few enough to leave most of its mutating-request concurrency (200 by default) to
/// others. More does not help: with 1,000 pods to nudge after a change to the destinations, the
/// change took as long with 64 nudges in flight (the API server's CPU is what they wait for).
const WRITE_CONCURRENCY: usize = 32;

/// The hashes a managed ConfigMap is annotated with: of the document, of the file.
fn recorded_hashes(cm: &PartialObjectMeta<ConfigMap>) -> Option<(&str, &str)> {
    let annotations = cm.metadata.annotations.as_ref()?;
    Some((
        annotations.get(HASH)?.as_str(),
        annotations.get(FILE_HASH)?.as_str(),
    ))
}

/// A ConfigMap's (namespace, name).
type Key = (String, String);

fn key_of(cm: &PartialObjectMeta<ConfigMap>) -> Option<Key> {
    Some((cm.metadata.namespace.clone()?, cm.metadata.name.clone()?))
}

/// A workload's document, rendered.
enum Body<'a> {
    /// Whole, around the shared destinations.
    Whole(Document, &'a SharedDestinations),
    /// Without destinations (split layout): the compact JSON.
    Split(String),
}

impl Body<'_> {
    /// SHA-256 of the document's JSON.
    fn hash(&self) -> String {
        match self {
            Self::Whole(document, shared) => {
                let mut hasher = Sha256::new();
                for part in document.parts(shared) {
                    hasher.update(part);
                }
                hex(&hasher.finalize())
            }
            Self::Split(json) => sha256_hex(json.as_bytes()),
        }
    }

    fn stored(&self) -> Stored {
        match self {
            Self::Whole(document, shared) => document.encode(shared),
            Self::Split(json) => encoding::encode(json.clone()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Server-side applies `stored` as `file` of ConfigMap `name`, annotated with `hash`; returns
/// the file's hash.
async fn apply(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    file: &str,
    stored: Stored,
    hash: &str,
) -> Result<String, kube::Error> {
    let key = file.to_owned();
    let (data, binary_data, file_hash) = match stored {
        Stored::Text(json) => {
            let file_hash = sha256_hex(json.as_bytes());
            (Some([(key, json)].into()), None, file_hash)
        }
        Stored::Gzip(bytes) => {
            let file_hash = sha256_hex(&bytes);
            (None, Some([(key, ByteString(bytes))].into()), file_hash)
        }
    };
    let annotations = [
        (HASH.to_owned(), hash.to_owned()),
        (FILE_HASH.to_owned(), file_hash.clone()),
    ];
    let config_map = ConfigMap {
        metadata: managed_metadata(name.to_owned(), namespace, annotations.into()),
        data,
        binary_data,
        ..Default::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    // Only the metadata comes back: the API server need not encode the file again, nor this
    // side decode it.
    api.patch_metadata(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&config_map),
    )
    .await?;
    Ok(file_hash)
}

/// Writes the destinations file of every namespace with a workload in the split layout where it
/// differs, and every workload's `proxy.json` that differs from what its ConfigMap holds; nudges
/// the pods whose files changed; deletes the ConfigMaps of workloads (and namespaces) that are
/// gone. Returns what it wrote and, for every workload, the hash its proxies should report.
/// `existing` is the state of `cache`, the operator's watch of its ConfigMaps, which tells when
/// a write has reached watchers (the kubelets).
pub async fn sync_configs(
    client: &kube::Client,
    plan: &Plan,
    snapshot: &Snapshot,
    existing: &[Arc<PartialObjectMeta<ConfigMap>>],
    cache: &Store<PartialObjectMeta<ConfigMap>>,
    nudging: &Nudging<'_>,
) -> Result<SyncedConfigs, Error> {
    let mut written = Written::default();
    // A ConfigMap written before file hashes were recorded has none: it is written once more.
    let recorded: BTreeMap<Key, (&str, &str)> = existing
        .iter()
        .filter_map(|cm| Some((key_of(cm)?, recorded_hashes(cm)?)))
        .collect();
    // Every document carries the same destinations, or points at them: rendered and compressed
    // once for all (at 500 Services they are nearly all of each whole document's 183 KB).
    let shared = &SharedDestinations::new(&plan.destinations);

    // The namespaces' destinations files, first: a split document is useless without its file.
    let destinations = sync_destinations(client, plan, shared, &recorded).await?;
    written.configs += destinations.renewed.len();
    let destinations_hash = &destinations.hash;
    let destinations_file_hash = destinations.file_hash.as_str();
    let renewed_namespaces = &destinations.renewed;

    let mut pods_by_workload: BTreeMap<WorkloadKey, Vec<Arc<Pod>>> = BTreeMap::new();
    for pod in &snapshot.pods {
        if let Some(workload) = workload_of(pod) {
            pods_by_workload
                .entry(workload)
                .or_default()
                .push(pod.clone());
        }
    }
    let mut desired = BTreeMap::new();
    // Rendered lazily, so at most WRITE_CONCURRENCY documents are in memory at once.
    let work = plan.workloads.iter().filter_map(|(key, workload)| {
        let config = plan.config_without_destinations(key, snapshot)?;
        let body = if workload.shared_destinations {
            Body::Split(config.to_compact_json())
        } else {
            Body::Whole(Document::new(&config), shared)
        };
        let hash = body.hash();
        let name = proxy_config_map_name(&key.name);
        let previous = recorded
            .get(&(key.namespace.clone(), name.clone()))
            .filter(|(recorded, _)| *recorded == hash)
            .map(|(_, file_hash)| (*file_hash).to_owned());
        let split = workload.shared_destinations;
        Some((key, name, body, hash, previous, split))
    });
    let mut writes = futures::stream::iter(work)
        .map(|(workload, name, body, hash, previous, split)| async move {
            let changed = previous.is_none();
            let file_hash = match previous {
                Some(file_hash) => file_hash,
                None => {
                    let namespace = &workload.namespace;
                    apply(client, namespace, &name, "proxy.json", body.stored(), &hash).await?
                }
            };
            // What its proxies report, and what its pods are annotated with.
            let (report, token) = if split {
                (
                    combined_hash(&file_hash, destinations_file_hash),
                    combined_hash(&hash, destinations_hash),
                )
            } else {
                (file_hash, hash.clone())
            };
            let renewed = split && renewed_namespaces.contains(workload.namespace.as_str());
            Ok::<_, kube::Error>(WorkloadFiles {
                workload,
                name,
                hash,
                report,
                token,
                changed,
                renewed,
            })
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        // The pods get their new files now, not at the kubelet's next periodic sync; nudged in
        // a stage of their own, so that ConfigMap writes go on meanwhile.
        .map(|synced| {
            let pods_by_workload = &pods_by_workload;
            async move {
                let synced = synced?;
                let pods = pods_by_workload
                    .get(synced.workload)
                    .map_or(&[][..], Vec::as_slice);
                let nudged =
                    nudge_once_delivered(client, cache, pods, &synced, destinations_hash, nudging)
                        .await;
                Ok::<_, kube::Error>((synced, nudged))
            }
        })
        .buffer_unordered(WRITE_CONCURRENCY);
    let mut left_over = BTreeSet::new();
    while let Some(outcome) = writes.next().await {
        let (synced, nudged) = outcome?;
        written.nudged += nudged.patched;
        written.superseded += nudged.superseded;
        if nudged.superseded > 0 {
            left_over.insert(synced.workload.clone());
        }
        written.configs += usize::from(synced.changed);
        desired.insert(synced.workload.clone(), synced.report);
    }
    drop(writes);

    written.deleted += delete_unused(client, existing, plan, &destinations.namespaces).await?;
    Ok(SyncedConfigs {
        written,
        desired,
        left_over,
    })
}

/// How a pass nudges pods.
pub struct Nudging<'a> {
    /// Whether its nudges are outdated by then.
    pub superseded: Superseded<'a>,
    /// The workloads whose pods an earlier pass left to a later one: nudged whether or not
    /// their files change now.
    pub left_over: &'a BTreeSet<WorkloadKey>,
}

/// What [`sync_configs`] did.
#[derive(Debug, Default)]
pub struct SyncedConfigs {
    /// Its writes.
    pub written: Written,
    /// The hash each workload's proxies should report.
    pub desired: BTreeMap<WorkloadKey, String>,
    /// The workloads whose pods it left to the next pass ([`Superseded`]).
    pub left_over: BTreeSet<WorkloadKey>,
}

/// A workload's files after its `proxy.json` was written if it had to be.
struct WorkloadFiles<'a> {
    workload: &'a WorkloadKey,
    /// Its ConfigMap.
    name: String,
    /// The document's hash.
    hash: String,
    /// The hash its proxies report once they run its files.
    report: String,
    /// What its pods are annotated with ([`crate::nudge::CONFIG_HASH_ANNOTATION`]).
    token: String,
    /// Its `proxy.json` was written now.
    changed: bool,
    /// Its document leaves the destinations to its namespace's file, written now.
    renewed: bool,
}

impl WorkloadFiles<'_> {
    /// Whether its pods are nudged in this pass: its files were written now, or an earlier pass
    /// left them over (its nudges superseded), whether or not they changed again since.
    fn nudges_due(&self, left_over: &BTreeSet<WorkloadKey>) -> bool {
        self.changed || self.renewed || left_over.contains(self.workload)
    }
}

/// Nudges the pods of a workload whose files changed, or that an earlier pass left over, once
/// the operator's own watch has brought back what was written (see
/// [`crate::nudge::when_delivered`]).
async fn nudge_once_delivered(
    client: &kube::Client,
    cache: &Store<PartialObjectMeta<ConfigMap>>,
    pods: &[Arc<Pod>],
    synced: &WorkloadFiles<'_>,
    destinations_hash: &str,
    nudging: &Nudging<'_>,
) -> Nudged {
    if !synced.nudges_due(nudging.left_over) {
        return Nudged::default();
    }
    let namespace = &synced.workload.namespace;
    let holds = |name: &str, want: &str| {
        let reference = ObjectRef::new(name).within(namespace);
        cache
            .get(&reference)
            .is_some_and(|cm| recorded_hashes(&cm).is_some_and(|(hash, _)| hash == want))
    };
    let delivered = crate::nudge::when_delivered(|| {
        nudging.superseded.now()
            || (!synced.changed || holds(&synced.name, &synced.hash))
                && (!synced.renewed || holds(DESTINATIONS_CONFIG_MAP, destinations_hash))
    })
    .await;
    if !delivered {
        tracing::debug!(workload = %synced.workload, "ConfigMap not back from the watch yet; nudging anyway");
    }
    let superseded = &nudging.superseded;
    crate::nudge::nudge(client, pods, synced.workload, &synced.token, superseded).await
}

/// The namespaces' destinations files after [`sync_destinations`].
struct DestinationsFiles<'a> {
    /// SHA-256 of the destinations' JSON.
    hash: String,
    /// SHA-256 of the file as stored (the same in every namespace).
    file_hash: String,
    /// The namespaces with a workload in the split layout.
    namespaces: BTreeSet<&'a str>,
    /// Those whose file was written now.
    renewed: BTreeSet<&'a str>,
}

/// Writes `destinations.json` into every namespace with a workload in the split layout, where
/// its ConfigMap holds other destinations.
async fn sync_destinations<'a>(
    client: &kube::Client,
    plan: &'a Plan,
    shared: &SharedDestinations,
    recorded: &BTreeMap<Key, (&str, &str)>,
) -> Result<DestinationsFiles<'a>, Error> {
    let hash = sha256_hex(shared.json().as_bytes());
    let namespaces: BTreeSet<&str> = plan
        .workloads
        .iter()
        .filter(|(_, workload)| workload.shared_destinations)
        .map(|(key, _)| key.namespace.as_str())
        .collect();
    let mut file_hash = String::new();
    let mut renewed = BTreeSet::new();
    for namespace in &namespaces {
        let key = ((*namespace).to_owned(), DESTINATIONS_CONFIG_MAP.to_owned());
        file_hash = match recorded.get(&key) {
            Some((recorded, file_hash)) if *recorded == hash => (*file_hash).to_owned(),
            _ => {
                renewed.insert(*namespace);
                let (name, file) = (DESTINATIONS_CONFIG_MAP, DESTINATIONS_FILE);
                apply(client, namespace, name, file, shared.file(), &hash).await?
            }
        };
    }
    Ok(DestinationsFiles {
        hash,
        file_hash,
        namespaces,
        renewed,
    })
}

/// Deletes the ConfigMaps of workloads that are gone, and the destinations files of namespaces
/// with no workload in the split layout left.
async fn delete_unused(
    client: &kube::Client,
    existing: &[Arc<PartialObjectMeta<ConfigMap>>],
    plan: &Plan,
    split_namespaces: &BTreeSet<&str>,
) -> Result<usize, Error> {
    let name =
        |cm: &Arc<PartialObjectMeta<ConfigMap>>| cm.metadata.name.clone().unwrap_or_default();
    let workload_configs: Vec<_> = existing
        .iter()
        .filter(|cm| name(cm).starts_with("braid-proxy-"))
        .cloned()
        .collect();
    let unused_destinations: Vec<_> = existing
        .iter()
        .filter(|cm| name(cm) == DESTINATIONS_CONFIG_MAP)
        .filter(|cm| {
            let namespace = cm.metadata.namespace.as_deref().unwrap_or_default();
            !split_namespaces.contains(namespace)
        })
        .cloned()
        .collect();
    Ok(
        delete_orphans(client, &workload_configs, plan, proxy_config_map_name).await?
            + delete_all(client, &unused_destinations).await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_an_earlier_pass_left_over_are_nudged_though_their_files_did_not_change() {
        let (order, payment) = (
            WorkloadKey {
                namespace: "shop".into(),
                name: "order".into(),
            },
            WorkloadKey {
                namespace: "shop".into(),
                name: "payment".into(),
            },
        );
        let files = |workload, changed, renewed| WorkloadFiles {
            workload,
            name: proxy_config_map_name(&workload.name),
            hash: "h".into(),
            report: "r".into(),
            token: "t".into(),
            changed,
            renewed,
        };
        let left_over = BTreeSet::from([order.clone()]);
        assert!(files(&order, false, false).nudges_due(&left_over));
        assert!(!files(&payment, false, false).nudges_due(&left_over));
        assert!(files(&payment, true, false).nudges_due(&left_over));
        assert!(files(&payment, false, true).nudges_due(&left_over));
    }
}
