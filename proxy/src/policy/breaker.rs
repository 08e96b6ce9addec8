//! What a client proxy keeps per destination across reloads: the circuit breaker's counts
//! (requests in flight, connections open, requests waiting for one) and the retry budget
//! ([`super::retry::Budget`]). Past `maxRequests` in flight a request fails at once (503,
//! [`crate::pipeline::Failure::Overloaded`]) and is not retried: a destination that is
//! overloaded is told so by fewer requests, not more.
//!
//! Connections, idle or busy, count against `maxConnections` for as long as they are open (a
//! [`ConnectionSlot`] lives with each). A request that needs a new connection past it waits
//! for one to go idle or close, as one of at most `maxPendingRequests`; past those it is
//! refused as overloaded too. The waiting itself is the upstream side's
//! ([`crate::upstream`]): this module only counts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::sync::Notify;

use super::balance::lock;
use super::retry::Budget;

/// The live numbers of one destination.
#[derive(Debug, Default)]
pub struct DestinationState {
    in_flight: AtomicU32,
    /// Connections open to its endpoints.
    connections: AtomicU32,
    /// Requests waiting for a connection.
    pending: AtomicU32,
    /// Wakes a waiting request when a connection closes or goes idle.
    connection_freed: Notify,
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

    /// Counts a new connection open until the slot is dropped; `None` (nothing counted) when
    /// `max` are open already.
    pub fn open_connection(self: &Arc<Self>, max: u32) -> Option<ConnectionSlot> {
        let before = self.connections.fetch_add(1, Ordering::Relaxed);
        if admits(before, max) {
            Some(ConnectionSlot(Some(self.clone())))
        } else {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }

    /// Counts a new connection open past any limit (an HTTP/2 endpoint's one shared
    /// connection, without which no request could reach it).
    pub fn open_connection_anyway(self: &Arc<Self>) -> ConnectionSlot {
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionSlot(Some(self.clone()))
    }

    /// Connections open now.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a request waiting for a connection until the guard is dropped; `None` when
    /// `max` wait already.
    pub fn wait_for_connection(&self, max: u32) -> Option<PendingSlot<'_>> {
        let before = self.pending.fetch_add(1, Ordering::Relaxed);
        if admits(before, max) {
            Some(PendingSlot { state: self })
        } else {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }

    /// Requests waiting for a connection now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// What a waiting request awaits: a connection closed or gone idle. (Enable it before
    /// checking, so that nothing in between is missed.)
    pub fn connection_freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.connection_freed.notified()
    }

    /// Wakes one waiting request, if any waits: a connection closed or went idle.
    pub fn free_connection(&self) {
        if self.pending.load(Ordering::Relaxed) > 0 {
            self.connection_freed.notify_one();
        }
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

/// A connection counted open to a destination's endpoints (none: a connection no limit
/// applies to, to the application on loopback). Lives as long as the connection: dropped,
/// it wakes a request waiting for one.
#[derive(Debug, Default)]
pub struct ConnectionSlot(Option<Arc<DestinationState>>);

impl ConnectionSlot {
    /// Whether it counts against `state`'s connections.
    pub fn is_of(&self, state: &Arc<DestinationState>) -> bool {
        self.0.as_ref().is_some_and(|own| Arc::ptr_eq(own, state))
    }

    /// The destination it counts against.
    pub fn destination(&self) -> Option<&Arc<DestinationState>> {
        self.0.as_ref()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.connections.fetch_sub(1, Ordering::Relaxed);
            state.free_connection();
        }
    }
}

/// A request counted as waiting for a connection.
#[derive(Debug)]
pub struct PendingSlot<'a> {
    state: &'a DestinationState,
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.state.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A destination's connection limits, as each of its endpoints carries them (from the config
/// in force when the endpoint was compiled).
#[derive(Debug)]
pub struct ConnectionLimits {
    /// The destination, to name it in a refusal.
    pub name: String,
    /// Its `maxConnections`.
    pub max_connections: u32,
    /// Its `maxPendingRequests`.
    pub max_pending: u32,
    /// Its live numbers.
    pub state: Arc<DestinationState>,
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
    fn connections_count_until_closed_and_past_max_none_opens() {
        let state = Arc::new(DestinationState::default());
        let first = state.open_connection(2).expect("1 of 2");
        let second = state.open_connection(2).expect("2 of 2");
        assert!(state.open_connection(2).is_none(), "a third is refused");
        assert_eq!(state.connections(), 2);
        assert!(first.is_of(&state) && !first.is_of(&Arc::default()));
        let forced = state.open_connection_anyway();
        assert_eq!(
            state.connections(),
            3,
            "an HTTP/2 endpoint's one connection counts"
        );
        drop((first, forced));
        let third = state
            .open_connection(2)
            .expect("a closed one frees its slot");
        drop((second, third));
        assert_eq!(state.connections(), 0);
        assert!(ConnectionSlot::default().destination().is_none());
    }

    #[test]
    fn past_max_pending_a_request_does_not_wait() {
        let state = DestinationState::default();
        let first = state.wait_for_connection(1).expect("1 of 1");
        assert!(state.wait_for_connection(1).is_none());
        assert_eq!(state.pending(), 1);
        drop(first);
        assert!(state.wait_for_connection(1).is_some());
        assert!(
            state.wait_for_connection(0).is_none(),
            "0: no request waits"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_connection_wakes_a_waiting_request() {
        let state = Arc::new(DestinationState::default());
        let open = state.open_connection(1).expect("1 of 1");
        let waiting = state.wait_for_connection(1).expect("waits");
        let mut freed = std::pin::pin!(state.connection_freed());
        freed.as_mut().enable();
        drop(open);
        tokio::time::timeout(std::time::Duration::from_secs(5), freed)
            .await
            .expect("woken");
        drop(waiting);
        // With nobody waiting nothing is signalled: a later waiter is not woken by it.
        let open = state.open_connection(1).expect("free");
        drop(open);
        let later = state.connection_freed();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), later)
                .await
                .is_err()
        );
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
