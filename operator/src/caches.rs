//! The operator's caches: a kube-runtime reflector for every kind it reads. Every event wakes
//! the reconcile loop but the operator's own writes coming back, and every input change is
//! counted ([`crate::inputs`]).

use std::sync::Arc;

use braid_api::{INJECT_LABEL, MESH_NAME, Mesh, MeshPolicy, MeshRoute, MeshSpec, WORKLOAD_LABEL};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;

use crate::Error;
use crate::inputs::{self, Counts, InputChanges};
use crate::plan::Snapshot;
use crate::write::{MANAGED_LABEL, MANAGER};

/// The caches of everything the operator reads.
#[derive(Clone)]
pub struct Caches {
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    namespaces: Store<Namespace>,
    pub(crate) policies: Store<MeshPolicy>,
    pub(crate) routes: Store<MeshRoute>,
    meshes: Store<Mesh>,
    pub(crate) config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub(crate) secrets: Store<PartialObjectMeta<Secret>>,
    /// Input changes the watches have seen.
    pub(crate) inputs: Arc<InputChanges>,
}

/// Keeps `store` of `K` from `watch`; every event that changes an input or an output (see
/// [`Counts`]) wakes `changed`, and every input change is counted in `inputs`.
fn reflect_into<K, S>(
    watch: S,
    counts: Counts<K>,
    changed: Arc<Notify>,
    inputs: Arc<InputChanges>,
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (store, writer) = reflector::store();
    let before = store.clone();
    // Judged against the cache before the event is applied to it. The loop is woken before the
    // cache takes the event, in the same poll; it debounces before it reads the cache.
    let judge = move |event: &Result<watcher::Event<K>, watcher::Error>| match (&counts, event) {
        (_, Err(error)) => {
            tracing::warn!(%error, kind = %K::kind(&()), "watch error; retrying");
            (false, true)
        }
        (Counts::Output, _) => (false, true),
        (Counts::InputWhen(changed), Ok(watcher::Event::Apply(new))) => {
            let input = before
                .get(&ObjectRef::from_obj(new))
                .is_none_or(|old| changed(&old, new));
            (input, input)
        }
        _ => (true, true),
    };
    let stream = watch
        .default_backoff()
        .inspect(move |event| {
            let (input, wake) = judge(event);
            if input {
                inputs.record();
            }
            if wake {
                changed.notify_one();
            }
        })
        .reflect(writer)
        .map(|_| ());
    (store, stream)
}

/// A custom resource whose status the operator writes: a change counts when it is to the spec.
fn spec_counts<K: Resource>() -> Counts<K> {
    Counts::InputWhen(inputs::spec_changed::<K>)
}

/// A cache of whole objects.
fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    counts: Counts<K>,
    wake: (&Arc<Notify>, &Arc<InputChanges>),
) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (changed, inputs) = wake;
    reflect_into(
        watcher(api, config.any_semantic()),
        counts,
        changed.clone(),
        inputs.clone(),
    )
}

impl Caches {
    /// Starts every watch; the returned future drives them and never ends.
    pub fn start(
        client: &Client,
        changed: Arc<Notify>,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + use<>) {
        let all = watcher::Config::default;
        let managed = || watcher::Config::default().labels(&format!("{MANAGED_LABEL}={MANAGER}"));
        let inputs = Arc::new(InputChanges::default());
        let wake = (&changed, &inputs);
        let (pods, s1) = cache(
            Api::all(client.clone()),
            all().labels(WORKLOAD_LABEL),
            Counts::InputWhen(inputs::pod_changed),
            wake,
        );
        let (services, s2) = cache(Api::all(client.clone()), all(), Counts::Input, wake);
        let (slices, s3) = cache(Api::all(client.clone()), all(), Counts::Input, wake);
        // Every namespace: injection follows the label, and authorization rules are checked
        // against the names.
        let (namespaces, s4) = cache(Api::all(client.clone()), all(), Counts::Input, wake);
        // Their statuses are the operator's.
        let (policies, s5) = cache(Api::all(client.clone()), all(), spec_counts(), wake);
        let (routes, s6) = cache(Api::all(client.clone()), all(), spec_counts(), wake);
        let (meshes, s7) = cache(Api::all(client.clone()), all(), spec_counts(), wake);
        // Metadata only: the operator needs just its hash and certificate annotations back, and
        // 1,000 proxy configs would otherwise sit in memory.
        let (config_maps, s8) = cache(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            managed(),
            Counts::Output,
            wake,
        );
        let (secrets, s9) = cache(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            managed(),
            Counts::Output,
            wake,
        );
        let streams = futures::stream::select_all([
            s1.boxed(),
            s2.boxed(),
            s3.boxed(),
            s4.boxed(),
            s5.boxed(),
            s6.boxed(),
            s7.boxed(),
            s8.boxed(),
            s9.boxed(),
        ]);
        let caches = Self {
            pods,
            services,
            slices,
            namespaces,
            policies,
            routes,
            meshes,
            config_maps,
            secrets,
            inputs,
        };
        (caches, streams.for_each(|()| async {}))
    }

    /// Waits until every cache has its first full list.
    pub async fn ready(&self) -> Result<(), Error> {
        let failed = |e: reflector::store::WriterDropped| Error::Cache(e.to_string());
        self.pods.wait_until_ready().await.map_err(failed)?;
        self.services.wait_until_ready().await.map_err(failed)?;
        self.slices.wait_until_ready().await.map_err(failed)?;
        self.namespaces.wait_until_ready().await.map_err(failed)?;
        self.policies.wait_until_ready().await.map_err(failed)?;
        self.routes.wait_until_ready().await.map_err(failed)?;
        self.meshes.wait_until_ready().await.map_err(failed)?;
        self.config_maps.wait_until_ready().await.map_err(failed)?;
        self.secrets.wait_until_ready().await.map_err(failed)?;
        Ok(())
    }

    /// The pods cache (meshed pods), which the read-back reads proxies from.
    pub fn pods(&self) -> Store<Pod> {
        self.pods.clone()
    }

    /// The cluster's one Mesh, when it exists.
    pub(crate) fn mesh(&self) -> Option<Arc<Mesh>> {
        self.meshes
            .state()
            .into_iter()
            .find(|m| m.metadata.name.as_deref() == Some(MESH_NAME))
    }

    /// What a pass plans from.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot {
            mesh: self
                .mesh()
                .map_or_else(MeshSpec::default, |m| m.spec.clone()),
            injected_namespaces: self
                .namespaces
                .state()
                .iter()
                .filter(|n| {
                    n.metadata
                        .labels
                        .as_ref()
                        .and_then(|labels| labels.get(INJECT_LABEL))
                        .is_some_and(|value| value == "enabled")
                })
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect(),
            pods: self.pods.state(),
            services: self.services.state(),
            slices: self.slices.state(),
            policies: self.policies.state(),
            routes: self.routes.state(),
        }
    }
}
