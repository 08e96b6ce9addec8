//! What every connection of a running proxy shares.

use std::sync::Arc;
use std::time::Duration;

use braid_proxy_config::Limits;

use crate::state::drain::Drain;
use crate::state::reload::{ConfigState, IdentityState};
use crate::telemetry::metrics::Metrics;
use crate::upstream::Upstreams;

/// The state of `braid-proxy run`, shared by the listeners and the admin server.
pub struct Context {
    /// `proxy.json` in force.
    pub config: Arc<ConfigState>,
    /// The workload certificate in force.
    pub identity: Arc<IdentityState>,
    /// Pools and endpoint numbers.
    pub upstreams: Arc<Upstreams>,
    /// Counters.
    pub metrics: Metrics,
    /// How long a client may stay silent before its connection is taken as opaque TCP.
    pub detect_timeout: Duration,
    /// The ports this proxy listens on: a connection to one of them is refused
    /// ([`crate::listener::loops_back`]).
    pub own_ports: Vec<u16>,
    /// The process's soft limit on open files, which lowers the connection caps
    /// ([`crate::listener::connection_cap`]).
    pub descriptor_limit: u64,
    /// The end of the pod: from SIGTERM on, connections are told to go elsewhere.
    pub drain: Drain,
}

impl Context {
    /// A context with nothing loaded yet, for a proxy on the standard ports with no
    /// descriptor limit.
    pub fn new(detect_timeout: Duration) -> Arc<Self> {
        Self::with_listeners(detect_timeout, braid_sidecar::OWN_PORTS.to_vec(), u64::MAX)
    }

    /// A context with nothing loaded yet, for a proxy listening on `own_ports`.
    pub fn with_listeners(
        detect_timeout: Duration,
        own_ports: Vec<u16>,
        descriptor_limit: u64,
    ) -> Arc<Self> {
        let identity = Arc::new(IdentityState::default());
        Arc::new(Self {
            config: Arc::new(ConfigState::default()),
            upstreams: Arc::new(Upstreams::new(identity.clone())),
            identity,
            metrics: Metrics::default(),
            detect_timeout,
            own_ports,
            descriptor_limit,
            drain: Drain::default(),
        })
    }

    /// The deadlines and caps in force: the config's, or the defaults before one is loaded.
    pub fn limits(&self) -> Limits {
        self.config
            .current()
            .map_or_else(Limits::default, |loaded| loaded.config.limits)
    }
}

/// Forever: after every config swap from now on, forgets the numbers and pooled connections of
/// endpoints the new config no longer has. (It subscribes at once, before the future is first
/// polled, so that no swap is missed.)
pub fn forget_removed_endpoints(context: Arc<Context>) -> impl Future<Output = ()> {
    let mut swaps = context.config.subscribe();
    async move {
        while swaps.changed().await.is_ok() {
            let loaded = swaps.borrow_and_update().clone();
            if let Some(loaded) = loaded {
                let keep = loaded.table.endpoint_addrs();
                context.config.live.endpoints.forget_all_but(&keep);
                context.upstreams.forget_all_but(&keep);
                let names = loaded.table.destination_names();
                context.config.live.destinations.forget_all_but(&names);
            }
        }
    }
}

/// Forever: every few seconds, closes the pooled connections idle for
/// [`POOL_IDLE_TIMEOUT`](crate::upstream::POOL_IDLE_TIMEOUT).
pub async fn close_idle_connections(context: Arc<Context>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        context
            .upstreams
            .close_idle(crate::upstream::POOL_IDLE_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn config(endpoint_ips: &[&str]) -> Vec<u8> {
        let endpoints: Vec<_> = endpoint_ips
            .iter()
            .map(|ip| serde_json::json!({"ip": ip, "port": 8080}))
            .collect();
        serde_json::json!({
            "version": 1,
            "workload": {"namespace": "ns", "name": "w", "identity": "spiffe://t/ns/ns/sa/w"},
            "inbound": {"mtlsMode": "STRICT"},
            "destinations": [{"name": "svc.ns", "clusterIps": ["10.96.0.10"],
                "ports": [{"port": 80, "protocol": "http", "endpoints": endpoints}]}],
        })
        .to_string()
        .into_bytes()
    }

    fn addr(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 8080)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_config_swap_forgets_the_endpoints_it_removed() {
        let context = Context::new(Duration::from_millis(250));
        tokio::spawn(forget_removed_endpoints(context.clone()));
        context
            .config
            .offer(&config(&["10.0.0.1", "10.0.0.2"]))
            .expect("valid");
        let endpoints = &context.config.live.endpoints;
        let first = endpoints.stats(addr("10.0.0.2"));
        assert_eq!(endpoints.len(), 2);

        context
            .config
            .offer(&config(&["10.0.0.2", "10.0.0.3"]))
            .expect("valid");
        tokio::task::yield_now().await;
        assert_eq!(endpoints.len(), 2, "10.0.0.1 is gone, 10.0.0.3 came");
        // The one that stayed kept its numbers: the same entry, not a fresh one, and the
        // config in force holds it.
        let kept = endpoints.stats(addr("10.0.0.2"));
        assert!(std::sync::Arc::ptr_eq(&first, &kept));
        let loaded = context.config.current().expect("a config");
        let target = loaded
            .table
            .lookup("10.96.0.10:80".parse().expect("addr"))
            .expect("meshed");
        assert!(
            loaded
                .table
                .endpoints(target)
                .iter()
                .any(|e| std::sync::Arc::ptr_eq(&e.stats, &kept))
        );
    }
}
