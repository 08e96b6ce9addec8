//! Step 6 of an outbound request ([`super::drive()`]): its attempts. Each is admitted by the
//! backend's circuit breaker (`maxRequests` here; its connection limits where the codec gets
//! a connection, [`crate::upstream`]), counted in flight to its endpoint and bounded by the per-try
//! timeout within the request's deadline; its outcome goes to the endpoint's outlier state;
//! then [`retry::decide`] says whether the request goes once more, to another endpoint (a
//! failover when nothing was sent; a retry, taken from the budget, under the retry policy) —
//! of another backend of its route when its own has no other.
//!
//! A request that succeeds at once costs, beyond the send: the breaker's two atomic
//! operations, and with a retry policy a budget deposit and a copy of the request kept
//! (in the fast path's reused buffer), with outlier detection an atomic load or two.

use std::sync::Arc;

use tokio::time::Instant;

use super::decide::{self, Injected, Picked, Plan};
use super::exchange::{Deadline, Exchange, HOLD_FOR_ENDPOINTS};
use super::failure::{Failure, Kind, Overload};
use crate::h1::message::is_idempotent;
use crate::policy::outlier;
use crate::policy::retry::{self, Attempted, Outcome, RetryRule, Verdict};
use crate::policy::routing::{CompiledDestination, Target};
use crate::state::context::Context;
use crate::state::reload::Loaded;
use crate::telemetry::resilience::Again;

/// An outbound request ready for its attempts: what the config said, kept without the config
/// (but for [`Alternatives`]).
pub struct Sending {
    /// Its plan.
    pub plan: Plan,
    /// The first attempt's endpoint.
    pub picked: Picked,
    /// The backend destination (its endpoints, policy and live numbers).
    pub backend: Arc<CompiledDestination>,
    /// The retry rule that applies, if any.
    pub retry: Option<Arc<RetryRule>>,
    /// The other backends of its route, when it has several.
    pub alternatives: Option<Alternatives>,
}

/// The backends of a request's route, for an attempt after one whose backend has no other
/// endpoint to try (a canary's one pod): the config is kept for them, for as long as the
/// request lasts, only when the route has more than one backend.
pub struct Alternatives {
    /// The config the request was planned in.
    pub config: Arc<Loaded>,
    /// The destination the application dialled, whose route it is.
    pub dialled: Target,
    /// The route's index in it.
    pub route: usize,
}

impl Alternatives {
    /// Another backend than destination `not`, by weight, with its destination.
    fn other(&self, not: usize) -> Option<(Arc<CompiledDestination>, Target)> {
        let table = &self.config.table;
        let route = &table.destinations[self.dialled.destination].routes[self.route];
        let target = decide::other_backend(route, self.dialled.port, not, fastrand::u32(..))?;
        Some((table.destinations[target.destination].clone(), target))
    }
}

/// The attempts of one outbound request, until one stands.
pub async fn send<X: Exchange>(
    context: &Context,
    sending: Sending,
    exchange: &mut X,
) -> Result<X::Response, Failure> {
    let Sending {
        mut plan,
        mut picked,
        mut backend,
        retry,
        alternatives,
    } = sending;
    if let Some(Injected::Delay(delay)) = plan.fault {
        tokio::time::sleep(delay).await;
    }
    // The deadline runs from here: connecting, sending and the response head, of every try.
    let deadline = plan.timeout.map(|timeout| Deadline {
        at: Instant::now() + timeout,
        timeout,
    });
    let counters = &context.metrics.resilience;
    let mut attempted = Attempted {
        retries: 0,
        failovers: 0,
        idempotent: false,
        replayable: false,
        out_of_time: false,
    };
    // Whether the request waited once already for a config with another endpoint.
    let mut waited = false;
    // Only a retry reads these: a request without a retry policy pays none of it.
    if retry.is_some() {
        attempted.idempotent = exchange.access().is_some_and(|a| is_idempotent(a.method));
        backend.state.budget.deposit(retry::budget_second());
        attempted.replayable = exchange.keep_for_replay().await?;
    }
    loop {
        let max = backend.policy.circuit_breaker.max_requests;
        let Some(slot) = backend.state.admit(max) else {
            counters.overloaded();
            return Err(Failure::Overloaded {
                name: backend.name.clone(),
                limit: Overload::Requests(max),
            });
        };
        let try_deadline = per_try(deadline, retry.as_deref());
        let result = {
            let _in_flight = picked.endpoint.stats.start();
            exchange.send(&picked, try_deadline).await
        };
        let outcome = match &result {
            Ok(response) => match X::answered(response) {
                Some((status, grpc)) => Outcome::Answered { status, grpc },
                None => return result,
            },
            Err(failure) => {
                let kind = failure.kind();
                // Past maxPendingRequests, or no connection free under maxConnections in time.
                if kind == Kind::Overloaded {
                    counters.overloaded();
                }
                Outcome::Failed(kind)
            }
        };
        if let Some(settings) = &backend.policy.outlier_detection {
            judge(
                context,
                &backend,
                plan.backend.port,
                &picked,
                outcome,
                settings,
            );
        }
        // Only an outcome that may go again needs the clock.
        let may_go_again = retry.is_some() || matches!(outcome, Outcome::Failed(_));
        attempted.out_of_time = may_go_again && deadline.is_some_and(|d| Instant::now() >= d.at);
        let verdict = retry::decide(retry.as_deref(), outcome, attempted);
        match verdict {
            Verdict::Done => return result,
            Verdict::FailOver => {
                attempted.failovers += 1;
                counters.again(Again::Failover);
            }
            Verdict::Retry => {
                let Some(rule) = retry.as_deref() else {
                    return result;
                };
                let second = retry::budget_second();
                let (percent, floor) = (rule.budget_percent, rule.budget_min_per_second);
                if !backend.state.budget.withdraw(second, percent, floor) {
                    counters.again(Again::BudgetExhausted);
                    return result;
                }
                attempted.retries += 1;
                counters.again(Again::Retry);
            }
        }
        let avoid = picked.endpoint.addr;
        let (response, failure) = match result {
            Ok(response) => (Some(response), None),
            Err(failure) => (None, Some(failure)),
        };
        if !exchange.rewind(response) {
            return Err(failure.unwrap_or(Failure::ClientGone));
        }
        // The attempt is over: its slot goes back before the next one takes its own.
        drop(slot);
        picked = decide::pick_in(&backend, plan.backend.port, Some(avoid))?;
        if picked.endpoint.addr != avoid {
            continue;
        }
        // No other endpoint in this backend: another backend of the route, if it has one;
        // else, when the endpoint is going away (unreachable, or its application stopped),
        // the config that lists its successor, for a while: during a rollout the endpoint
        // list lags the pods.
        if let Some((other, target)) = alternatives
            .as_ref()
            .and_then(|a| a.other(plan.backend.destination))
        {
            picked = decide::pick_in(&other, target.port, None)?;
            (backend, plan.backend) = (other, target);
        } else if verdict == Verdict::FailOver && !waited {
            waited = true;
            let hold = Instant::now() + HOLD_FOR_ENDPOINTS;
            let until = deadline.map_or(hold, |d| d.at.min(hold));
            let port = plan.backend.port;
            if let Some(newer) = successor(context, &backend.name, port, avoid, until).await {
                picked = decide::pick_in(&newer, port, Some(avoid))?;
                backend = newer;
            }
        }
    }
}

/// Destination `name` as the config in force lists it, or as the next configs do until `until`
/// at most, once it has an endpoint on `port` other than `avoid`. (The config in force first:
/// it may be newer than the one the request was planned in.)
async fn successor(
    context: &Context,
    name: &str,
    port: u16,
    avoid: std::net::SocketAddr,
    until: Instant,
) -> Option<Arc<CompiledDestination>> {
    loop {
        let config = context.config.current();
        let generation = config.as_ref().map_or(0, |c| c.generation);
        let found = config
            .as_ref()
            .and_then(|c| c.table.destinations.iter().find(|d| d.name == name))
            .filter(|d| d.endpoints(port).iter().any(|e| e.addr != avoid));
        if let Some(destination) = found {
            return Some(destination.clone());
        }
        if !context.config.newer_than(generation, until).await {
            return None;
        }
    }
}

/// The deadline of one try: the per-try timeout's, within the request's.
fn per_try(deadline: Option<Deadline>, rule: Option<&RetryRule>) -> Option<Deadline> {
    let per_try = rule
        .and_then(|r| r.per_try_timeout)
        .map(|timeout| Deadline {
            at: Instant::now() + timeout,
            timeout,
        });
    match (deadline, per_try) {
        (Some(whole), Some(one)) => Some(if one.at < whole.at { one } else { whole }),
        (whole, one) => whole.or(one),
    }
}

/// Records an attempt's outcome in its endpoint's outlier state; a failure may eject it.
fn judge(
    context: &Context,
    backend: &CompiledDestination,
    port: u16,
    picked: &Picked,
    outcome: Outcome,
    settings: &braid_proxy_config::OutlierDetection,
) {
    let health = &picked.endpoint.stats.health;
    match outcome {
        Outcome::Answered { status, .. } if status < 500 => health.succeeded(settings),
        _ if outcome.is_endpoint_error() => {
            let endpoints = backend.endpoints(port);
            let may_eject = || {
                let ejected = endpoints
                    .iter()
                    .filter(|e| e.stats.health.is_ejected())
                    .count();
                outlier::may_eject(ejected, endpoints.len(), settings.max_ejection_percent)
            };
            if let Some(until) = health.failed(settings, may_eject) {
                backend.state.ejected_until(until);
                context.metrics.resilience.ejected();
                tracing::warn!(
                    "{}: endpoint {} ejected for {} ms ({} failures in a row)",
                    backend.name,
                    picked.endpoint.addr,
                    until.saturating_sub(outlier::now_ms()),
                    settings.consecutive_errors,
                );
            }
        }
        // The client's fault, or the proxy's: nothing about the endpoint.
        _ => {}
    }
}
