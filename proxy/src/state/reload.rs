//! Hot reload of `proxy.json` and of the identity files. The kubelet updates a mounted volume by
//! writing a new `..<timestamp>` directory and swapping the `..data` symlink, so the files' own
//! names never change. The watcher therefore compares the files' *content* every [`POLL`]
//! (cheap: small reads). A change read while `..data` named the same directory before and after
//! is one whole set the kubelet wrote, and is taken at once; files written in place (no
//! `..data`) are taken once they held still for [`SETTLE`]. Either is parsed and validated whole.
//! A valid document replaces the current one atomically (readers hold an `Arc` of the old one
//! until they finish); an invalid one is refused, logged with the field at fault, and counted,
//! and the last good config stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use braid_proxy_config::ProxyConfig;

use crate::policy::routing::{Registries, Table};
use crate::tls::identity::{self, Identity};
use tokio::sync::watch;

/// How often the files are read: a new config is in force at most this after the kubelet
/// swapped it in (two small reads ten times a second cost next to nothing).
pub const POLL: Duration = Duration::from_millis(100);
/// How long a change to files written in place (not through the kubelet's `..data` link) must
/// hold still before it is loaded.
pub const SETTLE: Duration = Duration::from_millis(200);

/// The kubelet's link to the directory of the current files, in `dir`; `None` where there is
/// none (files written in place, or a directory that cannot be read).
fn kubelet_data_link(dir: &Path) -> Option<PathBuf> {
    std::fs::read_link(dir.join("..data")).ok()
}

/// What a read of the files is worth, from the kubelet's `..data` link just before and just
/// after it.
#[derive(Debug, PartialEq, Eq)]
enum ReadKind {
    /// The same `..<timestamp>` directory both times: every file came from it, a set the
    /// kubelet wrote whole before it swapped the link in (the link never comes back to a
    /// directory it left), so it can be taken at once.
    Whole,
    /// The kubelet swapped the link during the read: the files may be from two sets; read again.
    Torn,
    /// No link: files written in place may be half-written; take them once they held still.
    InPlace,
}

fn read_kind(before: Option<&Path>, after: Option<&Path>) -> ReadKind {
    match (before, after) {
        (Some(before), Some(after)) if before == after => ReadKind::Whole,
        (None, None) => ReadKind::InPlace,
        _ => ReadKind::Torn,
    }
}

/// A config in force.
#[derive(Debug)]
pub struct Loaded {
    /// The document.
    pub config: ProxyConfig,
    /// The config compiled for the data path.
    pub table: Table,
    /// SHA-256 of the file, hex (of both files' in the split layout:
    /// `braid_proxy_config::split::combined_hash`).
    pub hash: String,
    /// 1 for the first config loaded, then one more per reload.
    pub generation: u64,
    /// Fields of the document this release does not know and ignored (a newer operator's,
    /// see `braid_proxy_config::Read`).
    pub ignored: Vec<String>,
}

/// The current config and the reload counters, shared by the data path and the admin server.
#[derive(Debug)]
pub struct ConfigState {
    current: watch::Sender<Option<Arc<Loaded>>>,
    /// The generation of the config in force (0: none yet), which connections compare with
    /// the one they last used ([`super::follow`]).
    generation: AtomicU64,
    /// The endpoints' and destinations' live numbers and the inbound policy's counters, which
    /// compiled configs hold handles to.
    pub live: Registries,
    /// Files refused since start.
    pub reload_errors: AtomicU64,
    /// Why the last file was refused, if the last attempt failed.
    last_error: std::sync::Mutex<Option<String>>,
    /// Why the file cannot be read, while it cannot.
    read_error: std::sync::Mutex<Option<String>>,
}

impl Default for ConfigState {
    fn default() -> Self {
        Self {
            current: watch::channel(None).0,
            generation: AtomicU64::new(0),
            live: Registries::default(),
            reload_errors: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
            read_error: std::sync::Mutex::new(None),
        }
    }
}

impl ConfigState {
    /// The config in force, if one was ever loaded.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.borrow().clone()
    }

    /// The generation of the config in force; 0 before the first.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A receiver that sees every swap.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Loaded>>> {
        self.current.subscribe()
    }

    /// Waits until a config newer than `generation` is in force, at most until `deadline`;
    /// whether one is. (A request to a destination whose endpoints the config does not list
    /// yet waits here for the next config rather than failing at once.)
    pub async fn newer_than(&self, generation: u64, deadline: tokio::time::Instant) -> bool {
        let mut swaps = self.current.subscribe();
        let newer = |loaded: &Option<Arc<Loaded>>| {
            loaded
                .as_ref()
                .is_some_and(|loaded| loaded.generation > generation)
        };
        tokio::time::timeout_at(deadline, swaps.wait_for(newer))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }

    /// Records that the file cannot be read (`None`: it reads again): shown on `/config` as the
    /// last error, so that the operator can say why this proxy lags.
    pub fn unreadable(&self, error: Option<&str>) {
        *self.read_error.lock().unwrap_or_else(|e| e.into_inner()) =
            error.map(|e| format!("{e}; keeping the last good config"));
    }

    /// Why the file in place is not in force, if it is not: it cannot be read, or it was
    /// refused.
    pub fn last_error(&self) -> Option<String> {
        let unreadable = self.read_error.lock().unwrap_or_else(|e| e.into_inner());
        unreadable.clone().or_else(|| {
            self.last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
    }

    /// Parses `bytes` and, when valid, puts it in force. Returns the error otherwise.
    pub fn offer(&self, bytes: &[u8]) -> Result<u64, String> {
        self.offer_files(bytes, None)
    }

    /// [`Self::offer`] for `proxy.json` and, in the split layout, the `destinations.json`
    /// beside it (`None`: not there).
    pub fn offer_files(&self, bytes: &[u8], destinations: Option<&[u8]>) -> Result<u64, String> {
        let compiled = ProxyConfig::from_files(bytes, destinations)
            .map_err(|e| e.to_string())
            .and_then(|read| {
                Table::compile_with(&read.config, &self.live).map(|table| (read, table))
            });
        match compiled {
            Ok((braid_proxy_config::Read { config, ignored }, table)) => {
                let generation = self.current().map_or(1, |c| c.generation + 1);
                let hash = config.files_hash(bytes, destinations);
                if !ignored.is_empty() {
                    tracing::info!(
                        "proxy.json generation {generation}: ignoring fields this proxy does not \
                         know (a newer operator's): {}",
                        ignored.join(", ")
                    );
                }
                self.current.send_replace(Some(Arc::new(Loaded {
                    config,
                    table,
                    hash,
                    generation,
                    ignored,
                })));
                self.generation.store(generation, Ordering::Release);
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

/// The identity in force and its reload counters.
#[derive(Debug, Default)]
pub struct IdentityState {
    current: std::sync::RwLock<Option<Arc<Identity>>>,
    /// Identity file sets refused since start.
    pub reload_errors: AtomicU64,
}

impl IdentityState {
    /// The identity in force, if one was ever loaded.
    pub fn current(&self) -> Option<Arc<Identity>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads `tls.crt`, `tls.key` and `ca.crt` (in that order) and, when valid, puts them in
    /// force for new handshakes; open connections keep the one they started with.
    pub fn offer(&self, files: &[Vec<u8>]) -> Result<String, String> {
        let [cert, key, ca] = files else {
            return Err("expected tls.crt, tls.key and ca.crt".into());
        };
        match identity::load(cert, key, ca) {
            Ok(identity) => {
                let message = format!(
                    "identity {} in force (expires at {})",
                    identity.spiffe_id, identity.not_after
                );
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(identity));
                Ok(message)
            }
            Err(error) => {
                self.reload_errors.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "identity refused, keeping the last good one: {error}"
                ))
            }
        }
    }
}

/// Watches `path` and the `destinations.json` beside it (optional) forever, offering every
/// change to `state`. The kubelet swaps both files of the projected config volume at once, and
/// a read torn by a swap is read again ([`watch`]).
pub async fn watch_file(path: PathBuf, state: Arc<ConfigState>) {
    let reader = state.clone();
    let destinations = path.with_file_name(braid_proxy_config::split::DESTINATIONS_FILE);
    watch(
        vec![path, destinations],
        1,
        move |files| {
            // A missing optional file reads as empty; a destinations file is never empty.
            let destinations = files.get(1).filter(|f| !f.is_empty()).map(Vec::as_slice);
            state
                .offer_files(&files[0], destinations)
                .map(|generation| format!("config generation {generation} in force"))
        },
        move |error| reader.unreadable(error),
    )
    .await
}

/// Watches `tls.crt`, `tls.key` and `ca.crt` in `dir` forever, offering every change to
/// `state`.
pub async fn watch_identity(dir: PathBuf, state: Arc<IdentityState>) {
    let files = ["tls.crt", "tls.key", "ca.crt"]
        .map(|f| dir.join(f))
        .to_vec();
    let required = files.len();
    watch(
        files,
        required,
        move |contents| state.offer(contents),
        |_| {},
    )
    .await
}

/// Reads `paths` (files of one directory) every [`POLL`]; when their contents changed, calls
/// `offer` with them (in order) and logs its answer: at once when they are one set the kubelet
/// swapped in whole, after they held still for [`SETTLE`] when they are written in place
/// ([`ReadKind`]). The first `required` files are
/// waited for when missing; a missing one after them reads as empty. A file
/// that exists but cannot be read (its volume made unreadable, say) is logged once and passed to
/// `unreadable` (with `None` once it reads again), and the last good contents stay in force.
///
/// The reads block the runtime's one thread for the few microseconds a small file on the
/// kubelet's volume takes; `tokio::fs` would instead keep a pool of blocking threads alive for
/// them, and the proxy is meant to be one thread.
pub async fn watch(
    paths: Vec<PathBuf>,
    required: usize,
    mut offer: impl FnMut(&[Vec<u8>]) -> Result<String, String>,
    mut unreadable: impl FnMut(Option<&str>),
) {
    let read_all = || async {
        let mut contents = Vec::with_capacity(paths.len());
        for (index, path) in paths.iter().enumerate() {
            match std::fs::read(path) {
                Ok(bytes) => contents.push(bytes),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound && index >= required => {
                    contents.push(Vec::new());
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
            }
        }
        Ok(Some(contents))
    };
    let dir = paths
        .first()
        .and_then(|path| path.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut seen: Option<Vec<Vec<u8>>> = None;
    let mut read_error: Option<String> = None;
    loop {
        let before = kubelet_data_link(&dir);
        let read = read_all().await;
        let kind = read_kind(before.as_deref(), kubelet_data_link(&dir).as_deref());
        if kind == ReadKind::Torn {
            tokio::task::yield_now().await;
            continue;
        }
        match (&read, &read_error) {
            (Err(message), previous) if previous.as_ref() != Some(message) => {
                tracing::warn!("{message}; keeping the last good one");
                unreadable(Some(message));
                read_error = Some(message.clone());
            }
            (Ok(_), Some(_)) => {
                unreadable(None);
                read_error = None;
            }
            _ => {}
        }
        if let Ok(Some(contents)) = read
            && seen.as_ref() != Some(&contents)
        {
            if kind == ReadKind::InPlace {
                tokio::time::sleep(SETTLE).await;
                if read_all().await.ok().flatten().as_ref() != Some(&contents) {
                    continue;
                }
            }
            match offer(&contents) {
                Ok(message) => tracing::info!("{message}"),
                Err(message) => tracing::warn!("{message}"),
            }
            seen = Some(contents);
            continue;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_whole_only_when_the_kubelet_link_held_still_around_it() {
        let (first, second) = (Path::new("..2026_12_05_1"), Path::new("..2026_12_05_2"));
        assert_eq!(read_kind(Some(first), Some(first)), ReadKind::Whole);
        assert_eq!(read_kind(Some(first), Some(second)), ReadKind::Torn);
        // The volume became readable, or unreadable, during the read.
        assert_eq!(read_kind(None, Some(first)), ReadKind::Torn);
        assert_eq!(read_kind(Some(first), None), ReadKind::Torn);
        assert_eq!(read_kind(None, None), ReadKind::InPlace);
    }
}
