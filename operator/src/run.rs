//! The runtime: the caches ([`crate::caches`]) hold every input; a change (not the operator's
//! own writes coming back, see [`crate::inputs`]) wakes one debounced loop that, on the
//! leader, takes a snapshot, plans, and writes the differences. A full pass is cheap (the
//! plan is pure and in memory; writes are skipped when nothing changed), which keeps the
//! operator simple and always convergent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_api::{MESH_NAME, Mesh, MeshSpec, duration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::{Notify, watch};

use crate::caches::Caches;
use crate::configs::{Nudging, SyncedConfigs, sync_configs};
use crate::metrics::Metrics;
use crate::nudge::{self, Superseded};
use crate::plan::{object_key, plan};
use crate::readback::Readback;
use crate::status::synced::{Synced, proxy_pods, tally};
use crate::workload::WorkloadKey;
use crate::write::{MANAGER, load_or_create_ca, sync_identities};
use crate::{Error, status, webhook_cert};

/// How long the loop waits for more changes before a pass.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// A pass runs at least this often, to renew certificates.
const RESYNC: Duration = Duration::from_secs(30);

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
