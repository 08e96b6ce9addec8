//! The pure decisions of a request, in the order the driver ([`super::drive()`]) takes them: the
//! route and its weighted backend, the fault to inject, the endpoint. Randomness is passed in
//! ([`Rolls`]), so each decision is a unit test; nothing here looks anything up by name or
//! takes a lock: the compiled table holds what a request needs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use braid_proxy_config::Fault;

use super::failure::Failure;
use crate::policy::balance;
use crate::policy::routing::{CompiledEndpoint, RequestFacts, Table, Target};

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
    }
}

/// The route `request` takes to `target`, a backend drawn by weight, its timeout and fault.
pub fn plan(
    table: &Table,
    target: Target,
    request: &RequestFacts<'_>,
    rolls: Rolls,
) -> Result<Plan, Failure> {
    let Some(route) = table.route(target, request) else {
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
    })
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
    let destination = &table.destinations[backend.destination];
    let endpoints = table.endpoints(backend);
    if endpoints.is_empty() {
        return Err(Failure::NoEndpoints {
            name: destination.name.clone(),
            port: backend.port,
        });
    }
    let cursor = destination.cursor.fetch_add(1, Ordering::Relaxed);
    let chosen = balance::pick(
        destination.policy.load_balancer,
        endpoints.len(),
        |i| endpoints[i].stats.load(),
        cursor,
        fastrand::usize(..),
        fastrand::usize(..),
    );
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
}
