//! Version skew: during an upgrade the operator runs one release ahead of some proxies (and,
//! rolled back, one behind), so a document must mean the same to every proxy that accepts it.
//! The rule, which ARCHITECTURE.md states too:
//!
//! 1. **A field may be added within a version** when leaving it out means what the older
//!    release did. A proxy ignores fields it does not know (and says which: [`Read::ignored`],
//!    logged and shown on its `/config`), so a newer operator's document loads in an older proxy.
//! 2. **A change of meaning bumps [`VERSION`]**: a field renamed or retyped, a new enum value,
//!    or a new field whose being ignored would weaken a decision (an authorization rule that an
//!    older proxy would skip and so allow more). A proxy refuses a version it does not read,
//!    naming the versions it does, and keeps its last good config.
//! 3. **The operator writes the oldest version still running**: after a bump, it keeps writing
//!    the previous version for as long as proxies of the previous release may read the document
//!    (each pod's `braid.dev/injected` annotation records its proxy's release), and a proxy
//!    reads every version from [`MIN_VERSION`] to [`VERSION`].

use serde::Deserialize;

use crate::{ConfigError, ProxyConfig};

/// The newest version of the document this crate reads and writes.
pub const VERSION: u32 = 1;
/// The oldest version of the document this crate still reads.
pub const MIN_VERSION: u32 = 1;

/// A document read by [`ProxyConfig::read`].
#[derive(Clone, Debug, PartialEq)]
pub struct Read {
    /// The config, validated whole.
    pub config: ProxyConfig,
    /// Paths of the fields this release does not know and ignored (a newer operator's), such
    /// as `destinations[0].routes[0].retries.budget`.
    pub ignored: Vec<String>,
}

/// Just the version of a document, read when the document itself is refused: a document of an
/// unknown version is refused for its version, not for the first field that changed.
#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

/// The error for a document of `version`, if this release does not read it.
pub(crate) fn check_version(version: u32) -> Result<(), ConfigError> {
    if (MIN_VERSION..=VERSION).contains(&version) {
        return Ok(());
    }
    let reads = if MIN_VERSION == VERSION {
        format!("version {VERSION}")
    } else {
        format!("versions {MIN_VERSION} to {VERSION}")
    };
    Err(ConfigError::Invalid {
        field: "version".into(),
        message: format!(
            "version {version} is not read by this proxy, which reads {reads}: upgrade the proxy, \
             or keep the operator at the proxies' release"
        ),
    })
}

/// `path` as [`ConfigError`] names fields: `destinations[0].policy`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            parent if parent.is_empty() => key.clone(),
            parent => format!("{parent}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

impl ProxyConfig {
    /// Parses and validates a document, ignoring the fields this release does not know (listed
    /// in [`Read::ignored`]); refuses it whole on the first error, and a document of a version
    /// this release does not read for its version.
    pub fn read(bytes: &[u8]) -> Result<Read, ConfigError> {
        let mut ignored = Vec::new();
        let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
        let mut note = |path: serde_ignored::Path<'_>| ignored.push(field_path(&path));
        let noting = serde_ignored::Deserializer::new(deserializer, &mut note);
        let parsed: Result<Self, _> = serde_path_to_error::deserialize(noting);
        let config = match parsed {
            Ok(config) => config,
            Err(error) => {
                if let Ok(Versioned { version }) = serde_json::from_slice(bytes) {
                    check_version(version)?;
                }
                return Err(ConfigError::Parse {
                    field: error.path().to_string(),
                    message: error.inner().to_string(),
                });
            }
        };
        config.validate()?;
        Ok(Read { config, ignored })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::GOOD;

    fn document(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut document: serde_json::Value = serde_json::from_str(GOOD).expect("fixture is JSON");
        edit(&mut document);
        document.to_string().into_bytes()
    }

    #[test]
    fn fields_of_a_newer_operator_are_ignored_and_named() {
        let newer = document(|d| {
            d["meshFeature"] = serde_json::json!({"on": true});
            d["workload"]["colour"] = "blue".into();
            d["destinations"][0]["routes"][0]["retries"] = serde_json::json!({
                "attempts": 2, "on5xx": true, "onGatewayError": false, "onConnectFailure": true,
                "onReset": false, "budgetPercent": 20, "budgetMinPerSecond": 10,
                "budget": {"window": "10s"}
            });
        });
        let read = ProxyConfig::read(&newer).expect("accepted");
        let plain = ProxyConfig::from_json(GOOD.as_bytes()).expect("valid");
        assert_eq!(read.config.workload, plain.workload);
        assert_eq!(read.config.destinations[0].name, plain.destinations[0].name);
        assert_eq!(read.ignored.len(), 3, "{:?}", read.ignored);
        for path in [
            "meshFeature",
            "workload.colour",
            "destinations[0].routes[0].retries.budget",
        ] {
            assert!(
                read.ignored.iter().any(|p| p == path),
                "{path} not in {:?}",
                read.ignored
            );
        }
        assert_eq!(
            ProxyConfig::read(GOOD.as_bytes()).expect("valid").ignored,
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_version_this_release_does_not_read_is_refused_for_its_version() {
        // A version-2 document whose shape also changed: the version is what is reported.
        let newer = document(|d| {
            d["version"] = 2.into();
            d["inbound"]["mtlsMode"] = serde_json::json!({"mode": "STRICT"});
        });
        let error = ProxyConfig::read(&newer).expect_err("refused");
        assert_eq!(error.field(), "version");
        assert!(error.to_string().contains("reads version 1"), "{error}");
        let older = document(|d| d["version"] = 0.into());
        assert_eq!(
            ProxyConfig::read(&older).expect_err("refused").field(),
            "version"
        );
    }

    #[test]
    fn what_this_release_writes_it_reads_back() {
        let config = ProxyConfig::from_json(GOOD.as_bytes()).expect("valid");
        assert_eq!(config.version, VERSION);
        let read = ProxyConfig::read(config.to_json().as_bytes()).expect("valid");
        assert_eq!(read.config, config);
        assert!(read.ignored.is_empty());
    }
}
