//! The runtime: kube-runtime reflectors keep a cache of every input; a change (not the
//! operator's own writes coming back, see [`crate::inputs`]) wakes one debounced loop that, on
//! the leader, takes a snapshot, plans, and writes the differences. A full pass is cheap (the
//! plan is pure and in memory; writes are skipped when nothing changed), which keeps the
//! operator simple and always convergent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use braid_api::{
    INJECT_LABEL, MESH_NAME, Mesh, MeshPolicy, MeshRoute, MeshSpec, WORKLOAD_LABEL, duration,
};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::{Notify, watch};

use crate::configs::{Nudging, SyncedConfigs, sync_configs};
use crate::inputs::{self, Counts, InputChanges};
use crate::metrics::Metrics;
use crate::nudge::{self, Superseded};
use crate::plan::{Snapshot, object_key, plan};
use crate::readback::Readback;
use crate::status::synced::{Synced, proxy_pods, tally};
use crate::workload::WorkloadKey;
use crate::write::{MANAGED_LABEL, MANAGER, load_or_create_ca, sync_identities};
use crate::{Error, status, webhook_cert};

/// How long the loop waits for more changes before a pass.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A pass runs at least this often, to renew certificates.
const RESYNC: Duration = Duration::from_secs(30);

/// The caches of everything the operator reads.
#[derive(Clone)]
pub struct Caches {
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    namespaces: Store<Namespace>,
    policies: Store<MeshPolicy>,
    routes: Store<MeshRoute>,
    meshes: Store<Mesh>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    secrets: Store<PartialObjectMeta<Secret>>,
    /// Input changes the watches have seen.
    inputs: Arc<InputChanges>,
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
    // Whether the event last taken wakes the loop: judged against the cache before it is
    // applied, acted on after.
    let wakes = Arc::new(AtomicBool::new(true));
    let judged = wakes.clone();
    let stream = watch
        .default_backoff()
        .map(move |event| {
            let (input, wake) = match (&counts, &event) {
                (_, Err(_)) | (Counts::Output, _) => (false, true),
                (Counts::InputWhen(changed), Ok(watcher::Event::Apply(new))) => {
                    let input = before
                        .get(&ObjectRef::from_obj(new))
                        .is_none_or(|old| changed(&old, new));
                    (input, input)
                }
                _ => (true, true),
            };
            if input {
                inputs.record();
            }
            judged.store(wake, Ordering::Relaxed);
            event
        })
        .reflect(writer)
        .map(move |event| {
            if let Err(error) = event {
                tracing::warn!(%error, kind = %K::kind(&()), "watch error; retrying");
            }
            if wakes.load(Ordering::Relaxed) {
                changed.notify_one();
            }
        });
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

    fn mesh(&self) -> Option<Arc<Mesh>> {
        self.meshes
            .state()
            .into_iter()
            .find(|m| m.metadata.name.as_deref() == Some(MESH_NAME))
    }

    fn snapshot(&self) -> Snapshot {
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

/// The reconcile loop: waits for a change, the lead, or the resync period, debounces, and on
/// the leader runs a pass. Errors are logged and counted, and the pass is retried after a backoff.
pub async fn reconcile_loop(
    client: Client,
    caches: Caches,
    changed: Arc<Notify>,
    mut leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    readback: Arc<Readback>,
    instance: String,
) {
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(instance),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let mut backoff = Duration::from_millis(500);
    // The workloads whose pods the last pass left to this one, and since when passes leave
    // nudges over ([`nudge::SUPERSEDE_FOR`]).
    let mut left_over = BTreeSet::new();
    let mut leaving_since: Option<Instant> = None;
    loop {
        // A replica that takes the lead passes at once, not at the next change.
        tokio::select! {
            () = changed.notified() => {}
            Ok(()) = leading.changed() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
        if !*leading.borrow() {
            continue;
        }
        let started = Instant::now();
        let may_leave = leaving_since.is_none_or(|since| since.elapsed() < nudge::SUPERSEDE_FOR);
        match pass(
            &client,
            &caches,
            &recorder,
            &readback,
            (&left_over, may_leave),
        )
        .await
        {
            Ok(summary) => {
                metrics.record_pass(started.elapsed(), None, &summary);
                backoff = Duration::from_millis(500);
                if summary.left_over.is_empty() {
                    leaving_since = None;
                } else {
                    tracing::info!(
                        pods = summary.written.superseded,
                        "nudges left to the next pass: a newer change came meanwhile"
                    );
                    leaving_since.get_or_insert(started);
                }
                left_over = summary.left_over;
            }
            Err(error) => {
                tracing::warn!(%error, "reconcile pass failed; retrying");
                metrics.record_pass(started.elapsed(), Some(error.kind()), &Default::default());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                changed.notify_one();
            }
        }
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassSummary {
    /// Writes.
    pub written: crate::write::Written,
    /// Expiry of the root, Unix seconds.
    pub ca_not_after: i64,
    /// Meshed workloads.
    pub workloads: usize,
    /// The workloads whose pods it left to the next pass to nudge.
    pub left_over: BTreeSet<WorkloadKey>,
}

/// Creates the cluster's one Mesh with the defaults when there is none, so that
/// `kubectl apply -k config` alone installs a complete mesh. Never overwrites one that exists.
async fn ensure_default_mesh(client: &Client, caches: &Caches) -> Result<(), Error> {
    if caches.mesh().is_some() {
        return Ok(());
    }
    let api: Api<Mesh> = Api::all(client.clone());
    match api
        .create(
            &kube::api::PostParams::default(),
            &Mesh::new(MESH_NAME, MeshSpec::default()),
        )
        .await
    {
        Ok(_) => {
            tracing::info!("created Mesh {MESH_NAME} with the defaults");
            Ok(())
        }
        Err(kube::Error::Api(response)) if response.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// One pass; `left_over`: the workloads whose pods the last pass left to this one, and
/// whether this one may leave nudges over too.
async fn pass(
    client: &Client,
    caches: &Caches,
    recorder: &Recorder,
    readback: &Readback,
    (left_over, may_leave): (&BTreeSet<WorkloadKey>, bool),
) -> Result<PassSummary, Error> {
    ensure_default_mesh(client, caches).await?;
    // Counted before the snapshot: a change that comes while it is taken supersedes the pass.
    let inputs_at_snapshot = caches.inputs.seen();
    let snapshot = caches.snapshot();
    let plan = plan(&snapshot);
    let now = k8s_openapi::jiff::Timestamp::now();
    let seconds =
        |text: &str| duration::parse(text).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let lifetime = seconds(&snapshot.mesh.certificate_lifetime)
        .map_err(|e| Error::InvalidMesh(e.to_string()))?;
    let ca_lifetime =
        seconds(&snapshot.mesh.ca_lifetime).map_err(|e| Error::InvalidMesh(e.to_string()))?;

    let (ca, bundle) = load_or_create_ca(
        client,
        &snapshot.mesh.trust_domain,
        ca_lifetime,
        now.as_second(),
    )
    .await?;
    let config_maps = caches.config_maps.state();
    let nudging = Nudging {
        superseded: Superseded::since(&caches.inputs, inputs_at_snapshot, may_leave),
        left_over,
    };
    let SyncedConfigs {
        mut written,
        desired,
        left_over,
    } = sync_configs(
        client,
        &plan,
        &snapshot,
        &config_maps,
        &caches.config_maps,
        &nudging,
    )
    .await?;
    readback.want(desired.clone());
    let identities = sync_identities(
        client,
        &plan,
        &ca,
        &bundle,
        lifetime,
        now.as_second(),
        &caches.secrets.state(),
    )
    .await?;
    written.certificates += identities.certificates;
    written.earliest_leaf_expiry = identities.earliest_leaf_expiry;
    let now_seconds = now.as_second();
    written.certificates += usize::from(
        webhook_cert::sync(client, &ca, &bundle, now_seconds, &caches.secrets.state()).await?,
    );
    written.deleted += identities.deleted;

    let time = Time(now);
    let running = proxy_pods(&snapshot.pods);
    let heard = readback.heard();
    let synced = |concerned: &dyn Fn(&crate::workload::WorkloadKey) -> bool| -> Synced {
        tally(running.iter(), concerned, &desired, &heard)
    };
    let everyone = synced(&|_| true);
    for policy in caches.policies.state() {
        if let Some(outcome) = plan.policies.get(&object_key(&policy.metadata)) {
            // Its own workloads' proxies and, when it sets what callers apply, every proxy.
            let callers = outcome.client_side && outcome.in_effect() > 0;
            let concerned = if callers {
                everyone.clone()
            } else {
                synced(&|w| outcome.governed.contains(w))
            };
            let next = status::policy_status(&policy, outcome, &concerned, &time);
            let previous = policy
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            if status::write_policy(client, &policy, next.clone()).await? {
                status::announce(recorder, policy.as_ref(), &previous, &next.conditions).await;
            }
        }
    }
    for route in caches.routes.state() {
        if let Some(outcome) = plan.routes.get(&object_key(&route.metadata)) {
            // Every proxy runs every destination's routes.
            let concerned = if outcome.in_effect {
                everyone.clone()
            } else {
                Synced::default()
            };
            let next = status::route_status(&route, outcome, &concerned, &time);
            let previous = route
                .status
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            if status::write_route(client, &route, next.clone()).await? {
                status::announce(recorder, route.as_ref(), &previous, &next.conditions).await;
            }
        }
    }
    if let Some(mesh) = caches.mesh() {
        let expires = k8s_openapi::jiff::Timestamp::from_second(ca.not_after)
            .ok()
            .map(|t| t.to_string());
        let workloads = u32::try_from(plan.workloads.len()).unwrap_or(u32::MAX);
        status::write_mesh(
            client,
            &mesh,
            status::mesh_status(&mesh, expires, workloads, &everyone, &time),
        )
        .await?;
    }
    if written.configs + written.certificates + written.deleted > 0 {
        tracing::info!(
            ?written,
            workloads = plan.workloads.len(),
            "pass wrote changes"
        );
    }
    Ok(PassSummary {
        written,
        ca_not_after: ca.not_after,
        workloads: plan.workloads.len(),
        left_over,
    })
}
