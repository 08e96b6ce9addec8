//! The operator's decision, as a pure function: from a [`Snapshot`] of the cluster to a [`Plan`]
//! of every workload's `proxy.json` and every MeshPolicy's and MeshRoute's status. Nothing here
//! talks to the API server, so it is tested with fixtures alone.

pub mod authz;
pub mod convert;
pub mod destinations;
mod routes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use braid_api::{MeshPolicy, MeshRoute, MeshSpec, spiffe_id};
use braid_proxy_config::{self as config, Destination, Inbound, ProxyConfig};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::select::{precedence, selects};
use crate::workload::{self, Workload, WorkloadKey};
use destinations::{PodIdentities, SERVICE_NAME_LABEL};
pub use routes::RouteOutcome;

/// What the planner reads: the cluster as the operator's caches hold it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The `default` Mesh's spec, or the defaults when there is none.
    pub mesh: MeshSpec,
    /// Namespaces labelled `braid.dev/inject=enabled`.
    pub injected_namespaces: BTreeSet<String>,
    /// Every namespace (authorization rules that name one that does not exist are reported).
    pub namespaces: BTreeSet<String>,
    /// All pods the operator watches (meshed or not; only meshed ones become workloads).
    pub pods: Vec<Arc<Pod>>,
    /// All Services.
    pub services: Vec<Arc<Service>>,
    /// All EndpointSlices.
    pub slices: Vec<Arc<EndpointSlice>>,
    /// All MeshPolicies.
    pub policies: Vec<Arc<MeshPolicy>>,
    /// All MeshRoutes.
    pub routes: Vec<Arc<MeshRoute>>,
}

/// A namespaced object's (namespace, name).
pub type ObjectKey = (String, String);

/// What should exist.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Every destination, with policy and routes; the same list goes to every workload.
    pub destinations: Vec<Destination>,
    /// Every meshed workload with its identity and inbound settings.
    pub workloads: BTreeMap<WorkloadKey, WorkloadPlan>,
    /// The outcome of every MeshPolicy.
    pub policies: BTreeMap<ObjectKey, PolicyOutcome>,
    /// The outcome of every MeshRoute.
    pub routes: BTreeMap<ObjectKey, RouteOutcome>,
}

/// One workload's part of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadPlan {
    /// Service account, for the certificate.
    pub service_account: String,
    /// SPIFFE ID.
    pub identity: String,
    /// Inbound settings.
    pub inbound: Inbound,
    /// Whether its `proxy.json` leaves the destinations to the namespace's `destinations.json`
    /// (every pod of it mounts that file: [`crate::workload::Workload::shared_destinations`]).
    pub shared_destinations: bool,
}

/// What became of a MeshPolicy.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyOutcome {
    /// `Err` holds why the spec cannot be used.
    pub accepted: Result<(), String>,
    /// Workloads it selects.
    pub selected: u32,
    /// Workloads it is in effect on (it wins there).
    pub governed: BTreeSet<WorkloadKey>,
    /// Whether it sets anything callers apply (load balancer, timeouts, retries, breakers,
    /// outlier detection, faults): those reach every proxy (in `destinations.json`, or in
    /// `proxy.json` for whole documents).
    pub client_side: bool,
    /// The policy that wins where this one loses, if any.
    pub overridden_by: Option<String>,
    /// The mTLS mode in effect on its workloads.
    pub mtls_mode: braid_api::MtlsMode,
    /// Its authorization: summary, and what its rules name that cannot match.
    pub authz: authz::AuthzReview,
}

impl PolicyOutcome {
    /// How many workloads it is in effect on.
    pub fn in_effect(&self) -> u32 {
        u32::try_from(self.governed.len()).unwrap_or(u32::MAX)
    }
}

impl Plan {
    /// The complete config of a workload, its destinations in it (whatever its layout).
    pub fn config_for(&self, key: &WorkloadKey, snapshot: &Snapshot) -> Option<ProxyConfig> {
        let mut config = self.config_without_destinations(key, snapshot)?;
        config.destinations = self.destinations.clone();
        Some(config)
    }

    /// [`Self::config_for`] but its destinations, which are [`Self::destinations`] for every
    /// workload: the writer renders them once a pass ([`braid_proxy_config::shared`]).
    pub fn config_without_destinations(
        &self,
        key: &WorkloadKey,
        snapshot: &Snapshot,
    ) -> Option<ProxyConfig> {
        let workload = self.workloads.get(key)?;
        let config = ProxyConfig {
            version: config::VERSION,
            requires: Vec::new(),
            workload: config::Workload {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                identity: workload.identity.clone(),
            },
            inbound: workload.inbound.clone(),
            shared_destinations: workload.shared_destinations,
            destinations: Vec::new(),
            opaque_ports: vec![25, 3306, 5432, 6379, 11211, 27017],
            tracing: snapshot.mesh.tracing.as_ref().map(|t| config::Tracing {
                collector: t.collector.clone(),
                sampling_percent: t.sampling_percent,
            }),
            limits: convert::limits(&snapshot.mesh.proxy.limits),
        };
        // `requires` and `version` say what the document restricts, so that a proxy too old
        // to enforce it refuses it (braid_proxy_config's version-skew rule).
        Some(config.seal())
    }
}

/// Decides what should exist.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let workloads = workload::workloads(snapshot.pods.iter().map(|p| p.as_ref()));
    let trust_domain = &snapshot.mesh.trust_domain;

    // Each policy's spec, converted once; a policy whose spec cannot be used takes no part.
    let mut policies: Vec<&MeshPolicy> = snapshot.policies.iter().map(|p| p.as_ref()).collect();
    policies.sort_by(|a, b| precedence(a, b));
    let converted: BTreeMap<ObjectKey, Result<config::ClientPolicy, String>> = policies
        .iter()
        .map(|p| {
            let key = object_key(&p.metadata);
            let source = format!("{}/{}", key.0, key.1);
            (
                key,
                convert::client_policy(&p.spec, source).map_err(|e| e.to_string()),
            )
        })
        .collect();

    // The winning policy of each workload, and every policy's outcome.
    let mut outcomes: BTreeMap<ObjectKey, PolicyOutcome> = policies
        .iter()
        .map(|p| {
            let key = object_key(&p.metadata);
            let accepted = converted[&key].as_ref().map(drop).map_err(Clone::clone);
            let mode = p
                .spec
                .mtls
                .as_ref()
                .map_or(snapshot.mesh.default_mtls_mode, |m| m.mode);
            (
                key,
                PolicyOutcome {
                    accepted,
                    selected: 0,
                    governed: BTreeSet::new(),
                    client_side: convert::has_client_side(&p.spec),
                    overridden_by: None,
                    mtls_mode: mode,
                    authz: authz::review(
                        &p.spec,
                        trust_domain,
                        snapshot.mesh.default_authorization,
                        &snapshot.namespaces,
                        None,
                    ),
                },
            )
        })
        .collect();
    let mut winners: BTreeMap<WorkloadKey, &MeshPolicy> = BTreeMap::new();
    let mut exposed: BTreeMap<ObjectKey, BTreeSet<u16>> = BTreeMap::new();
    for (key, workload) in &workloads {
        let candidates = policies.iter().filter(|p| {
            p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && converted[&object_key(&p.metadata)].is_ok()
                && selects_workload(p, workload)
        });
        for (rank, policy) in candidates.enumerate() {
            let outcome = outcomes
                .get_mut(&object_key(&policy.metadata))
                .expect("every policy has an outcome");
            outcome.selected += 1;
            exposed
                .entry(object_key(&policy.metadata))
                .or_default()
                .extend(&workload.ports);
            if rank == 0 {
                outcome.governed.insert(key.clone());
                winners.insert(key.clone(), policy);
            } else if outcome.overridden_by.is_none() {
                outcome.overridden_by = winners.get(key).and_then(|w| w.metadata.name.clone());
            }
        }
    }

    // Ports are reviewed against the pods each policy selects.
    for policy in &policies {
        let key = object_key(&policy.metadata);
        if let (Some(ports), Some(outcome)) = (exposed.get(&key), outcomes.get_mut(&key)) {
            outcome.authz = authz::review(
                &policy.spec,
                trust_domain,
                snapshot.mesh.default_authorization,
                &snapshot.namespaces,
                Some(ports),
            );
        }
    }

    let workload_plans = workloads
        .iter()
        .map(|(key, workload)| {
            let winner = winners.get(key);
            let identity = spiffe_id(trust_domain, &key.namespace, &workload.service_account);
            let inbound = inbound(winner.copied(), &snapshot.mesh);
            (
                key.clone(),
                WorkloadPlan {
                    service_account: workload.service_account.clone(),
                    identity,
                    inbound,
                    shared_destinations: workload.shared_destinations,
                },
            )
        })
        .collect();

    let mut destinations = plan_destinations(snapshot, &workloads, &winners, &converted);
    let route_outcomes = routes::apply_routes(&snapshot.routes, &mut destinations);
    Plan {
        destinations,
        workloads: workload_plans,
        policies: outcomes,
        routes: route_outcomes,
    }
}

fn selects_workload(policy: &MeshPolicy, workload: &Workload) -> bool {
    workload
        .pod_labels
        .iter()
        .any(|labels| selects(policy.spec.selector.as_ref(), labels))
}

fn inbound(winner: Option<&MeshPolicy>, mesh: &MeshSpec) -> Inbound {
    let default_authorization = convert::default_authorization(mesh.default_authorization);
    let Some(policy) = winner else {
        return Inbound {
            mtls_mode: convert::mtls_mode(mesh.default_mtls_mode),
            default_authorization,
            ..Default::default()
        };
    };
    let spec = &policy.spec;
    Inbound {
        mtls_mode: convert::mtls_mode(
            spec.mtls
                .as_ref()
                .map_or(mesh.default_mtls_mode, |m| m.mode),
        ),
        authorization: spec.authorization.as_deref().map(convert::authorization),
        default_authorization,
        authorization_mode: match spec.authorization_mode.unwrap_or_default() {
            braid_api::AuthorizationMode::Enforce => config::AuthorizationMode::Enforce,
            braid_api::AuthorizationMode::DryRun => config::AuthorizationMode::DryRun,
        },
        rate_limit: spec.rate_limit.as_ref().map(convert::rate_limit),
        policy: Some(format!(
            "{}/{}",
            policy.metadata.namespace.as_deref().unwrap_or_default(),
            policy.metadata.name.as_deref().unwrap_or_default()
        )),
    }
}

/// Services in namespaces that are injected or hold meshed workloads become destinations, with
/// the client policy of the workloads behind them.
fn plan_destinations(
    snapshot: &Snapshot,
    workloads: &BTreeMap<WorkloadKey, Workload>,
    winners: &BTreeMap<WorkloadKey, &MeshPolicy>,
    converted: &BTreeMap<ObjectKey, Result<config::ClientPolicy, String>>,
) -> Vec<Destination> {
    let trust_domain = &snapshot.mesh.trust_domain;
    let mut meshed_namespaces = snapshot.injected_namespaces.clone();
    meshed_namespaces.extend(workloads.keys().map(|k| k.namespace.clone()));
    let mut identities = PodIdentities::new();
    let mut pod_workloads: BTreeMap<ObjectKey, WorkloadKey> = BTreeMap::new();
    for pod in &snapshot.pods {
        if let (Some(key), Some(name)) = (workload::workload_of(pod), pod.metadata.name.clone()) {
            let account = workload::service_account_of(pod);
            identities.insert(
                (key.namespace.clone(), name.clone()),
                spiffe_id(trust_domain, &key.namespace, &account),
            );
            pod_workloads.insert((key.namespace.clone(), name), key);
        }
    }
    let mut slices_by_service: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in &snapshot.slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(namespace), Some(service)) = (slice.metadata.namespace.clone(), service) {
            slices_by_service
                .entry((namespace, service.clone()))
                .or_default()
                .push(slice);
        }
    }
    let mut destinations: Vec<Destination> = snapshot
        .services
        .iter()
        .filter(|s| {
            s.metadata
                .namespace
                .as_ref()
                .is_some_and(|ns| meshed_namespaces.contains(ns))
        })
        .filter_map(|service| {
            let key = object_key(&service.metadata);
            let slices = slices_by_service
                .get(&key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut destination = destinations::destination(service, slices, &identities)?;
            // The client policy is the winning policy of the first meshed workload behind it.
            let backing = slices
                .iter()
                .flat_map(|s| &s.endpoints)
                .filter_map(|e| e.target_ref.as_ref()?.name.clone())
                .filter_map(|pod| pod_workloads.get(&(key.0.clone(), pod)))
                .min();
            if let Some(policy) = backing.and_then(|w| winners.get(w))
                && let Some(Ok(client)) = converted.get(&object_key(&policy.metadata))
            {
                destination.policy = client.clone();
            }
            Some(destination)
        })
        .collect();
    destinations.sort_by(|a, b| a.name.cmp(&b.name));
    destinations
}

/// A namespaced object's key.
pub fn object_key(
    metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectKey {
    (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests;
