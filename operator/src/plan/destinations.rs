//! Destinations: meshed Services with their ports and ready endpoints, from Services and
//! EndpointSlices. An endpoint whose pod is meshed carries that pod's SPIFFE ID, so the client
//! proxy knows whom to expect at the other end of the mTLS handshake.

use std::collections::BTreeMap;
use std::net::IpAddr;

use braid_proxy_config::{Destination, DestinationPort, Endpoint, Protocol};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `<service>.<namespace>`: a destination's name in `proxy.json`.
pub fn destination_name(namespace: &str, service: &str) -> String {
    format!("{service}.{namespace}")
}

/// Pod (namespace, name) → SPIFFE ID, for meshed pods.
pub type PodIdentities = BTreeMap<(String, String), String>;

/// The destination for `service` (without policy and routes), or `None` for Services a proxy
/// cannot intercept (ExternalName, no TCP port).
pub fn destination(
    service: &Service,
    slices: &[&EndpointSlice],
    identities: &PodIdentities,
) -> Option<Destination> {
    let namespace = service.metadata.namespace.as_deref()?;
    let name = service.metadata.name.as_deref()?;
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let ports: Vec<DestinationPort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|port| {
            Some(DestinationPort {
                port: u16::try_from(port.port).ok()?,
                protocol: protocol(port),
                endpoints: endpoints(port, namespace, slices, identities),
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    Some(Destination {
        name: destination_name(namespace, name),
        cluster_ips,
        ports,
        policy: Default::default(),
        routes: Vec::new(),
    })
}

/// The protocol of a Service port, from `appProtocol`, else the port name's prefix (`http-`,
/// `grpc-`, `h2c-`, `tcp-`, as Istio users name them), else detection.
pub fn protocol(port: &ServicePort) -> Protocol {
    let hint = port
        .app_protocol
        .as_deref()
        .or(port.name.as_deref())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let kind = hint.split(['-', '_']).next().unwrap_or_default();
    match kind {
        "http" => Protocol::Http,
        "http2" | "h2c" | "grpc" | "kubernetes.io/h2c" => Protocol::Http2,
        "tcp" | "mysql" | "postgres" | "postgresql" | "redis" | "mongo" | "smtp" => Protocol::Tcp,
        _ => Protocol::Detect,
    }
}

fn endpoints(
    port: &ServicePort,
    namespace: &str,
    slices: &[&EndpointSlice],
    identities: &PodIdentities,
) -> Vec<Endpoint> {
    let port_name = port.name.clone().unwrap_or_default();
    let mut endpoints = Vec::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.clone().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let identity = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    identities
                        .get(&(namespace.to_owned(), r.name.clone()?))
                        .cloned()
                });
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse() {
                    endpoints.push(Endpoint {
                        ip,
                        port: target,
                        identity: identity.clone(),
                    });
                }
            }
        }
    }
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: Option<&str>, app_protocol: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(String::from),
            app_protocol: app_protocol.map(String::from),
            port: 80,
            ..Default::default()
        }
    }

    #[test]
    fn protocol_comes_from_app_protocol_then_name() {
        assert_eq!(protocol(&port(Some("http-web"), None)), Protocol::Http);
        assert_eq!(protocol(&port(Some("grpc"), None)), Protocol::Http2);
        assert_eq!(
            protocol(&port(Some("web"), Some("kubernetes.io/h2c"))),
            Protocol::Http2
        );
        assert_eq!(
            protocol(&port(Some("db"), Some("postgresql"))),
            Protocol::Tcp
        );
        assert_eq!(protocol(&port(None, None)), Protocol::Detect);
    }
}
