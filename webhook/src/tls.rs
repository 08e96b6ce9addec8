//! The serving certificate, reloaded without a restart. The kubelet updates a mounted Secret by
//! swapping a `..data` symlink, so the files' names never change: the reloader compares their
//! contents every [`RELOAD_EVERY`], parses a changed pair, and swaps it in for new handshakes. A
//! pair that does not parse is refused, logged, and the last good one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often the files are checked.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why a certificate pair was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PEM holds no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// rustls refused the key.
    #[error("the private key is not usable: {0}")]
    Key(rustls::Error),
}

/// The certificate and key files of a mounted `kubernetes.io/tls` Secret.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// `tls.crt`.
    pub cert: PathBuf,
    /// `tls.key`.
    pub key: PathBuf,
}

impl CertFiles {
    /// The files in a Secret's mount directory.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }
}

/// Parses a PEM certificate chain and key into what rustls serves.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(format!("tls.crt: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Pem("tls.crt holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| TlsError::Pem(format!("tls.key: {e}")))?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(TlsError::Key)?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    loaded_from: RwLock<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCert {
    /// Loads the files once; fails when the first pair is not usable.
    pub fn load(files: &CertFiles) -> Result<Arc<Self>, TlsError> {
        let (cert, key) = files.read()?;
        let certified = certified_key(&cert, &key)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(certified)),
            loaded_from: RwLock::new((cert, key)),
        }))
    }

    /// Checks the files once; swaps in a changed, valid pair. Returns whether it swapped.
    pub fn reload(&self, files: &CertFiles) -> Result<bool, TlsError> {
        let pair = files.read()?;
        if *self.loaded_from.read().unwrap_or_else(|e| e.into_inner()) == pair {
            return Ok(false);
        }
        let certified = certified_key(&pair.0, &pair.1)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certified);
        *self.loaded_from.write().unwrap_or_else(|e| e.into_inner()) = pair;
        Ok(true)
    }

    /// Runs [`Self::reload`] forever.
    pub async fn watch(self: Arc<Self>, files: CertFiles) {
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            match self.reload(&files) {
                Ok(true) => {
                    tracing::info!(cert = %files.cert.display(), "serving certificate reloaded")
                }
                Ok(false) => {}
                // A half-written pair (cert updated, key not yet) lands here and is retried.
                Err(error) => {
                    tracing::warn!(%error, "serving certificate not reloaded; keeping the last good one")
                }
            }
        }
    }

    /// A server config (TLS 1.2 and 1.3 only, HTTP/2 and HTTP/1.1) that serves this certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}
