//! Room for a new connection under a destination's `maxConnections`: at once while it has
//! fewer open; else an idle connection of the destination is closed to make room; else the
//! request waits, as one of at most `maxPendingRequests`, for one to go idle (which it may
//! take, when it is to its endpoint) or to close — for the connect timeout at most, since
//! getting a connection is what that bounds. Past the waiting requests, or out of time, it is
//! refused as overloaded ([`UpstreamError::Overloaded`]).

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::UpstreamError;
use crate::pipeline::Overload;
use crate::policy::breaker::{ConnectionLimits, ConnectionSlot, DestinationState};

/// What a request gets for its connection.
pub(super) enum Room<T> {
    /// A pooled connection that went idle while the request waited.
    Reuse(T),
    /// Leave to open a new one, counted by the slot.
    Open(ConnectionSlot),
}

/// Room for a new connection to an endpoint with `limits` (none: no limit applies); while it
/// waits, `reuse` may find a pooled connection to the endpoint gone idle, and `evict_idle`
/// closes one idle connection of the destination, if it has one, to make room.
pub(super) async fn room<T>(
    limits: Option<&ConnectionLimits>,
    wait_at_most: Duration,
    mut reuse: impl FnMut() -> Option<T>,
    mut evict_idle: impl FnMut(&Arc<DestinationState>) -> bool,
) -> Result<Room<T>, UpstreamError> {
    let Some(limits) = limits else {
        return Ok(Room::Open(ConnectionSlot::default()));
    };
    let state = &limits.state;
    let max = limits.max_connections;
    if let Some(slot) = state.open_connection(max) {
        return Ok(Room::Open(slot));
    }
    if evict_idle(state)
        && let Some(slot) = state.open_connection(max)
    {
        return Ok(Room::Open(slot));
    }
    let overloaded = |limit| UpstreamError::Overloaded {
        name: limits.name.clone(),
        limit,
    };
    let Some(_waiting) = state.wait_for_connection(limits.max_pending) else {
        return Err(overloaded(Overload::Pending(limits.max_pending)));
    };
    let started = Instant::now();
    let mut out_of_time = pin!(tokio::time::sleep_until(started + wait_at_most));
    loop {
        // Listening before looking: what frees a connection after the look wakes this.
        let mut freed = pin!(state.connection_freed());
        freed.as_mut().enable();
        if let Some(found) = reuse() {
            return Ok(Room::Reuse(found));
        }
        if let Some(slot) = state.open_connection(max) {
            return Ok(Room::Open(slot));
        }
        if evict_idle(state)
            && let Some(slot) = state.open_connection(max)
        {
            return Ok(Room::Open(slot));
        }
        tokio::select! {
            () = &mut freed => {}
            () = &mut out_of_time => {
                let waited = started.elapsed();
                return Err(overloaded(Overload::Connections { max, waited }));
            }
        }
    }
}

/// Room for a new connection, with no pooled one to take instead.
pub(super) async fn slot(
    limits: Option<&ConnectionLimits>,
    wait_at_most: Duration,
    evict_idle: impl FnMut(&Arc<DestinationState>) -> bool,
) -> Result<ConnectionSlot, UpstreamError> {
    let none = || None::<std::convert::Infallible>;
    match room(limits, wait_at_most, none, evict_idle).await? {
        Room::Open(slot) => Ok(slot),
        Room::Reuse(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: u32, max_pending: u32) -> ConnectionLimits {
        ConnectionLimits {
            name: "payment.shop".into(),
            max_connections,
            max_pending,
            state: Arc::default(),
        }
    }

    fn no_idle() -> Option<()> {
        None
    }

    #[tokio::test(flavor = "current_thread")]
    async fn under_max_a_connection_opens_at_once_and_without_limits_always() {
        let limits = limits(1, 0);
        let never = |_: &Arc<DestinationState>| false;
        let Ok(Room::Open(slot)) = room(Some(&limits), Duration::ZERO, no_idle, never).await else {
            panic!("room for one");
        };
        assert_eq!(limits.state.connections(), 1);
        let refused = room(Some(&limits), Duration::ZERO, no_idle, never).await;
        assert!(
            matches!(
                &refused,
                Err(UpstreamError::Overloaded {
                    limit: Overload::Pending(0),
                    ..
                })
            ),
            "no request may wait: {:?}",
            refused.err()
        );
        drop(slot);
        assert!(matches!(
            room(None, Duration::ZERO, no_idle, never).await,
            Ok(Room::Open(slot)) if slot.destination().is_none()
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_connection_of_the_destination_is_closed_to_make_room() {
        // No request may wait: the idle connection makes room all the same.
        let limits = limits(1, 0);
        let mut idle = limits.state.open_connection(1);
        let evict = |_: &Arc<DestinationState>| idle.take().is_some();
        let found = room(Some(&limits), Duration::ZERO, no_idle, evict).await;
        assert!(matches!(found, Ok(Room::Open(_))), "{:?}", found.err());
        assert_eq!(limits.state.connections(), 1, "the idle one closed");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_waiting_request_takes_a_connection_that_goes_idle_or_closes_or_gives_up() {
        let limits = Arc::new(limits(1, 1));
        let busy = limits.state.open_connection(1).expect("the one");
        let pooled = Arc::new(std::sync::Mutex::new(None::<&str>));
        let waiter = tokio::spawn({
            let (limits, pooled) = (limits.clone(), pooled.clone());
            async move {
                let reuse = || pooled.lock().expect("lock").take();
                let never = |_: &Arc<DestinationState>| false;
                match room(Some(&limits), Duration::from_secs(1), reuse, never).await {
                    Ok(Room::Reuse(found)) => found,
                    _ => "something else",
                }
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(limits.state.pending(), 1, "it waits");
        assert!(
            matches!(
                room(
                    Some(&limits),
                    Duration::from_secs(1),
                    no_idle,
                    |_: &Arc<_>| false
                )
                .await,
                Err(UpstreamError::Overloaded {
                    limit: Overload::Pending(1),
                    ..
                })
            ),
            "a second is refused at once"
        );
        *pooled.lock().expect("lock") = Some("the idle connection");
        limits.state.free_connection();
        assert_eq!(waiter.await.expect("waited"), "the idle connection");

        let waiter = tokio::spawn({
            let limits = limits.clone();
            async move {
                let never = |_: &Arc<DestinationState>| false;
                matches!(
                    room(Some(&limits), Duration::from_secs(1), no_idle, never).await,
                    Ok(Room::Open(_))
                )
            }
        });
        tokio::task::yield_now().await;
        drop(busy);
        assert!(
            waiter.await.expect("waited"),
            "a closed connection makes room"
        );

        let _busy = limits.state.open_connection(1).expect("the one");
        let never = |_: &Arc<DestinationState>| false;
        let given_up = room(Some(&limits), Duration::from_secs(1), no_idle, never).await;
        let Err(UpstreamError::Overloaded {
            limit: Overload::Connections { max: 1, waited },
            ..
        }) = given_up
        else {
            panic!("out of time: {:?}", given_up.err());
        };
        assert_eq!(waited, Duration::from_secs(1));
        assert_eq!(limits.state.pending(), 0);
    }
}
