//! The planner on a fixture of the demo shop: order calls payment, which runs as v1 and v2.

use std::collections::BTreeMap;
use std::sync::Arc;

use braid_api::{
    Backend, LoadBalancer, MeshPolicy, MeshPolicySpec, MeshRoute, MeshRouteSpec, MtlsMode,
    MtlsSettings, RouteRule,
};
use braid_proxy_config as config;
use k8s_openapi::api::core::v1::{
    ObjectReference, Pod, PodSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

fn meta(name: &str, labels_: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("shop".into()),
        labels: Some(labels(labels_)),
        ..Default::default()
    }
}

fn pod(name: &str, workload: &str, app: &str, account: &str) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: meta(name, &[("braid.dev/workload", workload), ("app", app)]),
        spec: Some(PodSpec {
            service_account_name: Some(account.into()),
            ..Default::default()
        }),
        status: None,
    })
}

fn service(name: &str, ip: &str) -> Arc<Service> {
    Arc::new(Service {
        metadata: meta(name, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

fn slice(service: &str, endpoints: &[(&str, &str, bool)]) -> Arc<EndpointSlice> {
    Arc::new(EndpointSlice {
        metadata: meta(
            &format!("{service}-abc"),
            &[("kubernetes.io/service-name", service)],
        ),
        address_type: "IPv4".into(),
        endpoints: endpoints
            .iter()
            .map(|(ip, pod, ready)| Endpoint {
                addresses: vec![(*ip).into()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    ..Default::default()
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some((*pod).into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            ..Default::default()
        }]),
    })
}

fn policy(
    name: &str,
    created: i64,
    selector: Option<&[(&str, &str)]>,
    spec: MeshPolicySpec,
) -> Arc<MeshPolicy> {
    let mut policy = MeshPolicy::new(
        name,
        MeshPolicySpec {
            selector: selector.map(|s| LabelSelector {
                match_labels: Some(labels(s)),
                match_expressions: None,
            }),
            ..spec
        },
    );
    policy.metadata.namespace = Some("shop".into());
    policy.metadata.creation_timestamp = Some(Time(
        k8s_openapi::jiff::Timestamp::from_second(created).expect("time"),
    ));
    Arc::new(policy)
}

fn route(name: &str, service: &str, backends: &[(&str, u32)]) -> Arc<MeshRoute> {
    let mut route = MeshRoute::new(
        name,
        MeshRouteSpec {
            service: service.into(),
            rules: vec![RouteRule {
                backends: backends
                    .iter()
                    .map(|(s, w)| Backend {
                        service: (*s).into(),
                        port: None,
                        weight: *w,
                    })
                    .collect(),
                ..Default::default()
            }],
        },
    );
    route.metadata.namespace = Some("shop".into());
    Arc::new(route)
}

/// order (2 pods) calls payment (v1 and v2, one pod each); one unmeshed pod backs payment too.
fn shop() -> Snapshot {
    Snapshot {
        mesh: braid_api::MeshSpec::default(),
        injected_namespaces: ["shop".to_owned()].into(),
        namespaces: ["default".to_owned(), "shop".to_owned()].into(),
        pods: vec![
            pod("order-1", "order", "order", "order"),
            pod("order-2", "order", "order", "order"),
            pod("payment-v1-1", "payment-v1", "payment", "payment"),
            pod("payment-v2-1", "payment-v2", "payment", "payment"),
        ],
        services: vec![
            service("order", "10.96.0.10"),
            service("payment", "10.96.0.20"),
            service("payment-v1", "10.96.0.21"),
            service("payment-v2", "10.96.0.22"),
        ],
        slices: vec![
            slice(
                "order",
                &[
                    ("10.244.0.2", "order-1", true),
                    ("10.244.0.3", "order-2", true),
                ],
            ),
            slice(
                "payment",
                &[
                    ("10.244.0.4", "payment-v1-1", true),
                    ("10.244.0.5", "payment-v2-1", true),
                    ("10.244.0.9", "legacy", true),
                ],
            ),
            slice("payment-v1", &[("10.244.0.4", "payment-v1-1", true)]),
            slice(
                "payment-v2",
                &[
                    ("10.244.0.5", "payment-v2-1", true),
                    ("10.244.0.6", "payment-v2-gone", false),
                ],
            ),
        ],
        policies: vec![
            policy("everything", 100, None, MeshPolicySpec::default()),
            policy(
                "payment-strict",
                200,
                Some(&[("app", "payment")]),
                MeshPolicySpec {
                    mtls: Some(MtlsSettings {
                        mode: MtlsMode::Strict,
                    }),
                    load_balancer: Some(LoadBalancer::LeastConn),
                    ..Default::default()
                },
            ),
            policy(
                "nothing",
                300,
                Some(&[("app", "ghost")]),
                MeshPolicySpec::default(),
            ),
        ],
        routes: vec![route(
            "payment-canary",
            "payment",
            &[("payment-v1", 80), ("payment-v2", 20)],
        )],
    }
}

fn destination<'a>(plan: &'a Plan, name: &str) -> &'a config::Destination {
    plan.destinations
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("no destination {name}"))
}

fn key(name: &str) -> WorkloadKey {
    WorkloadKey {
        namespace: "shop".into(),
        name: name.into(),
    }
}

#[test]
fn every_meshed_workload_gets_its_identity_and_inbound_policy() {
    let plan = plan(&shop());
    assert_eq!(plan.workloads.len(), 3);
    let payment = &plan.workloads[&key("payment-v1")];
    assert_eq!(
        payment.identity,
        "spiffe://cluster.local/ns/shop/sa/payment"
    );
    assert_eq!(payment.inbound.mtls_mode, config::MtlsMode::Strict);
    assert_eq!(
        payment.inbound.policy.as_deref(),
        Some("shop/payment-strict")
    );
    let order = &plan.workloads[&key("order")];
    assert_eq!(
        order.inbound.mtls_mode,
        config::MtlsMode::Permissive,
        "the Mesh default"
    );
    assert_eq!(order.inbound.policy.as_deref(), Some("shop/everything"));
}

#[test]
fn destinations_carry_ready_endpoints_identities_policy_and_routes() {
    let plan = plan(&shop());
    let payment = destination(&plan, "payment.shop");
    assert_eq!(
        payment.cluster_ips,
        vec!["10.96.0.20".parse::<std::net::IpAddr>().expect("ip")]
    );
    let endpoints = &payment.ports[0].endpoints;
    assert_eq!(endpoints.len(), 3);
    assert_eq!(endpoints[0].port, 8080);
    assert_eq!(
        endpoints[0].identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/payment")
    );
    assert_eq!(
        endpoints[2].identity, None,
        "an unmeshed pod is called in plaintext"
    );
    assert_eq!(
        payment.policy.load_balancer,
        config::LoadBalancer::LeastConn
    );
    assert_eq!(
        payment.policy.source.as_deref(),
        Some("shop/payment-strict")
    );
    let split: Vec<_> = payment.routes[0]
        .backends
        .iter()
        .map(|b| (b.destination.as_str(), b.weight))
        .collect();
    assert_eq!(split, [("payment-v1.shop", 80), ("payment-v2.shop", 20)]);
    assert_eq!(
        destination(&plan, "payment-v2.shop").ports[0]
            .endpoints
            .len(),
        1,
        "not-ready endpoints are left out"
    );
    assert_eq!(
        destination(&plan, "order.shop").policy.load_balancer,
        config::LoadBalancer::P2cEwma
    );
}

#[test]
fn policy_outcomes_report_precedence_and_empty_selection() {
    let plan = plan(&shop());
    let outcome = |name: &str| &plan.policies[&("shop".to_owned(), name.to_owned())];
    assert_eq!(
        (
            outcome("payment-strict").selected,
            outcome("payment-strict").in_effect()
        ),
        (2, 2)
    );
    assert_eq!(
        (
            outcome("everything").selected,
            outcome("everything").in_effect()
        ),
        (3, 1)
    );
    assert_eq!(
        outcome("everything").overridden_by.as_deref(),
        Some("payment-strict")
    );
    assert_eq!(
        (outcome("nothing").selected, outcome("nothing").in_effect()),
        (0, 0)
    );
}

#[test]
fn routes_to_missing_services_are_reported() {
    let mut snapshot = shop();
    snapshot
        .routes
        .push(route("to-nowhere", "ghost", &[("payment-v1", 100)]));
    snapshot.routes.push(route(
        "half-missing",
        "order",
        &[("order", 50), ("order-v9", 50)],
    ));
    let plan = plan(&snapshot);
    let outcome = |name: &str| &plan.routes[&("shop".to_owned(), name.to_owned())];
    assert_eq!(outcome("payment-canary").accepted, Ok(()));
    assert_eq!(
        outcome("payment-canary").backends,
        "payment-v1=80,payment-v2=20"
    );
    assert!(
        matches!(&outcome("to-nowhere").accepted, Err((reason, _)) if reason == "ServiceNotFound")
    );
    assert!(outcome("payment-canary").in_effect && outcome("half-missing").in_effect);
    assert!(!outcome("to-nowhere").in_effect);
    assert!(
        matches!(&outcome("half-missing").accepted, Err((reason, m)) if reason == "BackendNotFound" && m.contains("order-v9"))
    );
    let order = destination(&plan, "order.shop");
    assert_eq!(
        order.routes[0].backends.len(),
        1,
        "the missing backend is left out, the rest still routes"
    );
}

#[test]
fn a_policy_with_a_bad_duration_is_not_accepted_and_takes_no_part() {
    let mut snapshot = shop();
    snapshot.policies.push(policy(
        "broken",
        50,
        Some(&[("app", "order"), ("tier", "x")]),
        MeshPolicySpec {
            timeouts: Some(braid_api::Timeouts {
                request: Some("soon".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ));
    let plan = plan(&snapshot);
    let broken = &plan.policies[&("shop".to_owned(), "broken".to_owned())];
    assert!(
        broken
            .accepted
            .as_ref()
            .is_err_and(|e| e.contains("spec.timeouts.request")),
        "{broken:?}"
    );
    assert_eq!(broken.in_effect(), 0);
}

#[test]
fn order_proxy_json_matches_the_golden_file() {
    let snapshot = shop();
    let plan = plan(&snapshot);
    let rendered = plan
        .config_for(&key("order"), &snapshot)
        .expect("order is meshed")
        .to_json();
    let golden =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/order-proxy.json");
    if std::env::var_os("BRAID_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &rendered).expect("write golden");
    }
    let expected =
        std::fs::read_to_string(&golden).expect("golden file (BRAID_UPDATE_GOLDEN=1 writes it)");
    assert_eq!(
        rendered, expected,
        "proxy.json changed; if on purpose, rerun with BRAID_UPDATE_GOLDEN=1"
    );
    braid_proxy_config::ProxyConfig::from_json(rendered.as_bytes())
        .expect("the proxy accepts what the operator writes");
}

#[test]
fn the_mesh_limits_reach_every_config_and_unset_ones_are_left_out() {
    let mut snapshot = shop();
    let written = plan(&snapshot)
        .config_for(&key("order"), &snapshot)
        .expect("a config");
    assert_eq!(written.limits, config::Limits::default());
    assert!(
        !written.to_json().contains("limits"),
        "defaults are omitted"
    );

    snapshot.mesh.proxy.limits = braid_api::ProxyLimits {
        request_head_timeout: Some("2.5s".into()),
        idle_timeout: None,
        max_connections: Some(500),
    };
    let written = plan(&snapshot)
        .config_for(&key("order"), &snapshot)
        .expect("a config");
    assert_eq!(
        written.limits,
        config::Limits {
            request_head_timeout_ms: 2_500,
            idle_timeout_ms: config::Limits::default().idle_timeout_ms,
            max_connections: 500,
        }
    );
}

mod authz;

/// A pod as this release's webhook injects it: its config volume projects the namespace's
/// destinations file beside the workload's `proxy.json`.
fn pod_mounting_shared_destinations(name: &str, workload: &str) -> Arc<Pod> {
    use k8s_openapi::api::core::v1::{
        ConfigMapProjection, ProjectedVolumeSource, Volume, VolumeProjection,
    };
    let mut pod = (*pod(name, workload, workload, workload)).clone();
    let source = |name: &str| VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: name.into(),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    pod.spec.as_mut().expect("spec").volumes = Some(vec![Volume {
        name: "braid-config".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![
                source(&braid_api::proxy_config_map_name(workload)),
                source(braid_api::DESTINATIONS_CONFIG_MAP),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    Arc::new(pod)
}

#[test]
fn a_workload_leaves_its_destinations_to_the_shared_file_only_when_every_pod_mounts_it() {
    let mut snapshot = shop();
    // order: both pods injected by this release; payment-v1: one of two is an older release's.
    snapshot.pods = vec![
        pod_mounting_shared_destinations("order-1", "order"),
        pod_mounting_shared_destinations("order-2", "order"),
        pod_mounting_shared_destinations("payment-v1-1", "payment-v1"),
        pod("payment-v1-2", "payment-v1", "payment", "payment"),
    ];
    let plan = plan(&snapshot);
    let order = plan
        .config_without_destinations(&key("order"), &snapshot)
        .expect("order's document");
    assert!(order.shared_destinations);
    assert!(order.requires.contains(&"sharedDestinations".to_owned()));
    let payment = plan
        .config_without_destinations(&key("payment-v1"), &snapshot)
        .expect("payment-v1's document");
    assert!(
        !payment.shared_destinations,
        "an older pod needs them whole"
    );
    assert!(payment.requires.is_empty());
    assert_eq!(payment.version, 1, "what the older release reads");
}
