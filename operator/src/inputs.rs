//! Which watch events change what the operator decides from, and which are its own writes
//! coming back: the annotation a nudge put on a pod, the status a pass wrote on a MeshPolicy,
//! MeshRoute or Mesh. The first kind wakes the reconcile loop and is counted
//! ([`InputChanges`]), so that a wave of nudges learns that the files it delivers are already
//! outdated; the second kind does neither, so that the operator's own writes never cost it a
//! pass. The operator's outputs (its ConfigMaps and Secrets) wake the loop, to put back what
//! someone else changed, but are no input.

use std::sync::atomic::{AtomicU64, Ordering};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

use crate::nudge::{CONFIG_HASH_ANNOTATION, RESYNC_ANNOTATION};

/// How the events of one watched kind count.
pub enum Counts<K> {
    /// Every event is an input change.
    Input,
    /// An object's change is an input change when this says so of its old and new versions;
    /// any other is the operator's own write coming back. Additions, deletions and relists
    /// always count.
    InputWhen(fn(&K, &K) -> bool),
    /// The operator's own objects: every event wakes the loop, none is an input change.
    Output,
}

/// How many input changes the watches have seen; only ever grows.
#[derive(Debug, Default)]
pub struct InputChanges(AtomicU64);

impl InputChanges {
    /// Counts one.
    pub fn record(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// How many so far.
    pub fn seen(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Whether a pod changed other than by the operator's nudges: its spec, its status, or any of
/// its metadata but the nudges' annotations and what the API server updates with every write.
pub fn pod_changed(old: &Pod, new: &Pod) -> bool {
    old.spec != new.spec
        || old.status != new.status
        || !same_but_nudges(&old.metadata, &new.metadata)
}

/// A pod's annotations but the nudges'.
fn not_nudges(meta: &ObjectMeta) -> impl Iterator<Item = (&String, &String)> {
    let annotations = meta.annotations.iter().flatten();
    annotations.filter(|(key, _)| {
        key.as_str() != CONFIG_HASH_ANNOTATION && key.as_str() != RESYNC_ANNOTATION
    })
}

fn same_but_nudges(old: &ObjectMeta, new: &ObjectMeta) -> bool {
    old.labels == new.labels
        && not_nudges(old).eq(not_nudges(new))
        && old.deletion_timestamp == new.deletion_timestamp
        && old.owner_references == new.owner_references
        && old.finalizers == new.finalizers
        && old.uid == new.uid
}

/// Whether a custom resource changed other than by a status the operator wrote: its spec (the
/// API server counts that in `generation`), labels or deletion.
pub fn spec_changed<K: Resource>(old: &K, new: &K) -> bool {
    let (old, new) = (old.meta(), new.meta());
    old.generation != new.generation
        || old.labels != new.labels
        || old.deletion_timestamp != new.deletion_timestamp
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use braid_api::{MeshPolicy, MeshPolicySpec};
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    use super::*;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("order-1".into()),
                resource_version: Some("10".into()),
                labels: Some(BTreeMap::from([("app".into(), "order".into())])),
                annotations: Some(BTreeMap::from([("team".into(), "shop".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_nudge_coming_back_is_no_pod_change() {
        let old = pod();
        let mut new = pod();
        let annotations = new.metadata.annotations.get_or_insert_default();
        annotations.insert(CONFIG_HASH_ANNOTATION.into(), "new".into());
        annotations.insert(RESYNC_ANNOTATION.into(), "now".into());
        new.metadata.resource_version = Some("11".into());
        new.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("braid-operator".into()),
            ..Default::default()
        }]);
        assert!(!pod_changed(&old, &new));
    }

    #[test]
    fn anything_else_about_a_pod_is_a_change() {
        let old = pod();
        let changes: [fn(&mut Pod); 5] = [
            |p| p.status.get_or_insert_default().pod_ip = Some("10.0.0.1".into()),
            |p| p.spec.get_or_insert_default().node_name = Some("node-2".into()),
            |p| {
                let labels = p.metadata.labels.get_or_insert_default();
                labels.insert("version".into(), "v2".into());
            },
            |p| {
                let annotations = p.metadata.annotations.get_or_insert_default();
                annotations.insert("team".into(), "payments".into());
            },
            |p| p.metadata.finalizers = Some(vec!["example.com/hold".into()]),
        ];
        for change in changes {
            let mut new = pod();
            change(&mut new);
            assert!(pod_changed(&old, &new), "{new:?}");
        }
    }

    #[test]
    fn a_status_written_back_is_no_policy_change_and_a_new_spec_is() {
        let mut old = MeshPolicy::new("payments", MeshPolicySpec::default());
        old.metadata.generation = Some(1);
        let mut status_only = old.clone();
        status_only.status = Some(Default::default());
        status_only.metadata.resource_version = Some("12".into());
        assert!(!spec_changed(&old, &status_only));
        let mut respecified = old.clone();
        respecified.metadata.generation = Some(2);
        assert!(spec_changed(&old, &respecified));
    }
}
