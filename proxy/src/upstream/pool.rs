//! The idle pools: connections by endpoint and verified identity, most recently used first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::policy::balance::lock;

/// Idle HTTP/1.1 connections kept per endpoint.
const IDLE_PER_ENDPOINT: usize = 512;

/// Connections by endpoint, each with the identity it was verified as.
pub(super) type Pool<S> = HashMap<SocketAddr, Vec<(Option<String>, S)>>;

/// Idle connections by endpoint, each with the identity it was verified as (a connection is
/// reused only for that identity) and the time it went idle.
pub(super) type IdlePool<S> = Mutex<Pool<(S, Instant)>>;

/// Takes the most recently pooled connection to `addr` verified as `identity` that `usable`
/// accepts (those it refuses are dropped): with its identity and how long it sat idle.
pub(super) fn take_idle<S>(
    pool: &IdlePool<S>,
    addr: SocketAddr,
    identity: Option<&str>,
    mut usable: impl FnMut(&mut S) -> bool,
) -> Option<(Option<String>, S, Duration)> {
    let mut pool = lock(pool);
    let idle = pool.get_mut(&addr)?;
    while let Some(i) = idle.iter().rposition(|(id, _)| id.as_deref() == identity) {
        let (id, (mut connection, since)) = idle.swap_remove(i);
        if usable(&mut connection) {
            return Some((id, connection, since.elapsed()));
        }
    }
    None
}

/// A connection the pools keep.
pub(super) trait Pooled {
    /// Tells a request waiting for a connection to its destination, if one waits, that this
    /// one went idle. (Called under the pool's lock: a request that starts waiting looks in
    /// the pool after it counts itself, so either it finds the connection or is told.)
    fn went_idle(&self);
}

/// Pools `connection` to `addr`, verified as `identity`, unless the endpoint has
/// [`IDLE_PER_ENDPOINT`] already.
pub(super) fn put_idle<S: Pooled>(
    pool: &IdlePool<S>,
    addr: SocketAddr,
    identity: Option<String>,
    connection: S,
) {
    let mut pool = lock(pool);
    let idle = pool.entry(addr).or_default();
    if idle.len() < IDLE_PER_ENDPOINT {
        connection.went_idle();
        idle.push((identity, (connection, Instant::now())));
    }
}

/// Closes the connections of `pool` idle for `idle` or longer.
pub(super) fn close_idle_in<S>(pool: &IdlePool<S>, idle: Duration) {
    for connections in lock(pool).values_mut() {
        connections.retain(|(_, (_, since))| since.elapsed() < idle);
    }
}

/// Takes one idle connection of `pool` that `belongs` accepts, the longest idle first, out of
/// the pool (the caller drops it, outside the pool's lock).
pub(super) fn evict_one<S>(pool: &IdlePool<S>, belongs: impl Fn(&S) -> bool) -> Option<S> {
    let mut pool = lock(pool);
    let (connections, i) = pool.values_mut().find_map(|connections| {
        let i = connections.iter().position(|(_, (c, _))| belongs(c))?;
        Some((connections, i))
    })?;
    Some(connections.remove(i).1.0)
}
