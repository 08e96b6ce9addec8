//! The `proxy.json` contract: the one document the operator writes (ConfigMap
//! `braid-proxy-<workload>`, key `proxy.json`) and the proxy reads (`/etc/braid/config/proxy.json`).
//! It holds the workload's identity, how it accepts traffic, and every destination it may call,
//! or, in the split layout ([`split`]), says that the destinations are in the namespace's
//! `destinations.json` beside it.
//!
//! This crate has no Kubernetes dependency: the proxy links it and never links kube. A document
//! is accepted only whole: [`ProxyConfig::from_json`] parses *and* validates, and every error names
//! the field that is wrong (`destinations[1].routes[0].backends[2].weight`).

pub mod encoding;
mod inbound;
mod model;
pub mod shared;
mod skew;
pub mod split;
mod validate;

pub use inbound::*;
pub use model::*;
pub use skew::{FEATURES, MIN_VERSION, Read, VERSION, feature};
pub use validate::ConfigError;

impl ProxyConfig {
    /// Parses and validates a `proxy.json` file as the operator stores it: plain JSON or, for a
    /// large document, gzip of it ([`encoding`]).
    /// Fields it does not know are ignored ([`ProxyConfig::read`]).
    pub fn from_file(bytes: &[u8]) -> Result<Read, ConfigError> {
        let json = encoding::decode(bytes).map_err(|message| ConfigError::Parse {
            field: ".".into(),
            message,
        })?;
        Self::read(&json)
    }

    /// Parses and validates a document; refuses it whole on the first error. Fields it does
    /// not know are ignored ([`ProxyConfig::read`] says which).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::read(bytes).map(|read| read.config)
    }

    /// The document as the operator writes it: pretty, with a stable field order, so that equal
    /// configs are equal bytes and the operator can skip writes that change nothing.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// The document compact, as the operator stores it: a fifth of the size at 500 destinations.
    pub fn to_compact_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The JSON Schema of the document.
    pub fn json_schema() -> String {
        serde_json::to_string_pretty(&schemars::schema_for!(ProxyConfig)).unwrap_or_default() + "\n"
    }
}
