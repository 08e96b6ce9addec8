//! What a connection keeps of the config in force between its requests, so that a request
//! repeats no work its connection already did: the config is taken again, and the original
//! address looked up again, only when a newer config was swapped in.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use super::reload::{ConfigState, Loaded};
use crate::policy::routing::Target;

/// A connection's hold on the config in force: the one its last request used, held weakly (an
/// idle connection never keeps a replaced config alive), and the destination the connection's
/// original address belongs to in it. Owned by the connection (the HTTP/1.1 fast path, whose
/// requests come one after the other): a request pays one atomic load while no newer config
/// was swapped in, and no lock or lookup by address.
#[derive(Debug, Default)]
pub struct Follow {
    generation: u64,
    config: Weak<Loaded>,
    target: Option<Target>,
}

impl Follow {
    /// The config in force and, for a connection to `original` (outbound), the destination it
    /// belongs to in that config (`None`: not meshed there).
    pub fn current(
        &mut self,
        state: &ConfigState,
        original: Option<SocketAddr>,
    ) -> Option<(Arc<Loaded>, Option<Target>)> {
        if state.generation() == self.generation
            && let Some(config) = self.config.upgrade()
        {
            return Some((config, self.target));
        }
        let config = state.current()?;
        self.target = original.and_then(|original| config.table.lookup(original));
        self.generation = config.generation;
        self.config = Arc::downgrade(&config);
        Some((config, self.target))
    }
}

/// The destination of a connection's original address in the config of a given generation,
/// shared by the concurrent requests of one connection (hyper's path, whose HTTP/2 streams run
/// as tasks of their own): one atomic word, so a request looks the address up only after a
/// swap. Destinations past index 65,535 are looked up every time.
#[derive(Debug, Default)]
pub struct TargetMemo(AtomicU64);

impl TargetMemo {
    /// `original`'s destination in `config`.
    pub fn target(&self, config: &Loaded, original: SocketAddr) -> Option<Target> {
        let remembered = self.0.load(Ordering::Relaxed);
        if remembered != 0 && remembered >> 32 == config.generation & 0xffff_ffff {
            return Some(Target {
                destination: ((remembered >> 16) & 0xffff) as usize,
                port: (remembered & 0xffff) as u16,
            });
        }
        let target = config.table.lookup(original)?;
        if let Ok(destination) = u16::try_from(target.destination) {
            let packed = ((config.generation & 0xffff_ffff) << 32)
                | (u64::from(destination) << 16)
                | u64::from(target.port);
            self.0.store(packed, Ordering::Relaxed);
        }
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cluster_ip: &str) -> Vec<u8> {
        serde_json::json!({
            "version": 1,
            "workload": {"namespace": "ns", "name": "w", "identity": "spiffe://t/ns/ns/sa/w"},
            "inbound": {"mtlsMode": "PERMISSIVE"},
            "destinations": [
                {"name": "a.ns", "clusterIps": ["10.96.0.1"],
                 "ports": [{"port": 80, "protocol": "http",
                            "endpoints": [{"ip": "10.0.0.1", "port": 8080}]}]},
                {"name": "b.ns", "clusterIps": [cluster_ip],
                 "ports": [{"port": 80, "protocol": "http",
                            "endpoints": [{"ip": "10.0.0.2", "port": 8080}]}]}],
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_connection_takes_the_config_again_only_after_a_swap() {
        let state = ConfigState::default();
        let original: SocketAddr = "10.96.0.2:80".parse().expect("addr");
        let mut follow = Follow::default();
        assert!(
            follow.current(&state, Some(original)).is_none(),
            "no config yet"
        );

        state.offer(&config("10.96.0.2")).expect("valid");
        let (first, target) = follow.current(&state, Some(original)).expect("config");
        assert_eq!(target.map(|t| t.destination), Some(1));
        let (again, _) = follow.current(&state, Some(original)).expect("config");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same config, not taken again"
        );
        drop((first, again));

        // The address moves to another Service: the next request sees it, in the new config.
        state.offer(&config("10.96.0.3")).expect("valid");
        let (second, target) = follow.current(&state, Some(original)).expect("config");
        assert_eq!(second.generation, 2);
        assert_eq!(target, None, "no longer meshed");
        assert_eq!(
            follow.current(&state, None).map(|(c, _)| c.generation),
            Some(2)
        );
    }

    #[test]
    fn an_idle_connection_does_not_keep_a_replaced_config_alive() {
        let state = ConfigState::default();
        state.offer(&config("10.96.0.2")).expect("valid");
        let mut follow = Follow::default();
        let (first, _) = follow.current(&state, None).expect("config");
        let weak = Arc::downgrade(&first);
        drop(first);
        state.offer(&config("10.96.0.3")).expect("valid");
        assert!(
            weak.upgrade().is_none(),
            "the connection held it only weakly"
        );
    }

    #[test]
    fn the_memo_remembers_a_destination_per_generation() {
        let state = ConfigState::default();
        let memo = TargetMemo::default();
        let original: SocketAddr = "10.96.0.2:80".parse().expect("addr");
        state.offer(&config("10.96.0.2")).expect("valid");
        let first = state.current().expect("config");
        let found = memo.target(&first, original).expect("meshed");
        assert_eq!((found.destination, found.port), (1, 80));
        assert_eq!(memo.target(&first, original), Some(found), "remembered");
        state.offer(&config("10.96.0.3")).expect("valid");
        let second = state.current().expect("config");
        assert_eq!(memo.target(&second, original), None, "looked up again");
        assert_eq!(memo.target(&first, original), Some(found));
    }
}
