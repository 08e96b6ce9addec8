//! `braid-operator`: Braid's control plane. It watches Pods, Services, EndpointSlices,
//! Namespaces and the mesh CRDs, and writes for every meshed workload the ConfigMap
//! `braid-proxy-<workload>` (key `proxy.json`), for each namespace the ConfigMap
//! `braid-destinations` (key `destinations.json`, the destinations every document shares), and
//! the Secret `braid-identity-<workload>` (its SPIFFE certificate from the mesh CA), plus the
//! status of every Mesh, MeshPolicy and MeshRoute.
//!
//! The decision is a pure function ([`plan::plan`]) of a snapshot of the cluster; the modules
//! around it only read the cluster into that snapshot ([`run`]) and write the differences back
//! ([`configs`], [`write`], [`status`]), and read back which config each running proxy has in force
//! ([`readback`]). Only the replica holding the Lease ([`leader`]) writes and reads back.

pub mod caches;
pub mod certs;
pub mod configs;
pub mod inputs;
pub mod leader;
pub mod metrics;
pub mod nudge;
pub mod plan;
pub mod readback;
pub mod run;
pub mod select;
pub mod status;
pub mod webhook_cert;
pub mod workload;
pub mod write;

/// Why a reconcile pass failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A certificate could not be made.
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    /// Secret `braid-system/braid-ca` holds no usable root.
    #[error("invalid mesh CA: {0}")]
    InvalidCa(String),
    /// The Mesh spec holds a value the operator cannot use.
    #[error("invalid Mesh: {0}")]
    InvalidMesh(String),
    /// A cache could not sync.
    #[error("cache: {0}")]
    Cache(String),
}

impl Error {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Cert(_) => "certificate",
            Self::InvalidCa(_) => "invalid_ca",
            Self::InvalidMesh(_) => "invalid_mesh",
            Self::Cache(_) => "cache",
        }
    }
}
