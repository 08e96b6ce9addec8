//! What both data listeners (inbound 15006, outbound 15001) do before a connection is theirs:
//! listen with a queue deep enough for a burst ([`bind`]), accept it, refuse it at once when it
//! would loop back into the proxy or when the listener is at its connection cap, recover its
//! original destination, and back off when accepting fails (out of file descriptors: the
//! backlog waits instead of a spinning loop). The decisions are pure functions; [`serve`] is
//! the thin loop around them.

pub mod inbound;
pub mod outbound;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::state::context::Context;
use crate::telemetry::metrics::{Direction, Refusal};

/// The first pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`].
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest pause after failed accepts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Connections the kernel completes and holds for a listener until the proxy accepts them.
///
/// tokio's `TcpListener::bind` asks for 128. A burst of new connections (an app opening its
/// pool, 500 slow clients at once) overflows that while the proxy's one thread is busy, and
/// the kernel then drops the callers' SYNs, which are resent only 1 s, then 3 s, after the
/// first. The kernel caps the queue at `net.core.somaxconn` (4096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Descriptors kept free of the connection cap: the admin port, config and identity files,
/// pooled upstream connections beyond one per client connection.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// A listener on `addr` with a queue of [`LISTEN_BACKLOG`] (in a tokio runtime).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restarted proxy binds again at once, next to its old connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The original destination of a connection, when it must be refused.
///
/// A connection aimed at one of the proxy's own ports on this pod would come back to the proxy
/// (inbound: forwarded to `127.0.0.1:<port>`, that is to a listener of its own; outbound: a
/// loopback or local address). Inbound, every original destination is this pod's, so the port
/// alone decides; outbound, the address must be this pod's too (another pod's 15006 is a
/// legitimate destination).
pub fn loops_back(
    direction: Direction,
    original: SocketAddr,
    local: SocketAddr,
    own_ports: &[u16],
) -> bool {
    own_ports.contains(&original.port())
        && match direction {
            Direction::Inbound => true,
            Direction::Outbound => {
                let ip = original.ip();
                ip.is_loopback() || ip.is_unspecified() || ip == local.ip()
            }
        }
}

/// The connections one listener may hold: the configured cap, lowered so that both listeners
/// at their caps (a client descriptor and an upstream one each) leave
/// [`RESERVED_DESCRIPTORS`] of `descriptor_limit` free.
pub fn connection_cap(configured: u32, descriptor_limit: u64) -> u32 {
    let affordable = descriptor_limit.saturating_sub(RESERVED_DESCRIPTORS) / 4;
    configured
        .min(u32::try_from(affordable).unwrap_or(u32::MAX))
        .max(1)
}

/// The soft limit on open files in `/proc/self/limits` text (`unlimited`: `u64::MAX`).
pub fn descriptor_limit(proc_limits: &str) -> Option<u64> {
    let line = proc_limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// The next pause after an accept failed, `previous` being the last one (none yet: `None`).
pub fn next_backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(ACCEPT_BACKOFF_MIN, |p| (p * 2).min(ACCEPT_BACKOFF_MAX))
}

/// The address a redirected connection was meant for (SO_ORIGINAL_DST); for one that was not
/// redirected, the address it was sent to.
pub fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let addr = match stream.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    addr.as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}

/// Accepts connections on `listener` until it fails, and serves each accepted one with
/// `handle(context, stream, peer, original)`, which returns the bytes received from and sent
/// to the client.
pub async fn serve<H, F>(
    listener: TcpListener,
    direction: Direction,
    context: Arc<Context>,
    handle: H,
) where
    H: Fn(Arc<Context>, TcpStream, SocketAddr, SocketAddr) -> F,
    F: Future<Output = (u64, u64)> + Send + 'static,
{
    let mut backoff = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = None;
                accepted
            }
            Err(error) => {
                // EMFILE and friends: the connection waits in the backlog until a descriptor
                // is free again; retrying at once would spin.
                context.metrics.accept_failed(direction);
                let pause = next_backoff(backoff);
                tracing::warn!("{direction:?} accept failed ({error}); retrying in {pause:?}");
                backoff = Some(pause);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let cap = connection_cap(context.limits().max_connections, context.descriptor_limit);
        if context.metrics.open(direction) >= u64::from(cap) {
            context.metrics.refused(direction, Refusal::Limit);
            continue;
        }
        let Ok(original) = original_destination(&stream) else {
            continue;
        };
        let local = stream.local_addr().unwrap_or(original);
        if loops_back(direction, original, local, &context.own_ports) {
            context.metrics.refused(direction, Refusal::Loop);
            tracing::debug!(
                "{direction:?} connection from {peer} to {original} refused: it would loop"
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        let mut open = Open::new(context.clone(), direction);
        let served = handle(context.clone(), stream, peer, original);
        tokio::spawn(async move { open.record(served.await) });
    }
}

/// A connection counted open until it is dropped, even when its task is cancelled.
struct Open {
    context: Arc<Context>,
    direction: Direction,
    received: u64,
    sent: u64,
}

impl Open {
    fn new(context: Arc<Context>, direction: Direction) -> Self {
        context.metrics.opened(direction);
        Self {
            context,
            direction,
            received: 0,
            sent: 0,
        }
    }
}

impl Open {
    fn record(&mut self, (received, sent): (u64, u64)) {
        self.received = received;
        self.sent = sent;
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let metrics = &self.context.metrics;
        metrics.closed(self.direction, self.received, self.sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: [u16; 3] = braid_sidecar::OWN_PORTS;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn a_connection_to_the_proxys_own_ports_is_refused_on_either_side() {
        let pod = addr("10.244.0.7:15006");
        for port in OWN {
            let original = SocketAddr::new(pod.ip(), port);
            assert!(
                loops_back(Direction::Inbound, original, pod, &OWN),
                "{port}"
            );
            let loopback = SocketAddr::new([127, 0, 0, 1].into(), port);
            assert!(loops_back(
                Direction::Outbound,
                loopback,
                addr("127.0.0.1:15001"),
                &OWN
            ));
        }
        assert!(!loops_back(
            Direction::Inbound,
            addr("10.244.0.7:8080"),
            pod,
            &OWN
        ));
        // Another pod's inbound port is a destination like any other.
        let other_pod = addr("10.244.0.9:15006");
        assert!(!loops_back(
            Direction::Outbound,
            other_pod,
            addr("127.0.0.1:15001"),
            &OWN
        ));
        assert!(loops_back(
            Direction::Outbound,
            addr("10.244.0.7:15006"),
            pod,
            &OWN
        ));
    }

    #[test]
    fn the_cap_leaves_descriptors_for_the_admin_port() {
        assert_eq!(connection_cap(10_000, 1_048_576), 10_000);
        assert_eq!(connection_cap(10_000, 20_000), (20_000 - 256) / 4);
        assert_eq!(connection_cap(10_000, 1_024), 192);
        assert_eq!(connection_cap(10_000, 100), 1, "never zero");
        assert_eq!(connection_cap(50, u64::MAX), 50);
    }

    #[test]
    fn the_descriptor_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             95000                95000                processes\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(descriptor_limit(limits), Some(20_000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(descriptor_limit(unlimited), Some(u64::MAX));
        assert_eq!(descriptor_limit("nothing here"), None);
    }

    #[test]
    fn accept_failures_back_off_exponentially_up_to_a_second() {
        let mut pause = next_backoff(None);
        assert_eq!(pause, ACCEPT_BACKOFF_MIN);
        for _ in 0..20 {
            pause = next_backoff(Some(pause));
        }
        assert_eq!(pause, ACCEPT_BACKOFF_MAX);
    }
}
