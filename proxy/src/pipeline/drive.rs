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
use std::time::Duration;

use tokio::time::Instant;

use super::admit;
use super::attempts::{self, Sending};
use super::decide::{self, Injected, Picked, Plan};
use super::failure::Failure;
use crate::policy::authz::{Caller, HttpAccess};
use crate::policy::routing::{Table, Target};
use crate::state::context::Context;
use crate::state::reload::Loaded;
use crate::telemetry::metrics::Direction;

/// How long a request to a backend with no endpoint listed yet waits for a config that lists
/// one before it fails with 503 (Linkerd queues such requests for up to 3 s too): the endpoint
/// list lags pod readiness by the operator's write and the kubelet's volume sync.
pub const HOLD_FOR_ENDPOINTS: Duration = Duration::from_secs(3);

/// When a request's time is up, and what it was (to name it in the failure).
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// The instant.
    pub at: Instant,
    /// The timeout it came from.
    pub timeout: Duration,
}

impl Deadline {
    /// `future`, or [`Failure::Timeout`] at the deadline if there is one.
    pub async fn bound<T>(
        deadline: Option<Self>,
        future: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.at, future)
                .await
                .unwrap_or(Err(Failure::Timeout(deadline.timeout))),
            None => future.await,
        }
    }
}

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

/// What the driver needs from a codec for one request.
pub trait Exchange {
    /// What a successful send yields (a response head, or the end of an opaque connection).
    type Response;

    /// The request's method and path, which authorization may decide on; `None` for an
    /// opaque connection.
    fn access(&self) -> Option<HttpAccess<'_>>;

    /// The plan of an outbound request in `table`, where it is bound for `target`.
    fn plan(&mut self, table: &Table, target: Target) -> Result<Plan, Failure>;

    /// Sends the request to `peer`; the deadline, when set, bounds the send and the response
    /// head. A failure to connect leaves the request unsent, to go to another endpoint.
    fn send(
        &mut self,
        peer: &Picked,
        deadline: Option<Deadline>,
    ) -> impl Future<Output = Result<Self::Response, Failure>>;

    /// The status of a response and, for gRPC, the `grpc-status` of a trailers-only one: what
    /// retries and outlier detection judge; `None` for the end of an opaque connection.
    fn answered(response: &Self::Response) -> Option<(u16, Option<u8>)>;

    /// Keeps the whole request (its body up to
    /// [`REPLAY_BODY_LIMIT`](crate::policy::retry::REPLAY_BODY_LIMIT)) so that it can be sent
    /// again; whether it could. Asked before the first attempt, only when a retry policy applies.
    fn keep_for_replay(&mut self) -> impl Future<Output = Result<bool, Failure>>;

    /// Readies the request to go again after an attempt: `discarded` is that attempt's
    /// response, if it had one (dropped, its connection pooled when it can be). Whether it
    /// can go again (a request hyper's client consumed, with no copy kept, cannot).
    fn rewind(&mut self, discarded: Option<Self::Response>) -> bool;
}

/// Drives one request through the steps above. `held` is the config the caller already holds
/// and the destination of an outbound request in it (the fast path parsed and planned the
/// request there); `None`: the config in force.
pub async fn drive<X: Exchange>(
    context: &Context,
    bound: &Bound,
    held: Option<(Arc<Loaded>, Target)>,
    exchange: &mut X,
) -> Result<X::Response, Failure> {
    match bound {
        Bound::Outbound(original) => {
            let sending = outbound(context, *original, held, exchange).await?;
            attempts::send(context, sending, exchange).await
        }
        Bound::Inbound(inbound) => {
            let port = inbound.app.endpoint.addr.port();
            admit::check(context, inbound.caller.as_ref(), port, exchange.access())?;
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
    mut held: Option<(Arc<Loaded>, Target)>,
    exchange: &mut X,
) -> Result<Sending, Failure> {
    let mut hold_until = None;
    loop {
        let (config, target) = match held.take() {
            Some(held) => held,
            None => {
                let config = context.config.current().ok_or(Failure::NotReady)?;
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
        return Ok(Sending {
            plan,
            picked,
            backend,
            retry,
        });
    }
}
