//! Retries: when a failed attempt goes again ([`decide`], pure), and the budget that keeps
//! retries from multiplying an outage ([`Budget`]: retries may add `percent` of the requests of
//! the last ten seconds plus a floor per second, Linkerd's model and defaults).
//!
//! Two kinds of second attempt:
//! - **failover**: the attempt failed before any byte of the request left the proxy (connect
//!   refused or timed out, TLS, a peer with the wrong identity), or the peer's proxy said its
//!   application did not get it (stopping, or not started: [`Kind::Unprocessed`]; HTTP/2's
//!   `REFUSED_STREAM`). Always allowed, for any
//!   method and with no retry policy, up to [`FAILOVERS`] times, on another endpoint: nothing
//!   reached a peer, and this is what keeps a rollout clean while the endpoint list lags.
//! - **retry** (a retry policy is set): the failure is one of its conditions; the request is
//!   idempotent (RFC 9110 §9.2.2), or the peer said it did not process it (gRPC
//!   `UNAVAILABLE`); its body was kept for replay; attempts are left; and the budget allows.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use braid_proxy_config::RetryPolicy;

use crate::pipeline::Kind;

/// Attempts on other endpoints after failures that sent nothing.
pub const FAILOVERS: u32 = 2;

/// Request bodies up to this are kept for replay; a request with a larger one is not retried
/// (it may still fail over: nothing of it was sent).
pub const REPLAY_BODY_LIMIT: u64 = 64 * 1024;

/// The retry budget's window, in seconds (Linkerd's TTL).
pub const BUDGET_WINDOW_SECS: u64 = 10;

/// gRPC's `UNAVAILABLE`: the service did not take the call; safe to retry for any method.
pub const GRPC_UNAVAILABLE: u8 = 14;

/// A retry policy compiled for the data path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryRule {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Limit of each attempt, within the request's timeout.
    pub per_try_timeout: Option<Duration>,
    on_5xx: bool,
    on_gateway_error: bool,
    on_connect_failure: bool,
    on_reset: bool,
    on_statuses: Vec<u16>,
    /// Retries may add this percentage of requests…
    pub budget_percent: u32,
    /// …plus this many per second.
    pub budget_min_per_second: u32,
}

impl RetryRule {
    /// The rule a `proxy.json` retry policy says.
    pub fn compile(policy: &RetryPolicy) -> Self {
        Self {
            attempts: policy.attempts,
            per_try_timeout: policy.per_try_timeout_ms.map(Duration::from_millis),
            on_5xx: policy.on_5xx,
            on_gateway_error: policy.on_gateway_error,
            on_connect_failure: policy.on_connect_failure,
            on_reset: policy.on_reset,
            on_statuses: policy.on_statuses.clone(),
            budget_percent: policy.budget_percent,
            budget_min_per_second: policy.budget_min_per_second,
        }
    }

    /// Whether an attempt that ended so is one of the rule's conditions.
    fn covers(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Answered { status, grpc } => {
                grpc == Some(GRPC_UNAVAILABLE)
                    || (self.on_5xx && (500..600).contains(&status))
                    || (self.on_gateway_error && matches!(status, 502..=504))
                    || self.on_statuses.contains(&status)
            }
            Outcome::Failed(kind) if sent_nothing(kind) => self.on_connect_failure,
            // No response at all: a reset or close, and a per-try timeout (a 504 of its own).
            Outcome::Failed(Kind::Reset) => self.on_reset || self.on_5xx,
            Outcome::Failed(Kind::Timeout) => self.on_5xx || self.on_gateway_error,
            Outcome::Failed(_) => false,
        }
    }
}

/// How an attempt ended, as retries and outlier detection see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The peer answered with this status (and, for gRPC, a `grpc-status` in the head).
    Answered {
        /// The HTTP status.
        status: u16,
        /// The gRPC status of a trailers-only response.
        grpc: Option<u8>,
    },
    /// The attempt failed.
    Failed(Kind),
}

impl Outcome {
    /// Whether it counts against the endpoint (outlier detection): a 5xx, or a failure to
    /// reach it or to get an answer from it.
    pub fn is_endpoint_error(self) -> bool {
        match self {
            Self::Answered { status, .. } => status >= 500,
            Self::Failed(kind) => sent_nothing(kind) || matches!(kind, Kind::Reset | Kind::Timeout),
        }
    }
}

/// Whether a failure of this kind left the request unprocessed: it failed before any byte of
/// it left the proxy, or the peer's proxy said that its application did not get it.
pub fn sent_nothing(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::ConnectRefused
            | Kind::ConnectTimeout
            | Kind::ConnectFailed
            | Kind::Tls
            | Kind::IdentityMismatch
            | Kind::Unprocessed
    )
}

/// What is known of the request when an attempt has ended.
#[derive(Clone, Copy, Debug)]
pub struct Attempted {
    /// Retries made so far (failovers not counted).
    pub retries: u32,
    /// Failovers made so far.
    pub failovers: u32,
    /// Its method may be sent twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    /// Its whole body is kept, so it can be sent again.
    pub replayable: bool,
    /// The request's own deadline has passed.
    pub out_of_time: bool,
}

/// What to do after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The outcome stands.
    Done,
    /// Try another endpoint: nothing was sent (no budget needed).
    FailOver,
    /// Retry, if the budget allows.
    Retry,
}

/// The decision after an attempt that ended with `outcome`, under `rule` (if the request has
/// a retry policy).
pub fn decide(rule: Option<&RetryRule>, outcome: Outcome, attempted: Attempted) -> Verdict {
    if attempted.out_of_time {
        return Verdict::Done;
    }
    if let Outcome::Failed(kind) = outcome
        && sent_nothing(kind)
        && attempted.failovers < FAILOVERS
    {
        return Verdict::FailOver;
    }
    let Some(rule) = rule else {
        return Verdict::Done;
    };
    let told_unprocessed = matches!(
        outcome,
        Outcome::Answered {
            grpc: Some(GRPC_UNAVAILABLE),
            ..
        }
    ) || matches!(outcome, Outcome::Failed(kind) if sent_nothing(kind));
    if attempted.retries < rule.attempts
        && rule.covers(outcome)
        && attempted.replayable
        && (attempted.idempotent || told_unprocessed)
    {
        Verdict::Retry
    } else {
        Verdict::Done
    }
}

/// The retry budget of one destination: requests and retries per second over the last
/// [`BUDGET_WINDOW_SECS`] seconds, in a ring of per-second slots (atomics: no lock; a slot is
/// reset by the first request of its new second). Kept across reloads with the destination.
#[derive(Debug, Default)]
pub struct Budget {
    slots: [Slot; BUDGET_WINDOW_SECS as usize],
}

#[derive(Debug, Default)]
struct Slot {
    /// The second this slot counts (1 + seconds since the clock's start; 0: never used).
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl Budget {
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % BUDGET_WINDOW_SECS) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts a request (its first attempt) at `second`.
    pub fn deposit(&self, second: u64) {
        self.slot(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget at `second` if `percent` of the window's requests plus
    /// `min_per_second` per second of the window leave room for it.
    pub fn withdraw(&self, second: u64, percent: u32, min_per_second: u32) -> bool {
        let current = self.slot(second);
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let at = slot.second.load(Ordering::Relaxed);
            if at != 0 && at + BUDGET_WINDOW_SECS > second {
                requests += u64::from(slot.requests.load(Ordering::Relaxed));
                retries += u64::from(slot.retries.load(Ordering::Relaxed));
            }
        }
        let allowed =
            requests * u64::from(percent) / 100 + u64::from(min_per_second) * BUDGET_WINDOW_SECS;
        if retries < allowed {
            current.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

/// Seconds on the budgets' clock (1 at the clock's start, so that 0 means an unused slot).
pub fn budget_second() -> u64 {
    crate::policy::rate_limit::now_ns() / 1_000_000_000 + 1
}

#[cfg(test)]
mod tests;
