//! Writing the plan back: Secrets per workload (only when their content changed, judged by
//! their annotations), deletion of objects whose workload is gone, and the mesh CA. The
//! ConfigMaps are [`crate::configs`]'.

use std::collections::BTreeMap;
use std::sync::Arc;

use braid_api::{CONTROL_PLANE_NAMESPACE, identity_secret_name};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;

use crate::Error;
use crate::certs::{CertificateAuthority, LeafRecord, renewal_reason};
use crate::plan::Plan;
use crate::workload::WorkloadKey;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "braid-operator";
/// Label on every object the operator owns; its caches watch only these.
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";
/// Name of the CA Secret in `braid-system`.
pub const CA_SECRET: &str = "braid-ca";
const SUBJECT: &str = "braid.dev/subject";
const CA_FINGERPRINT: &str = "braid.dev/ca-fingerprint";
const NOT_BEFORE: &str = "braid.dev/not-before";
const NOT_AFTER: &str = "braid.dev/not-after";

/// What one pass wrote, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    /// ConfigMaps created or updated.
    pub configs: usize,
    /// Pods annotated so that the kubelet swaps their new config in at once ([`crate::nudge`]).
    pub nudged: usize,
    /// Pods left to the next pass, their nudges superseded by a newer change
    /// ([`crate::nudge::Superseded`]).
    pub superseded: usize,
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

/// A namespaced kind the operator owns objects of (ConfigMaps, Secrets).
pub(crate) trait OwnedKind:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> OwnedKind for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

/// Deletes managed objects whose name is no current workload's.
pub(crate) async fn delete_orphans<K: OwnedKind>(
    client: &kube::Client,
    existing: &[Arc<PartialObjectMeta<K>>],
    plan: &Plan,
    name_of: impl Fn(&str) -> String,
) -> Result<usize, Error> {
    let wanted: std::collections::BTreeSet<(String, String)> = plan
        .workloads
        .keys()
        .map(|WorkloadKey { namespace, name }| (namespace.clone(), name_of(name)))
        .collect();
    let orphans: Vec<_> = existing
        .iter()
        .filter(|object| {
            let meta = &object.metadata;
            match (meta.namespace.clone(), meta.name.clone()) {
                (Some(namespace), Some(name)) => !wanted.contains(&(namespace, name)),
                _ => false,
            }
        })
        .cloned()
        .collect();
    delete_all(client, &orphans).await
}

/// Deletes `objects` (already gone, or going: fine).
pub(crate) async fn delete_all<K: OwnedKind>(
    client: &kube::Client,
    objects: &[Arc<PartialObjectMeta<K>>],
) -> Result<usize, Error> {
    let mut deleted = 0;
    for object in objects {
        let meta = &object.metadata;
        let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref())
        else {
            continue;
        };
        if meta.deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
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
