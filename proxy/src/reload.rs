//! Hot reload of `proxy.json`. The kubelet updates a mounted ConfigMap by writing a new
//! `..<timestamp>` directory and swapping the `..data` symlink, so the file's own name never
//! changes and may briefly point at a half-written state. The watcher therefore compares the
//! file's *content* every [`POLL`] (cheap: one small read), waits until a change has held still for
//! [`SETTLE`], then parses and validates it whole. A valid document replaces the current one
//! atomically (readers hold an `Arc` of the old one until they finish); an invalid one is refused,
//! logged with the field at fault, and counted, and the last good config stays in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use braid_proxy_config::ProxyConfig;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// How often the file is read.
pub const POLL: Duration = Duration::from_millis(500);
/// How long a change must hold still before it is loaded.
pub const SETTLE: Duration = Duration::from_millis(200);

/// A config in force.
#[derive(Debug)]
pub struct Loaded {
    /// The document.
    pub config: ProxyConfig,
    /// SHA-256 of the file, hex.
    pub hash: String,
    /// 1 for the first config loaded, then one more per reload.
    pub generation: u64,
}

/// The current config and the reload counters, shared by the data path and the admin server.
#[derive(Debug)]
pub struct ConfigState {
    current: watch::Sender<Option<Arc<Loaded>>>,
    /// Files refused since start.
    pub reload_errors: AtomicU64,
    /// Why the last file was refused, if the last attempt failed.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Default for ConfigState {
    fn default() -> Self {
        Self {
            current: watch::channel(None).0,
            reload_errors: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
        }
    }
}

impl ConfigState {
    /// The config in force, if one was ever loaded.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every swap.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Loaded>>> {
        self.current.subscribe()
    }

    /// Parses `bytes` and, when valid, puts it in force. Returns the error otherwise.
    pub fn offer(&self, bytes: &[u8]) -> Result<u64, String> {
        match ProxyConfig::from_json(bytes) {
            Ok(config) => {
                let generation = self.current().map_or(1, |c| c.generation + 1);
                let hash = Sha256::digest(bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                self.current.send_replace(Some(Arc::new(Loaded {
                    config,
                    hash,
                    generation,
                })));
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(generation)
            }
            Err(error) => {
                self.reload_errors.fetch_add(1, Ordering::Relaxed);
                let message = format!("proxy.json refused, keeping the last good config: {error}");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
                Err(message)
            }
        }
    }
}

/// Watches `path` forever, offering every settled change to `state`.
pub async fn watch_file(path: PathBuf, state: Arc<ConfigState>) {
    let mut seen: Option<Vec<u8>> = None;
    loop {
        if let Ok(bytes) = tokio::fs::read(&path).await
            && seen.as_ref() != Some(&bytes)
        {
            tokio::time::sleep(SETTLE).await;
            let settled = tokio::fs::read(&path).await.ok();
            if settled.as_ref() == Some(&bytes) {
                match state.offer(&bytes) {
                    Ok(generation) => {
                        eprintln!("braid-proxy: config generation {generation} in force")
                    }
                    Err(message) => eprintln!("braid-proxy: {message}"),
                }
                seen = Some(bytes);
            }
            continue;
        }
        tokio::time::sleep(POLL).await;
    }
}
