//! Step 6 of an outbound request ([`super::drive()`]): its attempts. Each is admitted by the
//! backend's circuit breaker, counted in flight to its endpoint and bounded by the per-try
//! timeout within the request's deadline; its outcome goes to the endpoint's outlier state;
//! then [`retry::decide`] says whether the request goes once more, to another endpoint (a
//! failover when nothing was sent; a retry, taken from the budget, under the retry policy).
//!
//! A request that succeeds at once costs, beyond the send: the breaker's two atomic
//! operations, and with a retry policy a budget deposit and a copy of the request kept
//! (in the fast path's reused buffer), with outlier detection an atomic load or two.

use std::sync::Arc;

use tokio::time::Instant;

use super::decide::{self, Injected, Picked, Plan};
use super::exchange::{Deadline, Exchange};
use super::failure::Failure;
use crate::h1::message::is_idempotent;
use crate::policy::outlier;
use crate::policy::retry::{self, Attempted, Outcome, RetryRule, Verdict};
use crate::policy::routing::CompiledDestination;
use crate::state::context::Context;
use crate::telemetry::resilience::Again;

/// An outbound request ready for its attempts: what the config said, kept without the config.
pub struct Sending {
    /// Its plan.
    pub plan: Plan,
    /// The first attempt's endpoint.
    pub picked: Picked,
    /// The backend destination (its endpoints, policy and live numbers).
    pub backend: Arc<CompiledDestination>,
    /// The retry rule that applies, if any.
    pub retry: Option<Arc<RetryRule>>,
}

/// The attempts of one outbound request, until one stands.
pub async fn send<X: Exchange>(
    context: &Context,
    sending: Sending,
    exchange: &mut X,
) -> Result<X::Response, Failure> {
    let Sending {
        plan,
        mut picked,
        backend,
        retry,
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
    let policy = &backend.policy;
    let mut attempted = Attempted {
        retries: 0,
        failovers: 0,
        idempotent: false,
        replayable: false,
        out_of_time: false,
    };
    // Only a retry reads these: a request without a retry policy pays none of it.
    if retry.is_some() {
        attempted.idempotent = exchange.access().is_some_and(|a| is_idempotent(a.method));
        backend.state.budget.deposit(retry::budget_second());
        attempted.replayable = exchange.keep_for_replay().await?;
    }
    loop {
        let max = policy.circuit_breaker.max_requests;
        let Some(_slot) = backend.state.admit(max) else {
            counters.overloaded();
            return Err(Failure::Overloaded {
                name: backend.name.clone(),
                max,
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
            Err(failure) => Outcome::Failed(failure.kind()),
        };
        if let Some(settings) = &policy.outlier_detection {
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
        match retry::decide(retry.as_deref(), outcome, attempted) {
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
        picked = decide::pick_in(&backend, plan.backend.port, Some(avoid))?;
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
