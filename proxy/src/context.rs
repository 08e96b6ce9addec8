//! What every connection of a running proxy shares.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::reload::{ConfigState, IdentityState};
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
}

impl Context {
    /// A context with nothing loaded yet.
    pub fn new(detect_timeout: Duration) -> Arc<Self> {
        let identity = Arc::new(IdentityState::default());
        Arc::new(Self {
            config: Arc::new(ConfigState::default()),
            upstreams: Arc::new(Upstreams::new(identity.clone())),
            identity,
            metrics: Metrics::default(),
            detect_timeout,
        })
    }
}
