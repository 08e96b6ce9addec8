//! Injection as a pure function: a Pod (and the mesh's settings) in, the injected Pod out, or
//! the reason it is left alone. The admission server turns the difference into a JSON patch; the
//! `inject` CLI prints the result. Both go through [`inject`], so they never disagree.

use std::collections::BTreeMap;

use braid_api::{
    DESTINATIONS_CONFIG_MAP, INJECT_ANNOTATION, WORKLOAD_LABEL, identity_secret_name,
    proxy_config_map_name,
};
use braid_sidecar::env;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod,
    Probe, ProjectedVolumeSource, ResourceRequirements, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::probes;

pub use braid_sidecar::PROXY_CONTAINER;
/// Name of the injected init container.
pub const INIT_CONTAINER: &str = "braid-init";
/// Annotation recording what was injected, by which version.
pub const INJECTED_ANNOTATION: &str = "braid.dev/injected";
/// The proxy's UID and GID (as Kubernetes types them); its own traffic is exempt from
/// redirection.
const PROXY_UID: i64 = braid_sidecar::PROXY_UID as i64;
/// The proxy's admin port (as Kubernetes types it).
const ADMIN_PORT: i32 = braid_sidecar::ADMIN_PORT as i32;
/// Where the API server's ServiceAccount admission mounts the pod's API token, in every
/// container that has nothing else mounted there.
pub const SERVICE_ACCOUNT_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The empty volume mounted over [`SERVICE_ACCOUNT_TOKEN_DIR`] in Braid's containers. Neither
/// needs the pod's API token (the operator writes their config and certificates), and neither
/// should hold it: braid-init runs as root with `NET_ADMIN`, and a proxy that held the token
/// could act as the application. The application's containers keep theirs.
pub const NO_TOKEN_VOLUME: &str = "braid-no-token";

/// What the mesh says about the injected containers.
#[derive(Clone, Debug, PartialEq)]
pub struct InjectSettings {
    /// Image of braid-proxy and braid-init.
    pub proxy_image: String,
    /// Proxy log filter.
    pub log_level: String,
    /// CPU request of the proxy.
    pub cpu_request: String,
    /// Memory request of the proxy.
    pub memory_request: String,
    /// Memory limit of the proxy.
    pub memory_limit: String,
    /// Inject the proxy as a native sidecar (Kubernetes ≥ 1.29); otherwise as the first container.
    pub native_sidecar: bool,
    /// The injecting version, recorded in the annotation.
    pub version: String,
}

impl InjectSettings {
    /// Settings from the Mesh spec.
    pub fn from_mesh(mesh: &braid_api::MeshSpec, native_sidecar: bool) -> Self {
        Self {
            proxy_image: mesh.proxy.image.clone(),
            log_level: mesh.proxy.log_level.clone(),
            cpu_request: mesh.proxy.resources.cpu_request.clone(),
            memory_request: mesh.proxy.resources.memory_request.clone(),
            memory_limit: mesh.proxy.resources.memory_limit.clone(),
            native_sidecar,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Why a pod is left as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Annotated `braid.dev/inject: disabled`.
    OptedOut,
    /// `hostNetwork: true`: iptables rules would change the node's network.
    HostNetwork,
    /// It already has the proxy.
    AlreadyInjected,
}

/// A pod that cannot be injected as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The pod has no spec.
    #[error("the pod has no spec")]
    NoSpec,
    /// An exclusion annotation does not parse.
    #[error("annotation {annotation}: {message}")]
    BadAnnotation {
        /// Which annotation.
        annotation: String,
        /// What is wrong.
        message: String,
    },
}

/// Injects `pod`, or says why not. `workload_hint` names the workload when the pod itself cannot
/// (a pod template inside a Deployment, for the CLI).
pub fn inject(
    pod: &Pod,
    settings: &InjectSettings,
    workload_hint: Option<&str>,
) -> Result<Result<Pod, Skip>, InjectError> {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(INJECT_ANNOTATION).map(String::as_str) == Some("disabled") {
        return Ok(Err(Skip::OptedOut));
    }
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    if spec.host_network == Some(true) {
        return Ok(Err(Skip::HostNetwork));
    }
    let has_proxy = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER);
    if has_proxy || annotations.contains_key(INJECTED_ANNOTATION) {
        return Ok(Err(Skip::AlreadyInjected));
    }

    let workload = workload_hint.map_or_else(|| workload_name(pod), String::from);
    let init_args = init_args(&annotations)?;
    let mut pod = pod.clone();
    let app_probes = probes::rewrite(pod.spec.as_mut().ok_or(InjectError::NoSpec)?, ADMIN_PORT);
    let proxy = proxy_container(settings, &workload, &app_probes);
    let spec = pod.spec.as_mut().ok_or(InjectError::NoSpec)?;
    let mut init_containers = vec![init_container(settings, init_args)];
    if settings.native_sidecar {
        init_containers.push(Container {
            restart_policy: Some("Always".into()),
            ..proxy
        });
    } else {
        let waiting = Container {
            lifecycle: Some(Lifecycle {
                post_start: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(vec!["braid-proxy".into(), "wait-ready".into()]),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..proxy
        };
        spec.containers.insert(0, waiting);
    }
    init_containers.extend(spec.init_containers.take().unwrap_or_default());
    spec.init_containers = Some(init_containers);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(volumes(&workload));

    let metadata = &mut pod.metadata;
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(WORKLOAD_LABEL.into(), workload);
    let mode = if settings.native_sidecar {
        "native sidecar"
    } else {
        "first container"
    };
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            INJECTED_ANNOTATION.into(),
            format!(
                "braid-webhook {}: {INIT_CONTAINER}, {PROXY_CONTAINER} ({mode})",
                settings.version
            ),
        );
    Ok(Ok(pod))
}

/// The workload a pod belongs to: its controller's name (a Deployment's, through its
/// ReplicaSet), else the pod's own name.
pub fn workload_name(pod: &Pod) -> String {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let Some(owner) = owner {
        if owner.kind == "ReplicaSet"
            && let Some(hash) = labels.get("pod-template-hash")
            && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
        {
            return deployment.to_owned();
        }
        return owner.name.clone();
    }
    pod.metadata
        .name
        .clone()
        .or_else(|| {
            pod.metadata
                .generate_name
                .as_ref()
                .map(|g| g.trim_end_matches('-').to_owned())
        })
        .unwrap_or_else(|| "unnamed".into())
}

/// `braid-proxy init` flags from the pod's exclusion annotations.
fn init_args(annotations: &BTreeMap<String, String>) -> Result<Vec<String>, InjectError> {
    let mut args = vec!["init".into(), format!("--proxy-uid={PROXY_UID}")];
    for exclusion in braid_sidecar::EXCLUSIONS {
        if let Some(value) = annotations.get(exclusion.annotation) {
            let value = exclusion
                .normalize(value)
                .map_err(|error| InjectError::BadAnnotation {
                    annotation: exclusion.annotation.into(),
                    message: error.to_string(),
                })?;
            if !value.is_empty() {
                args.push(format!("{}={value}", exclusion.flag));
            }
        }
    }
    Ok(args)
}

fn init_container(settings: &InjectSettings, args: Vec<String>) -> Container {
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(settings.proxy_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        // iptables takes its lock under /run; the root filesystem stays read-only.
        volume_mounts: Some(vec![
            mount("braid-xtables", "/run", false),
            mount(NO_TOKEN_VOLUME, SERVICE_ACCOUNT_TOKEN_DIR, true),
        ]),
        ..Default::default()
    }
}

fn proxy_container(settings: &InjectSettings, workload: &str, app_probes: &str) -> Container {
    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = vec![
        EnvVar {
            name: env::POD_NAME.into(),
            value_from: Some(field("metadata.name")),
            ..Default::default()
        },
        EnvVar {
            name: env::POD_NAMESPACE.into(),
            value_from: Some(field("metadata.namespace")),
            ..Default::default()
        },
        EnvVar {
            name: env::WORKLOAD.into(),
            value: Some(workload.into()),
            ..Default::default()
        },
        EnvVar {
            name: env::LOG.into(),
            value: Some(settings.log_level.clone()),
            ..Default::default()
        },
    ];
    if !app_probes.is_empty() {
        env.push(EnvVar {
            name: env::APP_PROBES.into(),
            value: Some(app_probes.into()),
            ..Default::default()
        });
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let quantity = |q: &str| Quantity(q.into());
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(settings.proxy_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["run".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("braid-admin".into()),
            container_port: ADMIN_PORT,
            ..Default::default()
        }]),
        startup_probe: Some(probe("/ready", 1, 300)),
        readiness_probe: Some(probe("/ready", 2, 3)),
        liveness_probe: Some(probe("/live", 10, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".to_owned(), quantity(&settings.cpu_request)),
                    ("memory".to_owned(), quantity(&settings.memory_request)),
                ]
                .into(),
            ),
            limits: Some([("memory".to_owned(), quantity(&settings.memory_limit))].into()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("braid-config", "/etc/braid/config", true),
            mount("braid-identity", "/etc/braid/identity", true),
            mount(NO_TOKEN_VOLUME, SERVICE_ACCOUNT_TOKEN_DIR, true),
        ]),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// The workload's ConfigMap with the namespace's destinations beside it, in one projected
/// volume so that the kubelet swaps both files at once, and the workload's Secret (all optional:
/// the operator writes them once the pod, and so the workload, exists; without `subPath`, so
/// the kubelet swaps in updates), iptables' lock dir, and the empty dir that keeps the pod's API
/// token out of Braid's containers. The operator writes the workload's
/// `proxy.json` without destinations only for pods that mount the namespace's file.
fn volumes(workload: &str) -> Vec<Volume> {
    let config_map = |name: String| VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name,
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        Volume {
            name: "braid-config".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![
                    config_map(proxy_config_map_name(workload)),
                    config_map(DESTINATIONS_CONFIG_MAP.to_owned()),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "braid-identity".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(identity_secret_name(workload)),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "braid-xtables".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: NO_TOKEN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]
}
