//! The split layout: a workload's `proxy.json` without its destinations, and the namespace's
//! `destinations.json` beside it. Every workload of a mesh calls the same destinations, so
//! when a client-side policy or a Service changes, the one list every document carries
//! changes: stored in every workload's ConfigMap, that is a write per workload (1,000 of them
//! at the operator benchmark's scale, more than the API server of a small cluster takes in
//! 3 s); stored once per namespace (ConfigMap `braid-destinations`, projected into each pod's
//! config volume beside `proxy.json`), it is one write. The kubelet writes a projected
//! volume's files in one atomic swap, so a proxy reads the two files of one update.
//!
//! A document in this layout says so (`sharedDestinations`, which it also `requires`, so that
//! a proxy of an earlier release refuses it rather than run with no destinations), and its
//! own `destinations` is empty. The operator writes it only for workloads whose every pod
//! mounts the namespace's file.

use sha2::{Digest, Sha256};

use crate::skew::parse_noting_ignored;
use crate::{ConfigError, Destination, ProxyConfig, Read, encoding};

/// The file, beside `proxy.json`, that holds the destinations of a document with
/// `sharedDestinations` (ConfigMap `braid-destinations`, key `destinations.json`).
pub const DESTINATIONS_FILE: &str = "destinations.json";

impl ProxyConfig {
    /// Reads `proxy.json` (`document`) and, when it takes its destinations from
    /// [`DESTINATIONS_FILE`], that file (`destinations`: `None` when it is not there), both as
    /// the operator stores them (plain or gzip). A document that does not share its
    /// destinations is read alone, whatever file lies beside it.
    pub fn from_files(document: &[u8], destinations: Option<&[u8]>) -> Result<Read, ConfigError> {
        let Read {
            mut config,
            mut ignored,
        } = Self::from_file(document)?;
        if !config.shared_destinations {
            return Ok(Read { config, ignored });
        }
        if !config.destinations.is_empty() {
            return Err(ConfigError::Invalid {
                field: "destinations".into(),
                message: format!(
                    "must be empty when sharedDestinations is set: they are read from \
                     {DESTINATIONS_FILE}"
                ),
            });
        }
        let Some(destinations) = destinations else {
            return Err(ConfigError::Invalid {
                field: "sharedDestinations".into(),
                message: format!(
                    "the destinations are in {DESTINATIONS_FILE} beside proxy.json, which is not \
                     there (ConfigMap braid-destinations missing from the namespace?)"
                ),
            });
        };
        let in_file = |field: String, message: String| ConfigError::Parse {
            field,
            message: format!("in {DESTINATIONS_FILE}: {message}"),
        };
        let json = encoding::decode(destinations).map_err(|m| in_file("destinations".into(), m))?;
        let (list, ignored_there): (Vec<Destination>, _) =
            parse_noting_ignored(&json).map_err(|error| {
                let path = error.field().trim_start_matches('.');
                in_file(format!("destinations{path}"), error.to_string())
            })?;
        ignored.extend(
            ignored_there
                .into_iter()
                .map(|p| format!("destinations{p}")),
        );
        config.destinations = list;
        config.validate()?;
        Ok(Read { config, ignored })
    }

    /// The hash of the config this document and its destinations file make, hex: what a proxy
    /// reports on `/config` and the operator expects of it. SHA-256 of `proxy.json` as stored
    /// or, when the destinations are shared, [`combined_hash`] of both files'.
    pub fn files_hash(&self, document: &[u8], destinations: Option<&[u8]>) -> String {
        let document = sha256_hex(document);
        match destinations {
            Some(destinations) if self.shared_destinations => {
                combined_hash(&document, &sha256_hex(destinations))
            }
            _ => document,
        }
    }
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The hash of a split config from the SHA-256 (hex) of each of its files: SHA-256 of
/// `<proxy.json's>:<destinations.json's>`, so that the operator computes it from what it
/// recorded of each file.
pub fn combined_hash(document_sha256: &str, destinations_sha256: &str) -> String {
    sha256_hex(format!("{document_sha256}:{destinations_sha256}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::Stored;
    use crate::shared::SharedDestinations;
    use crate::validate::tests::GOOD;

    fn split(config: &ProxyConfig) -> (Vec<u8>, Vec<u8>) {
        let mut document = config.clone();
        document.destinations.clear();
        document.shared_destinations = true;
        let document = document.seal().to_compact_json().into_bytes();
        let file = match SharedDestinations::new(&config.destinations).file() {
            Stored::Text(text) => text.into_bytes(),
            Stored::Gzip(bytes) => bytes,
        };
        (document, file)
    }

    #[test]
    fn a_split_config_reads_as_the_whole_one() {
        let whole = ProxyConfig::from_json(GOOD.as_bytes()).expect("valid");
        assert!(!whole.destinations.is_empty());
        let (document, file) = split(&whole);
        let read = ProxyConfig::from_files(&document, Some(&file)).expect("valid");
        assert!(read.ignored.is_empty(), "{:?}", read.ignored);
        assert_eq!(read.config.destinations, whole.destinations);
        assert_eq!(read.config.requires, ["sharedDestinations"]);
        assert_eq!(read.config.version, 2, "release-1 proxies refuse it");
        // The hash covers both files.
        let hash = read.config.files_hash(&document, Some(&file));
        assert_eq!(
            hash,
            combined_hash(&sha256_hex(&document), &sha256_hex(&file))
        );
        assert_ne!(hash, read.config.files_hash(&document, Some(b"[]")));
        // A whole document ignores a file beside it, and hashes as itself.
        let alone = ProxyConfig::from_files(GOOD.as_bytes(), Some(b"[]")).expect("valid");
        assert_eq!(alone.config.destinations, whole.destinations);
        assert_eq!(
            alone.config.files_hash(GOOD.as_bytes(), Some(b"[]")),
            sha256_hex(GOOD.as_bytes())
        );
    }

    #[test]
    fn a_missing_or_bad_destinations_file_is_refused_naming_it() {
        let whole = ProxyConfig::from_json(GOOD.as_bytes()).expect("valid");
        let (document, _) = split(&whole);
        let missing = ProxyConfig::from_files(&document, None).expect_err("refused");
        assert_eq!(missing.field(), "sharedDestinations");
        let bad = br#"[{"name": "order.shop", "clusterIps": ["not an ip"]}]"#;
        let error = ProxyConfig::from_files(&document, Some(bad)).expect_err("refused");
        assert!(error.field().starts_with("destinations[0]"), "{error}");
        assert!(error.to_string().contains("destinations.json"), "{error}");
        let mut both: serde_json::Value =
            serde_json::from_slice(&document).expect("the document is JSON");
        both["destinations"] = serde_json::to_value(&whole.destinations).expect("JSON");
        let error =
            ProxyConfig::from_files(both.to_string().as_bytes(), Some(b"[]")).expect_err("refused");
        assert_eq!(error.field(), "destinations");
    }
}
