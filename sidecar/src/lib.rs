//! `braid-sidecar`: the contract between the webhook that injects Braid's sidecar and the sidecar
//! itself. The webhook writes a pod's containers, flags and environment from these definitions,
//! and `braid-proxy` reads them back with the same ones, so the two cannot drift apart: the
//! proxy's ports and UID, the environment variables the webhook sets, the exclusion annotations
//! (and the one parser of their lists, used at admission and again by `braid-proxy init`), and
//! the application probes the webhook rewrites to the admin port.
//!
//! It links no Kubernetes crate (the proxy never does).

mod exclusions;
mod probes;

pub use exclusions::{EXCLUSIONS, Exclusion, ExclusionKind, ListError, parse_cidrs, parse_ports};
pub use probes::{AppProbe, AppProbes, parse_app_probes};

/// The proxy's outbound port: the application's outbound TCP is redirected here.
pub const OUTBOUND_PORT: u16 = 15001;
/// The proxy's inbound port: TCP to the pod is redirected here.
pub const INBOUND_PORT: u16 = 15006;
/// The proxy's admin port (`/live`, `/ready`, `/metrics`, `/config`, `/app-health/...`): never
/// redirected, so that the kubelet's probes reach it directly.
pub const ADMIN_PORT: u16 = 15020;
/// The proxy's own ports: a connection whose original destination is one of them is a loop.
pub const OWN_PORTS: [u16; 3] = [OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT];

/// The name of the injected proxy container (the operator reads proxies back by it).
pub const PROXY_CONTAINER: &str = "braid-proxy";

/// The proxy's UID and GID; its own connections are never redirected.
pub const PROXY_UID: u32 = 1337;

/// The environment variables the webhook sets on the proxy container, and the proxy's other
/// settings (all optional, with the defaults the injected pod uses).
pub mod env {
    /// The pod's name (from the downward API).
    pub const POD_NAME: &str = "POD_NAME";
    /// The pod's namespace (from the downward API).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// The workload the pod belongs to (names its ConfigMap and identity Secret).
    pub const WORKLOAD: &str = "BRAID_WORKLOAD";
    /// The proxy's log filter (`tracing` syntax, such as `info,braid_proxy=debug`).
    pub const LOG: &str = "BRAID_LOG";
    /// The application's original HTTP probes, as JSON ([`crate::AppProbes`]).
    pub const APP_PROBES: &str = "BRAID_APP_PROBES";
    /// Where the admin server listens (default `0.0.0.0:15020`).
    pub const ADMIN_ADDR: &str = "BRAID_ADMIN_ADDR";
    /// Where the inbound listener listens (default `0.0.0.0:15006`).
    pub const INBOUND_ADDR: &str = "BRAID_INBOUND_ADDR";
    /// Where the outbound listener listens (default `127.0.0.1:15001`).
    pub const OUTBOUND_ADDR: &str = "BRAID_OUTBOUND_ADDR";
    /// How long protocol detection waits for a client's first bytes, in ms (default 250).
    pub const DETECT_TIMEOUT_MS: &str = "BRAID_DETECT_TIMEOUT_MS";
    /// How long open connections may finish after SIGTERM, in ms (default 5000).
    pub const DRAIN_MS: &str = "BRAID_DRAIN_MS";
    /// The directory of the mounted `proxy.json` (default `/etc/braid/config`).
    pub const CONFIG_DIR: &str = "BRAID_CONFIG_DIR";
    /// The directory of the mounted identity (default `/etc/braid/identity`).
    pub const IDENTITY_DIR: &str = "BRAID_IDENTITY_DIR";
}
