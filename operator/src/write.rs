//! Writing the plan back: ConfigMaps and Secrets per workload (only when their content changed,
//! judged by a hash annotation), deletion of those whose workload is gone, and the mesh CA.

use std::collections::BTreeMap;
use std::sync::Arc;

use braid_api::{CONTROL_PLANE_NAMESPACE, identity_secret_name, proxy_config_map_name};
use braid_proxy_config::encoding::Stored;
use braid_proxy_config::shared::{Document, SharedDestinations};
use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::certs::{CertificateAuthority, LeafRecord, renewal_reason};
use crate::plan::{Plan, Snapshot};
use crate::workload::WorkloadKey;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "braid-operator";
/// Label on every object the operator owns; its caches watch only these.
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";
/// Name of the CA Secret in `braid-system`.
pub const CA_SECRET: &str = "braid-ca";
const HASH: &str = "braid.dev/config-hash";
/// SHA-256 of the file as the kubelet writes it (the gzip bytes when gzipped): what a proxy
/// reports on `/config`, so the read-back compares with it ([`crate::readback`]).
const FILE_HASH: &str = "braid.dev/file-hash";
const SUBJECT: &str = "braid.dev/subject";
const CA_FINGERPRINT: &str = "braid.dev/ca-fingerprint";
const NOT_BEFORE: &str = "braid.dev/not-before";
const NOT_AFTER: &str = "braid.dev/not-after";

/// How many ConfigMap writes are in flight at once, and as many pod nudges beside them: enough
/// to hide the API server's round trip (tens of milliseconds under a burst of writes), few
/// enough to leave most of its mutating-request concurrency to others. On the test cluster,
/// 1,000 pod annotations took 3.2 s 16 at a time, 2.1 s 32 at a time, 1.8 s 64 at a time.
const WRITE_CONCURRENCY: usize = 32;

/// What one pass wrote, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    /// ConfigMaps created or updated.
    pub configs: usize,
    /// Pods annotated so that the kubelet swaps their new config in at once ([`crate::nudge`]).
    pub nudged: usize,
    /// Certificates issued.
    pub certificates: usize,
    /// Objects deleted because their workload is gone.
    pub deleted: usize,
    /// The earliest expiry (Unix seconds) among the workload certificates in force.
    pub earliest_leaf_expiry: Option<i64>,
}

/// Metadata of an object the operator owns.
pub fn managed_metadata(
    name: String,
    namespace: &str,
    annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.into()),
        labels: Some([(MANAGED_LABEL.to_owned(), MANAGER.to_owned())].into()),
        annotations: Some(annotations),
        ..Default::default()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The workload whose `proxy.json` a ConfigMap holds, with the hashes it is annotated with
/// (of the document, of the file).
fn config_map_hashes(cm: &PartialObjectMeta<ConfigMap>) -> Option<(WorkloadKey, &str, &str)> {
    let annotations = cm.metadata.annotations.as_ref()?;
    let workload = WorkloadKey {
        namespace: cm.metadata.namespace.clone()?,
        name: cm
            .metadata
            .name
            .as_deref()?
            .strip_prefix("braid-proxy-")?
            .to_owned(),
    };
    Some((
        workload,
        annotations.get(HASH)?.as_str(),
        annotations.get(FILE_HASH)?.as_str(),
    ))
}

/// The hash of the file each workload's proxies should run: what this pass wrote, else what its
/// ConfigMap says it holds.
pub fn desired_file_hashes(
    existing: &[Arc<PartialObjectMeta<ConfigMap>>],
    written: BTreeMap<WorkloadKey, String>,
) -> BTreeMap<WorkloadKey, String> {
    let mut desired: BTreeMap<WorkloadKey, String> = existing
        .iter()
        .filter_map(|cm| config_map_hashes(cm))
        .map(|(workload, _, file)| (workload, file.to_owned()))
        .collect();
    desired.extend(written);
    desired
}

/// Writes every workload's `proxy.json` that differs from what its ConfigMap holds, and deletes
/// the ConfigMaps of workloads that are gone. Returns what it wrote and the hash of each file
/// written (see [`desired_file_hashes`]). `existing` is the state of `cache`, the operator's
/// watch of its ConfigMaps, which tells when a write has reached watchers (the kubelets).
pub async fn sync_configs(
    client: &kube::Client,
    plan: &Plan,
    snapshot: &Snapshot,
    existing: &[Arc<PartialObjectMeta<ConfigMap>>],
    cache: &Store<PartialObjectMeta<ConfigMap>>,
) -> Result<(Written, BTreeMap<WorkloadKey, String>), Error> {
    let mut written = Written::default();
    let mut file_hashes = BTreeMap::new();
    // A ConfigMap written before file hashes were recorded has none: it is written once more.
    let existing_hashes: BTreeMap<WorkloadKey, String> = existing
        .iter()
        .filter_map(|cm| config_map_hashes(cm))
        .map(|(workload, document, _)| (workload, document.to_owned()))
        .collect();
    // Every document carries the same destinations: rendered and compressed once for all
    // (at 500 Services they are nearly all of each document's 183 KB).
    let shared = &SharedDestinations::new(&plan.destinations);
    // Rendered lazily, so at most WRITE_CONCURRENCY documents are in memory at once.
    let changed = plan.workloads.keys().filter_map(|key| {
        let document = Document::new(&plan.config_without_destinations(key, snapshot)?);
        let mut hasher = Sha256::new();
        for part in document.parts(shared) {
            hasher.update(part);
        }
        let hash = hex(&hasher.finalize());
        let name = proxy_config_map_name(&key.name);
        let unchanged = existing_hashes.get(key) == Some(&hash);
        (!unchanged).then_some((key, name, document, hash))
    });
    let mut writes = futures::stream::iter(changed)
        .map(|(workload, name, document, hash)| async move {
            let namespace = workload.namespace.clone();
            let key = "proxy.json".to_owned();
            let (data, binary_data, file_hash) = match document.encode(shared) {
                Stored::Text(json) => {
                    let file_hash = sha256_hex(json.as_bytes());
                    (Some([(key, json)].into()), None, file_hash)
                }
                Stored::Gzip(bytes) => {
                    let file_hash = sha256_hex(&bytes);
                    (None, Some([(key, ByteString(bytes))].into()), file_hash)
                }
            };
            let config_map = ConfigMap {
                metadata: managed_metadata(
                    name.clone(),
                    &namespace,
                    [
                        (HASH.to_owned(), hash.clone()),
                        (FILE_HASH.to_owned(), file_hash.clone()),
                    ]
                    .into(),
                ),
                data,
                binary_data,
                ..Default::default()
            };
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&config_map),
            )
            .await?;
            Ok::<_, kube::Error>((workload, name, hash, file_hash))
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        // The pods get the new file now, not at the kubelet's next periodic sync; nudged in a
        // stage of their own, so that ConfigMap writes go on meanwhile.
        .map(|written| async move {
            let (workload, name, hash, file_hash) = written?;
            let reference = ObjectRef::new(&name).within(&workload.namespace);
            let delivered = crate::nudge::when_delivered(|| {
                cache
                    .get(&reference)
                    .is_some_and(|cm| config_map_hashes(&cm).is_some_and(|(_, h, _)| h == hash))
            })
            .await;
            if !delivered {
                tracing::debug!(%workload, "ConfigMap not back from the watch yet; nudging anyway");
            }
            let nudged = crate::nudge::nudge(client, &snapshot.pods, workload, &hash).await;
            Ok::<_, kube::Error>((workload, file_hash, nudged))
        })
        .buffer_unordered(WRITE_CONCURRENCY);
    while let Some(result) = writes.next().await {
        let (workload, file_hash, nudged) = result?;
        written.nudged += nudged;
        written.configs += 1;
        file_hashes.insert(workload.clone(), file_hash);
    }
    let workload_configs: Vec<Arc<PartialObjectMeta<ConfigMap>>> = existing
        .iter()
        .filter(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("braid-proxy-"))
        })
        .cloned()
        .collect();
    written.deleted +=
        delete_orphans(client, &workload_configs, plan, proxy_config_map_name).await?;
    Ok((written, file_hashes))
}

/// Issues or renews every workload's certificate as [`renewal_reason`] says, and deletes the
/// Secrets of workloads that are gone. `ca.crt` is the CA bundle, so a root change overlaps.
pub async fn sync_identities(
    client: &kube::Client,
    plan: &Plan,
    ca: &CertificateAuthority,
    ca_bundle: &str,
    lifetime_seconds: i64,
    now: i64,
    existing: &[Arc<PartialObjectMeta<Secret>>],
) -> Result<Written, Error> {
    let mut written = Written::default();
    let records: BTreeMap<(String, String), LeafRecord> = existing
        .iter()
        .filter_map(|secret| {
            let key = (
                secret.metadata.namespace.clone()?,
                secret.metadata.name.clone()?,
            );
            Some((key, leaf_record(&secret.metadata)?))
        })
        .collect();
    for (key, workload) in &plan.workloads {
        let name = identity_secret_name(&key.name);
        let record = records.get(&(key.namespace.clone(), name.clone()));
        let Some(reason) = renewal_reason(record, &workload.identity, ca, now) else {
            written.earliest_leaf_expiry =
                earliest(written.earliest_leaf_expiry, record.map(|r| r.not_after));
            continue;
        };
        tracing::info!(workload = %key, identity = %workload.identity, reason, "issuing certificate");
        let leaf = ca.issue_workload(&workload.identity, now, lifetime_seconds)?;
        let leaf_not_after = leaf.not_after;
        let annotations =
            record_annotations(&workload.identity, ca, leaf.not_before, leaf.not_after);
        let secret = tls_secret(
            &name,
            &key.namespace,
            annotations,
            [
                ("tls.crt", leaf.cert_pem),
                ("tls.key", leaf.key_pem),
                ("ca.crt", ca_bundle.to_owned()),
            ],
        );
        let api: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;
        written.earliest_leaf_expiry = earliest(written.earliest_leaf_expiry, Some(leaf_not_after));
        written.certificates += 1;
    }
    let workload_secrets: Vec<Arc<PartialObjectMeta<Secret>>> = existing
        .iter()
        .filter(|s| {
            s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("braid-identity-"))
        })
        .cloned()
        .collect();
    written.deleted +=
        delete_orphans(client, &workload_secrets, plan, identity_secret_name).await?;
    Ok(written)
}

/// The earlier of two optional times; `None` means unknown, not earliest.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A `kubernetes.io/tls` Secret the operator owns, with the given keys.
pub fn tls_secret<const N: usize>(
    name: &str,
    namespace: &str,
    annotations: BTreeMap<String, String>,
    entries: [(&str, String); N],
) -> Secret {
    Secret {
        metadata: managed_metadata(name.to_owned(), namespace, annotations),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The record of a certificate the operator issued, from the annotations on its Secret.
pub fn leaf_record(metadata: &ObjectMeta) -> Option<LeafRecord> {
    let a = metadata.annotations.as_ref()?;
    Some(LeafRecord {
        subject: a.get(SUBJECT)?.clone(),
        ca_fingerprint: a.get(CA_FINGERPRINT)?.clone(),
        not_before: a.get(NOT_BEFORE)?.parse().ok()?,
        not_after: a.get(NOT_AFTER)?.parse().ok()?,
    })
}

/// The annotations recording a certificate the operator issued.
pub fn record_annotations(
    subject: &str,
    ca: &CertificateAuthority,
    not_before: i64,
    not_after: i64,
) -> BTreeMap<String, String> {
    [
        (SUBJECT.to_owned(), subject.to_owned()),
        (CA_FINGERPRINT.to_owned(), ca.fingerprint.clone()),
        (NOT_BEFORE.to_owned(), not_before.to_string()),
        (NOT_AFTER.to_owned(), not_after.to_string()),
    ]
    .into()
}

/// Deletes managed objects whose name is no current workload's.
async fn delete_orphans<K>(
    client: &kube::Client,
    existing: &[Arc<PartialObjectMeta<K>>],
    plan: &Plan,
    name_of: impl Fn(&str) -> String,
) -> Result<usize, Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let wanted: std::collections::BTreeSet<(String, String)> = plan
        .workloads
        .keys()
        .map(|WorkloadKey { namespace, name }| (namespace.clone(), name_of(name)))
        .collect();
    let mut deleted = 0;
    for object in existing {
        let meta = &object.metadata;
        let (Some(namespace), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
            continue;
        };
        if meta.deletion_timestamp.is_some() || wanted.contains(&(namespace.clone(), name.clone()))
        {
            continue;
        }
        let api: Api<K> = Api::namespaced(client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(deleted)
}

/// The mesh CA from Secret `braid-system/braid-ca`, created with a new root when missing. A root
/// the user put there is used as it is. Also returns the trust bundle: the root plus any
/// previous roots the Secret keeps under `previous.crt`.
pub async fn load_or_create_ca(
    client: &kube::Client,
    trust_domain: &str,
    ca_lifetime_seconds: i64,
    now: i64,
) -> Result<(CertificateAuthority, String), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), CONTROL_PLANE_NAMESPACE);
    let text = |secret: &Secret, key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
    };
    if let Some(secret) = api.get_opt(CA_SECRET).await? {
        let (Some(cert), Some(key)) = (text(&secret, "tls.crt"), text(&secret, "tls.key")) else {
            return Err(Error::InvalidCa(
                "Secret braid-system/braid-ca lacks tls.crt or tls.key".into(),
            ));
        };
        let ca = CertificateAuthority::from_pem(&cert, &key)
            .map_err(|e| Error::InvalidCa(e.to_string()))?;
        let bundle = format!(
            "{}{}",
            ca.cert_pem,
            text(&secret, "previous.crt").unwrap_or_default()
        );
        return Ok((ca, bundle));
    }
    tracing::info!("creating the mesh root CA in {CONTROL_PLANE_NAMESPACE}/{CA_SECRET}");
    let ca = CertificateAuthority::generate(trust_domain, now, ca_lifetime_seconds)?;
    let secret = tls_secret(
        CA_SECRET,
        CONTROL_PLANE_NAMESPACE,
        BTreeMap::new(),
        [
            ("tls.crt", ca.cert_pem.clone()),
            ("tls.key", ca.key_pem().to_owned()),
        ],
    );
    // Create, never overwrite: if another replica won the race, use its root.
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            let bundle = ca.cert_pem.clone();
            Ok((ca, bundle))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Box::pin(load_or_create_ca(
                client,
                trust_domain,
                ca_lifetime_seconds,
                now,
            ))
            .await
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::earliest;

    #[test]
    fn earliest_ignores_unknown_times() {
        assert_eq!(earliest(Some(5), Some(3)), Some(3));
        assert_eq!(earliest(Some(5), None), Some(5));
        assert_eq!(earliest(None, Some(7)), Some(7));
        assert_eq!(earliest(None, None), None);
    }
}
