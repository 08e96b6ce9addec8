//! The end of a pod: what the proxy does from SIGTERM on ([`Drain`]). Connections are told to
//! go elsewhere — HTTP/1.1 responses carry `Connection: close` and their connections close
//! after them, idle keep-alive connections close at once, HTTP/2 connections get GOAWAY and
//! finish the streams they have — while in-flight requests finish. The inbound listener keeps
//! accepting only while the application still does (both got SIGTERM at once, as without
//! native sidecars; with a native sidecar the application has stopped before the proxy is
//! told), so that a caller whose endpoint list still names this pod is served or refused at
//! once, never left half-way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// The drain state of a proxy, and the application ports it has seen.
#[derive(Debug)]
pub struct Drain {
    draining: AtomicBool,
    started: watch::Sender<bool>,
    /// A bit per port: the application ports inbound connections went to.
    app_ports: Box<[AtomicU64]>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            draining: AtomicBool::new(false),
            started: watch::channel(false).0,
            app_ports: (0..1024).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Drain {
    /// Starts the drain (SIGTERM): every connection is told, once.
    pub fn start(&self) {
        self.draining.store(true, Ordering::Release);
        self.started.send_replace(true);
    }

    /// Whether the drain has started: one atomic load, for every response.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A receiver whose `wait_for(|d| *d)` ends when the drain starts (taken once per
    /// connection).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.started.subscribe()
    }

    /// Notes that an inbound connection goes to the application's `port` (a load, and a write
    /// only the first time).
    pub fn saw_app_port(&self, port: u16) {
        let (word, bit) = (&self.app_ports[usize::from(port / 64)], 1u64 << (port % 64));
        if word.load(Ordering::Relaxed) & bit == 0 {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// The application ports inbound connections went to.
    pub fn app_ports(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        for (index, word) in self.app_ports.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let bit = bits.trailing_zeros() as u16;
                ports.push(index as u16 * 64 + bit);
                bits &= bits - 1;
            }
        }
        ports
    }
}

/// Whether the application still accepts connections on one of `ports` (on loopback, each
/// tried for at most `patience`).
pub async fn application_listens(ports: &[u16], patience: Duration) -> bool {
    for &port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_stream)) = tokio::time::timeout(patience, connect).await {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_remembered_once_each_in_order() {
        let drain = Drain::default();
        for port in [8080, 80, 65535, 8080, 0, 63, 64] {
            drain.saw_app_port(port);
        }
        assert_eq!(drain.app_ports(), vec![0, 63, 64, 80, 8080, 65535]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_drain_is_seen_by_a_waiting_connection_and_by_the_flag() {
        let drain = Drain::default();
        let mut started = drain.subscribe();
        assert!(!drain.is_draining());
        drain.start();
        assert!(drain.is_draining());
        let seen = tokio::time::timeout(Duration::from_secs(1), started.wait_for(|d| *d)).await;
        assert!(seen.is_ok_and(|r| r.is_ok()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_application_listens_until_its_listener_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let patience = Duration::from_millis(200);
        assert!(application_listens(&[port], patience).await);
        drop(listener);
        assert!(!application_listens(&[port], patience).await);
        assert!(!application_listens(&[], patience).await, "no port known");
    }
}
