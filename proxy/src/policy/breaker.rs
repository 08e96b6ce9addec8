//! What a client proxy keeps per destination across reloads: the circuit breaker's count of
//! requests in flight and the retry budget ([`super::retry::Budget`]). Past `maxRequests` in
//! flight a request fails at once (503, [`crate::pipeline::Failure::Overloaded`]) and is not
//! retried: a destination that is overloaded is told so by fewer requests, not more.
//!
//! `maxConnections` and `maxPendingRequests` are in `proxy.json` but not enforced yet: this
//! proxy opens a connection per concurrent HTTP/1.1 request and shares one per endpoint for
//! HTTP/2, so requests never wait in a queue for a connection, and `maxRequests` bounds both.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::balance::lock;
use super::retry::Budget;

/// The live numbers of one destination.
#[derive(Debug, Default)]
pub struct DestinationState {
    in_flight: AtomicU32,
    /// Its retry budget.
    pub budget: Budget,
    /// Until when one of its endpoints may be ejected (ms on the ejections' clock; 0: none
    /// ever was): balancing skips the ejection check of every endpoint while none can be.
    ejections_until: AtomicU64,
}

/// Whether a request may start while `in_flight` are under way and `max` are allowed.
pub fn admits(in_flight: u32, max: u32) -> bool {
    in_flight < max
}

impl DestinationState {
    /// Counts a request in flight until the guard is dropped; `None` (nothing counted) when
    /// `max` are in flight already.
    pub fn admit(&self, max: u32) -> Option<RequestSlot<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if admits(before, max) {
            Some(RequestSlot { state: self })
        } else {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Notes that one of its endpoints is ejected until `until`.
    pub fn ejected_until(&self, until: u64) {
        self.ejections_until.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether an endpoint of it may be ejected now (one atomic load while none ever was).
    pub fn may_have_ejected(&self) -> bool {
        let until = self.ejections_until.load(Ordering::Relaxed);
        until != 0 && until > super::outlier::now_ms()
    }
}

/// A request counted in flight to a destination.
#[derive(Debug)]
pub struct RequestSlot<'a> {
    state: &'a DestinationState,
}

impl Drop for RequestSlot<'_> {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every destination's live numbers, by name: a config compiles its destinations with the
/// entries found here, so that the counts survive reloads and nothing is looked up per request.
#[derive(Debug, Default)]
pub struct DestinationRegistry {
    states: Mutex<HashMap<String, Arc<DestinationState>>>,
}

impl DestinationRegistry {
    /// The numbers of destination `name`, made when first asked for.
    pub fn state(&self, name: &str) -> Arc<DestinationState> {
        let mut states = lock(&self.states);
        if let Some(state) = states.get(name) {
            return state.clone();
        }
        states.entry(name.to_string()).or_default().clone()
    }

    /// Forgets every destination not in `keep`.
    pub fn forget_all_but(&self, keep: &HashSet<&str>) {
        lock(&self.states).retain(|name, _| keep.contains(name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_max_requests_a_request_is_refused_and_a_finished_one_frees_its_slot() {
        let state = DestinationState::default();
        let first = state.admit(2).expect("1 of 2");
        let second = state.admit(2).expect("2 of 2");
        assert!(state.admit(2).is_none(), "a third is refused");
        assert_eq!(state.in_flight(), 2, "the refused one is not counted");
        drop(first);
        let third = state.admit(2).expect("a slot is free again");
        drop((second, third));
        assert_eq!(state.in_flight(), 0);
        assert!(admits(0, 1) && !admits(1, 1) && !admits(0, 0));
    }

    #[test]
    fn a_destination_keeps_its_numbers_while_listed() {
        let registry = DestinationRegistry::default();
        let held = registry.state("payment.shop");
        let slot = held.admit(10);
        assert_eq!(registry.state("payment.shop").in_flight(), 1);
        drop(slot);
        registry.forget_all_but(&HashSet::from(["order.shop"]));
        assert!(!Arc::ptr_eq(&held, &registry.state("payment.shop")));
    }
}
