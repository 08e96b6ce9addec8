//! The pure decisions of a request, in the order the driver ([`super::drive()`]) takes them: the
//! route and its weighted backend, the fault to inject, the endpoint. Randomness is passed in
//! ([`Rolls`]), so each decision is a unit test; nothing here looks anything up by name or
//! takes a lock: the compiled table holds what a request needs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use braid_proxy_config::Fault;

use super::failure::Failure;
use crate::policy::balance;
use crate::policy::routing::{
    CompiledDestination, CompiledEndpoint, CompiledRoute, RequestFacts, Table, Target,
};

/// A fault to inject into one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// Answer with this status instead of forwarding.
    Abort(u16),
    /// Wait this long before forwarding.
    Delay(Duration),
}

/// What the config says for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Where it goes: the destination itself or a backend of its route.
    pub backend: Target,
    /// Its timeout (connecting, sending, the response head), if any.
    pub timeout: Option<Duration>,
    /// The fault to inject, if any.
    pub fault: Option<Injected>,
    /// The index of the route it matched in the dialled destination, if any (its retry rule
    /// wins over the backend's).
    pub route: Option<usize>,
}

/// The random numbers one request's decisions draw.
#[derive(Clone, Copy, Debug)]
pub struct Rolls {
    /// Chooses a weighted backend: uniform over `u32`.
    pub weight: u32,
    /// Decides an abort fault: `0..100`.
    pub abort: u32,
    /// Decides a delay fault: `0..100`.
    pub delay: u32,
}

impl Rolls {
    /// Fresh random numbers.
    pub fn draw() -> Self {
        Self {
            weight: fastrand::u32(..),
            abort: fastrand::u32(0..100),
            delay: fastrand::u32(0..100),
        }
    }
}

/// The plan of an opaque TCP connection, or of a request to a destination without routes:
/// the destination itself, with its policy's timeout and fault.
pub fn plain(table: &Table, target: Target, rolls: Rolls) -> Plan {
    let policy = &table.destinations[target.destination].policy;
    Plan {
        backend: target,
        timeout: policy.request_timeout_ms.map(Duration::from_millis),
        fault: fault(policy.fault.as_ref(), rolls),
        route: None,
    }
}

/// The route `request` takes to `target`, a backend drawn by weight, its timeout and fault.
pub fn plan(
    table: &Table,
    target: Target,
    request: &RequestFacts<'_>,
    rolls: Rolls,
) -> Result<Plan, Failure> {
    let Some((index, route)) = table.route(target, request) else {
        return Ok(plain(table, target, rolls));
    };
    let policy = &table.destinations[target.destination].policy;
    let total = route.total_weight();
    // A uniform draw in `0..total` (Lemire's multiply-shift, no division).
    let roll = ((u64::from(rolls.weight) * u64::from(total)) >> 32) as u32;
    let backend = (total > 0)
        .then(|| route.backend(roll, target.port))
        .flatten()
        .ok_or_else(|| Failure::NoBackend(table.destinations[target.destination].name.clone()))?;
    Ok(Plan {
        backend,
        timeout: route
            .timeout_ms
            .or(policy.request_timeout_ms)
            .map(Duration::from_millis),
        fault: fault(route.fault.as_ref(), rolls),
        route: Some(index),
    })
}

/// Another backend of `route` than destination `not` (the one a failed attempt went to, with
/// no other endpoint to try), drawn by weight among the others (`roll` uniform over `u32`);
/// `None` when no other backend has weight. A canary's one failing pod is retried on the
/// stable version rather than on itself.
pub fn other_backend(
    route: &CompiledRoute,
    dialled_port: u16,
    not: usize,
    roll: u32,
) -> Option<Target> {
    let total = route.total_weight_except(Some(not));
    let roll = ((u64::from(roll) * u64::from(total)) >> 32) as u32;
    (total > 0)
        .then(|| route.backend_except(roll, dialled_port, Some(not)))
        .flatten()
}

/// The fault `fault` injects for these rolls: an abort first, else a delay.
pub fn fault(fault: Option<&Fault>, rolls: Rolls) -> Option<Injected> {
    let fault = fault?;
    if let Some(abort) = &fault.abort
        && rolls.abort < abort.percent
    {
        return Some(Injected::Abort(abort.status));
    }
    match &fault.delay {
        Some(delay) if rolls.delay < delay.percent => {
            Some(Injected::Delay(Duration::from_millis(delay.duration_ms)))
        }
        _ => None,
    }
}

/// An endpoint chosen for a request.
#[derive(Clone, Debug)]
pub struct Picked {
    /// The endpoint (it outlives the config it came from).
    pub endpoint: Arc<CompiledEndpoint>,
    /// How long connecting to it may take.
    pub connect_timeout: Duration,
}

/// Picks an endpoint of `backend` with its destination's balancer.
pub fn pick(table: &Table, backend: Target) -> Result<Picked, Failure> {
    pick_in(&table.destinations[backend.destination], backend.port, None)
}

/// Picks an endpoint of `destination`'s `port` with its balancer, skipping ejected endpoints
/// and `avoid` (the endpoint a retry comes from) while others are left; when every endpoint is
/// ejected, all are candidates again (better a likely failure than a certain one).
pub fn pick_in(
    destination: &CompiledDestination,
    port: u16,
    avoid: Option<SocketAddr>,
) -> Result<Picked, Failure> {
    let endpoints = destination.endpoints(port);
    if endpoints.is_empty() {
        return Err(Failure::NoEndpoints {
            name: destination.name.clone(),
            port,
        });
    }
    let cursor = destination.cursor.fetch_add(1, Ordering::Relaxed);
    let balancer = destination.policy.load_balancer;
    let (r1, r2) = (fastrand::usize(..), fastrand::usize(..));
    let narrowed = (avoid.is_some() && endpoints.len() > 1) || destination.state.may_have_ejected();
    let chosen = if narrowed {
        let among = |skip_avoided: bool| -> Vec<usize> {
            (0..endpoints.len())
                .filter(|&i| {
                    let avoided = skip_avoided && Some(endpoints[i].addr) == avoid;
                    !(avoided || endpoints[i].stats.health.is_ejected())
                })
                .collect()
        };
        let mut eligible = among(true);
        if eligible.is_empty() {
            eligible = among(false);
        }
        if eligible.is_empty() {
            eligible = (0..endpoints.len()).collect();
        }
        let load = |j: usize| endpoints[eligible[j]].stats.load();
        eligible[balance::pick(balancer, eligible.len(), load, cursor, r1, r2)]
    } else {
        let load = |i: usize| endpoints[i].stats.load();
        balance::pick(balancer, endpoints.len(), load, cursor, r1, r2)
    };
    Ok(Picked {
        endpoint: endpoints[chosen].clone(),
        connect_timeout: Duration::from_millis(destination.policy.connect_timeout_ms),
    })
}

#[cfg(test)]
mod tests {
    use braid_proxy_config::{AbortFault, DelayFault};

    use super::*;

    fn rolls(weight: u32, abort: u32, delay: u32) -> Rolls {
        Rolls {
            weight,
            abort,
            delay,
        }
    }

    #[test]
    fn an_abort_wins_over_a_delay_and_each_applies_below_its_percentage() {
        let both = Fault {
            abort: Some(AbortFault {
                percent: 10,
                status: 503,
            }),
            delay: Some(DelayFault {
                percent: 50,
                duration_ms: 200,
            }),
        };
        assert_eq!(
            fault(Some(&both), rolls(0, 9, 0)),
            Some(Injected::Abort(503))
        );
        assert_eq!(
            fault(Some(&both), rolls(0, 10, 49)),
            Some(Injected::Delay(Duration::from_millis(200)))
        );
        assert_eq!(fault(Some(&both), rolls(0, 10, 50)), None);
        assert_eq!(fault(None, rolls(0, 0, 0)), None);
    }

    #[test]
    fn a_retry_draws_another_backend_by_weight_among_the_others() {
        let route =
            CompiledRoute::with_backends(vec![(0, None, 80), (1, None, 20), (2, Some(9), 0)]);
        // Destination 1 failed: only destination 0 has weight among the others.
        for roll in [0, u32::MAX / 2, u32::MAX] {
            assert_eq!(
                other_backend(&route, 80, 1, roll),
                Some(Target {
                    destination: 0,
                    port: 80
                })
            );
        }
        // Destination 0 failed: 1 is the only other with weight (2 has none).
        assert_eq!(
            other_backend(&route, 80, 0, u32::MAX).map(|t| t.destination),
            Some(1)
        );
        let alone = CompiledRoute::with_backends(vec![(0, None, 100)]);
        assert_eq!(other_backend(&alone, 80, 0, 7), None, "no other backend");
        // Weights among the others: 30 and 10 of 40, so a quarter of the draws go to 3.
        let three = CompiledRoute::with_backends(vec![(0, None, 60), (2, None, 30), (3, None, 10)]);
        // The middle of each of 400 equal slices of the draws.
        let slice = |i: u64| (((2 * i + 1) << 32) / 800) as u32;
        let to_three = (0..400)
            .filter(|&i| other_backend(&three, 80, 0, slice(i)).map(|t| t.destination) == Some(3))
            .count();
        assert_eq!(to_three, 100);
    }
}
