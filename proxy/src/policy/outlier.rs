//! Outlier ejection: an endpoint that fails `consecutiveErrors` times in a row (5xx, no
//! answer, cannot be reached) is ejected for `baseEjectionTime × ejections so far` (capped at
//! [`MAX_EJECTION`]), never more than `maxEjectionPercent` of its Service port's endpoints at
//! once (one at least when the percentage allows any). When its time is up it comes back on
//! probation: its next failure ejects it again at once, for longer; a success ends the
//! probation, and each further base ejection time it stays in takes one off its count.
//!
//! The state of an endpoint ([`Health`]) is a few atomics kept with its other live numbers, so
//! it survives reloads; the transitions are pure functions of a [`HealthState`] and the clock
//! ([`on_failure`], [`on_success`]), unit-tested over a simulated clock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use braid_proxy_config::OutlierDetection;

/// The longest ejection (Envoy's default `max_ejection_time`).
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

/// An endpoint's outlier state at one moment (times in ms on [`now_ms`]'s clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthState {
    /// Failures in a row.
    pub consecutive: u32,
    /// Ejections that count towards the next one's length.
    pub ejections: u32,
    /// Ejected until then; 0: in.
    pub ejected_until: u64,
    /// When it last came back, or last had its count lowered.
    pub returned_at: u64,
    /// Back from an ejection, not yet proven by a success.
    pub probation: bool,
}

impl HealthState {
    /// Whether it is ejected at `now`.
    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until > now
    }
}

/// How long ejection number `ejections` (1 for the first) lasts.
pub fn ejection_time(base: Duration, ejections: u32) -> Duration {
    base.saturating_mul(ejections.max(1))
        .min(MAX_EJECTION.max(base))
}

/// Whether one more of `total` endpoints may be ejected while `ejected` are.
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    let max_percent = max_percent as usize;
    max_percent > 0 && (ejected == 0 || (ejected + 1) * 100 <= max_percent * total)
}

/// The state after a failure at `now`; `may_eject` is asked only when the failure would eject.
pub fn on_failure(
    state: HealthState,
    now: u64,
    settings: &OutlierDetection,
    may_eject: impl FnOnce() -> bool,
) -> HealthState {
    let mut next = state;
    if state.is_ejected(now) {
        // A request that was under way when it was ejected: nothing more to learn.
        return next;
    }
    next.consecutive = state.consecutive.saturating_add(1);
    let due = state.probation || next.consecutive >= settings.consecutive_errors;
    if due && may_eject() {
        next.ejections = state.ejections.saturating_add(1);
        let length = ejection_time(
            Duration::from_millis(settings.base_ejection_ms),
            next.ejections,
        );
        next.ejected_until = now + length.as_millis() as u64;
        next.returned_at = next.ejected_until;
        next.consecutive = 0;
        next.probation = true;
    }
    next
}

/// The state after a success at `now`.
pub fn on_success(state: HealthState, now: u64, settings: &OutlierDetection) -> HealthState {
    let mut next = state;
    next.consecutive = 0;
    next.probation = false;
    if state.ejections > 0
        && !state.is_ejected(now)
        && now >= state.returned_at + settings.base_ejection_ms
    {
        next.ejections = state.ejections - 1;
        next.returned_at = now;
    }
    next
}

/// Milliseconds on the ejections' clock (1 at its start, so that 0 means "not ejected").
pub fn now_ms() -> u64 {
    crate::policy::rate_limit::now_ns() / 1_000_000 + 1
}

/// An endpoint's outlier state, shared by every config that lists it.
#[derive(Debug, Default)]
pub struct Health {
    consecutive: AtomicU32,
    ejections: AtomicU32,
    ejected_until: AtomicU64,
    returned_at: AtomicU64,
    probation: AtomicU32,
}

impl Health {
    /// Its state now.
    pub fn state(&self) -> HealthState {
        HealthState {
            consecutive: self.consecutive.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            ejected_until: self.ejected_until.load(Ordering::Relaxed),
            returned_at: self.returned_at.load(Ordering::Relaxed),
            probation: self.probation.load(Ordering::Relaxed) != 0,
        }
    }

    fn store(&self, state: HealthState) {
        self.consecutive.store(state.consecutive, Ordering::Relaxed);
        self.ejections.store(state.ejections, Ordering::Relaxed);
        self.ejected_until
            .store(state.ejected_until, Ordering::Relaxed);
        self.returned_at.store(state.returned_at, Ordering::Relaxed);
        self.probation
            .store(u32::from(state.probation), Ordering::Relaxed);
    }

    /// Whether it is ejected now: one atomic load while it never was.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    /// Records a failed attempt; when it ejected the endpoint, until when.
    pub fn failed(
        &self,
        settings: &OutlierDetection,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<u64> {
        let now = now_ms();
        let before = self.state();
        let after = on_failure(before, now, settings, may_eject);
        self.store(after);
        (after.ejections > before.ejections).then_some(after.ejected_until)
    }

    /// Records a successful attempt (a write only when there is something to forget).
    pub fn succeeded(&self, settings: &OutlierDetection) {
        let before = self.state();
        if before.consecutive == 0 && !before.probation && before.ejections == 0 {
            return;
        }
        self.store(on_success(before, now_ms(), settings));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierDetection {
        OutlierDetection {
            consecutive_errors: 3,
            base_ejection_ms: 1_000,
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_eject_for_the_base_time_then_the_endpoint_returns() {
        let s = settings();
        let mut state = HealthState::default();
        for now in [10, 20] {
            state = on_failure(state, now, &s, || true);
            assert!(!state.is_ejected(now), "{state:?}");
        }
        state = on_failure(state, 30, &s, || true);
        assert!(state.is_ejected(30));
        assert!(state.is_ejected(1_029));
        assert!(!state.is_ejected(1_030), "back after the base time");
        assert_eq!(state.ejections, 1);
    }

    #[test]
    fn a_success_resets_the_count_of_failures_in_a_row() {
        let s = settings();
        let mut state = HealthState::default();
        state = on_failure(state, 1, &s, || true);
        state = on_failure(state, 2, &s, || true);
        state = on_success(state, 3, &s);
        state = on_failure(state, 4, &s, || true);
        assert!(!state.is_ejected(4));
        assert_eq!(state.consecutive, 1);
    }

    #[test]
    fn a_returned_endpoint_that_fails_again_is_ejected_at_once_and_for_longer() {
        let s = settings();
        let mut state = HealthState::default();
        for now in 1..=3 {
            state = on_failure(state, now, &s, || true);
        }
        let back = 1_003;
        assert!(!state.is_ejected(back));
        state = on_failure(state, back, &s, || true);
        assert!(state.is_ejected(back), "probation: one failure ejects");
        assert_eq!(
            state.ejected_until,
            back + 2_000,
            "second ejection: twice the base"
        );
        // Capped.
        assert_eq!(
            ejection_time(Duration::from_secs(30), 100),
            MAX_EJECTION,
            "ejections are capped"
        );
    }

    #[test]
    fn a_proven_endpoint_earns_its_count_back_one_base_time_at_a_time() {
        let s = settings();
        let mut state = HealthState::default();
        for now in 1..=3 {
            state = on_failure(state, now, &s, || true);
        }
        let back = 1_003;
        state = on_success(state, back, &s);
        assert!(!state.probation);
        assert_eq!(state.ejections, 1, "too soon to forget");
        state = on_success(state, back + 1_000, &s);
        assert_eq!(state.ejections, 0);
        // Ejected again later, it starts from the base time again.
        for now in 5_000..5_003 {
            state = on_failure(state, now, &s, || true);
        }
        assert_eq!(state.ejected_until, 5_002 + 1_000);
    }

    #[test]
    fn a_failure_that_may_not_eject_leaves_the_endpoint_in() {
        let s = settings();
        let mut state = HealthState::default();
        for now in 1..=5 {
            state = on_failure(state, now, &s, || false);
        }
        assert!(!state.is_ejected(5));
        assert_eq!(state.consecutive, 5, "it stays due");
    }

    #[test]
    fn max_ejection_percent_bounds_how_many_are_out_at_once() {
        // Two endpoints at 50%: one may go, not both.
        assert!(may_eject(0, 2, 50));
        assert!(!may_eject(1, 2, 50));
        // Three at 50%: one (100 ≤ 150), not two (200 > 150).
        assert!(may_eject(0, 3, 50));
        assert!(!may_eject(1, 3, 50));
        // Ten at 30%: three.
        assert!(may_eject(2, 10, 30));
        assert!(!may_eject(3, 10, 30));
        // One endpoint at 10%: at least one may always go when the percentage allows any.
        assert!(may_eject(0, 1, 10));
        assert!(!may_eject(0, 4, 0), "0% ejects nothing");
    }
}
