//! Application HTTP probes through the mesh. The kubelet probes a pod from the node, so under
//! STRICT mTLS a probe of the application's own port would be refused by the proxy. As Istio
//! does, each `httpGet` probe is rewritten to the proxy's admin port,
//! `/app-health/<container>/<liveness|readiness|startup>`, and the proxy performs the original
//! probe over loopback. The originals travel to the proxy in `BRAID_APP_PROBES` (JSON).
//! TCP, gRPC and exec probes are left alone: exec runs inside the container, and a TCP connect is
//! answered by the proxy's inbound listener.

use braid_sidecar::{AppProbe, AppProbes};
use k8s_openapi::api::core::v1::{Container, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Rewrites every HTTP probe of the pod's containers and returns the originals as JSON
/// (`{"<container>/<kind>": {port, path, scheme}}`), or an empty string when there were none.
pub fn rewrite(spec: &mut PodSpec, admin_port: i32) -> String {
    let mut originals = AppProbes::new();
    for container in &mut spec.containers {
        let ports = container.ports.clone().unwrap_or_default();
        let name = container.name.clone();
        let Container {
            liveness_probe,
            readiness_probe,
            startup_probe,
            ..
        } = container;
        for (kind, probe) in [
            ("liveness", liveness_probe),
            ("readiness", readiness_probe),
            ("startup", startup_probe),
        ] {
            if let Some(original) = probe
                .as_mut()
                .and_then(|p| rewrite_one(p, &name, kind, admin_port, &ports))
            {
                originals.insert(format!("{name}/{kind}"), original);
            }
        }
    }
    if originals.is_empty() {
        String::new()
    } else {
        serde_json::to_string(&originals).unwrap_or_default()
    }
}

fn rewrite_one(
    probe: &mut Probe,
    container: &str,
    kind: &str,
    admin_port: i32,
    ports: &[k8s_openapi::api::core::v1::ContainerPort],
) -> Option<AppProbe> {
    let get = probe.http_get.as_mut()?;
    let port = match &get.port {
        IntOrString::Int(port) => *port,
        IntOrString::String(name) => {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))?
                .container_port
        }
    };
    // A port Kubernetes would not accept leaves the probe as it is.
    let port = u16::try_from(port).ok()?;
    let original = AppProbe {
        port,
        path: get.path.clone().unwrap_or_else(|| "/".into()),
        scheme: get.scheme.clone().unwrap_or_else(|| "HTTP".into()),
    };
    get.port = IntOrString::Int(admin_port);
    get.path = Some(format!("/app-health/{container}/{kind}"));
    get.scheme = Some("HTTP".into());
    get.host = None;
    Some(original)
}
