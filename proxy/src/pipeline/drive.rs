//! THE request driver: the steps of every request, in one order written in one place, for both
//! directions, both codecs (the HTTP/1.1 fast path and hyper) and opaque TCP connections.
//!
//! Inbound (to the application, [`Bound::Inbound`]): the caller's verified identity is on the
//! request; authorization, then the rate limit, decide on it and the request's method and path
//! in the config in force ([`super::admit`]); the endpoint is the application on loopback;
//! then the send (step 6).
//!
//! Outbound ([`Bound::Outbound`]):
//!
//! 1. the config in force, and the destination the original address belongs to in it;
//! 2. the plan ([`super::decide`]): route, weighted backend, timeout, fault;
//! 3. a backend whose endpoints the config does not list yet holds the request for the next
//!    config, up to [`HOLD_FOR_ENDPOINTS`];
//! 4. the fault's abort, if one is injected, is the answer;
//! 5. the endpoint, by the destination's balancer; the config is let go from here on (an open
//!    connection or a slow request never keeps a replaced config alive); a delay is waited out;
//! 6. the attempts ([`super::attempts`]): each admitted by the destination's circuit breaker,
//!    counted as in flight to its endpoint, within the per-try and the request's deadline; its
//!    outcome recorded for outlier detection; then, on another endpoint, a failover (nothing
//!    was sent) or a retry (the retry policy and its budget allow), or the outcome stands.
//!
//! What differs per codec — reading the request's facts, sending it, keeping it to send again
//! — is the [`Exchange`] the driver is generic over: statically dispatched (`async fn` in a
//! trait, monomorphized per codec), with no box or `dyn` per request.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::admit;
use super::attempts::{self, Sending};
use super::decide::{self, Injected, Picked};
pub use super::exchange::{Deadline, Exchange, HOLD_FOR_ENDPOINTS};
use super::failure::Failure;
use crate::policy::authz::Caller;
use crate::policy::routing::Target;
use crate::state::context::Context;
use crate::state::reload::Loaded;
use crate::telemetry::metrics::Direction;

/// Where a request is bound.
#[derive(Clone, Debug)]
pub enum Bound {
    /// To a meshed destination: the address the application dialled.
    Outbound(SocketAddr),
    /// To the application, from a caller.
    Inbound(Arc<InboundTarget>),
}

/// The application behind one inbound connection, and who calls it.
#[derive(Debug)]
pub struct InboundTarget {
    /// The application on loopback, on the port the caller dialled.
    pub app: Picked,
    /// The caller, proven by its mTLS handshake; `None`: a plaintext caller.
    pub caller: Option<Caller>,
}

impl Bound {
    /// The direction of the listener the request came in on.
    pub fn direction(&self) -> Direction {
        match self {
            Self::Outbound(_) => Direction::Outbound,
            Self::Inbound(_) => Direction::Inbound,
        }
    }
}

/// What a codec already holds for a request: the config in force when its connection read it
/// ([`crate::state::follow`]), and an outbound request's destination in that config (`None`:
/// to be looked up).
pub struct Held {
    /// The config.
    pub config: Arc<Loaded>,
    /// The destination of an outbound request's original address in it.
    pub target: Option<Target>,
}

/// Drives one request through the steps above. `held`: the config the codec already holds
/// (the fast path parsed and planned the request there); `None`: the config in force.
pub async fn drive<X: Exchange>(
    context: &Context,
    bound: &Bound,
    held: Option<Held>,
    exchange: &mut X,
) -> Result<X::Response, Failure> {
    match bound {
        Bound::Outbound(original) => {
            let sending = outbound(context, *original, held, exchange).await?;
            attempts::send(context, sending, exchange).await
        }
        Bound::Inbound(inbound) => {
            let port = inbound.app.endpoint.addr.port();
            let caller = inbound.caller.as_ref();
            match held {
                Some(held) => admit::check_in(&held.config.table, caller, port, exchange.access()),
                None => admit::check(context, caller, port, exchange.access()),
            }?;
            let _in_flight = inbound.app.endpoint.stats.start();
            exchange.send(&inbound.app, None).await
        }
    }
}

/// Steps 1 to 5 of an outbound request: its plan, endpoint, backend and retry rule (taken
/// from the config, which is let go).
async fn outbound<X: Exchange>(
    context: &Context,
    original: SocketAddr,
    mut held: Option<Held>,
    exchange: &mut X,
) -> Result<Sending, Failure> {
    let mut hold_until = None;
    loop {
        let (config, target) = match held.take() {
            Some(Held {
                config,
                target: Some(target),
            }) => (config, target),
            held => {
                let config = match held {
                    Some(held) => held.config,
                    None => context.config.current().ok_or(Failure::NotReady)?,
                };
                // Looked up in this config: a destination's index in another one may differ.
                let target = config
                    .table
                    .lookup(original)
                    .ok_or(Failure::Gone(original))?;
                (config, target)
            }
        };
        let plan = exchange.plan(&config.table, target)?;
        if config.table.endpoints(plan.backend).is_empty() {
            let until = *hold_until.get_or_insert_with(|| Instant::now() + HOLD_FOR_ENDPOINTS);
            if Instant::now() < until {
                let generation = config.generation;
                drop(config);
                context.config.newer_than(generation, until).await;
                continue;
            }
        }
        if let Some(Injected::Abort(status)) = plan.fault {
            return Err(Failure::Abort(status));
        }
        let table = &config.table;
        let picked = decide::pick(table, plan.backend)?;
        let backend = table.destinations[plan.backend.destination].clone();
        // A route's own retry rule wins over its backend's.
        let retry = plan
            .route
            .and_then(|r| {
                table.destinations[target.destination].routes[r]
                    .retries
                    .clone()
            })
            .or_else(|| backend.retries.clone());
        // A route with several backends keeps them (the config, moved) for a retry whose
        // backend has no other endpoint.
        let several = plan.route.filter(|&r| {
            table.destinations[target.destination].routes[r]
                .backends
                .len()
                > 1
        });
        let alternatives = several.map(|route| attempts::Alternatives {
            config,
            dialled: target,
            route,
        });
        return Ok(Sending {
            plan,
            picked,
            backend,
            retry,
            alternatives,
        });
    }
}
