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
//! 3. **A restricting feature is required, not just written** (version 2 on): a field whose
//!    being ignored would let through what it stops (authorization, rate limits) is named in
//!    the document's `requires` list, and a proxy refuses a document that requires a feature it
//!    does not know ([`FEATURES`]), naming it, and keeps its last good config. So a new
//!    restricting feature needs no version bump: the operator lists it, and older proxies
//!    refuse rather than fail open.
//! 4. **The operator writes the oldest version that says what the document means**: version 1
//!    when nothing is required (every release reads it), version 2 when something is (release
//!    1 proxies, which parsed authorization but did not enforce it, refuse it for its
//!    version); see [`ProxyConfig::seal`]. A proxy reads every version from [`MIN_VERSION`] to
//!    [`VERSION`].

use serde::Deserialize;

use crate::{ConfigError, ProxyConfig};

/// The newest version of the document this crate reads and writes: version 2 added
/// `requires`.
pub const VERSION: u32 = 2;
/// The oldest version of the document this crate still reads.
pub const MIN_VERSION: u32 = 1;

/// The features this release enforces, as `requires` names them.
pub const FEATURES: [&str; 3] = [
    feature::AUTHORIZATION,
    feature::RATE_LIMIT,
    feature::SHARED_DESTINATIONS,
];

/// The names of the features a document may require.
pub mod feature {
    /// `inbound.authorization` and `inbound.defaultAuthorization` are enforced.
    pub const AUTHORIZATION: &str = "authorization";
    /// `inbound.rateLimit` is enforced.
    pub const RATE_LIMIT: &str = "rateLimit";
    /// `sharedDestinations`: the destinations are read from `destinations.json`. Not a
    /// restriction, but ignoring it would drop every destination, so it is required alike.
    pub const SHARED_DESTINATIONS: &str = "sharedDestinations";
}

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

/// The error for a document requiring a feature this release does not know, if it does.
pub(crate) fn check_requires(requires: &[String]) -> Result<(), ConfigError> {
    for (r, name) in requires.iter().enumerate() {
        if !FEATURES.contains(&name.as_str()) {
            return Err(ConfigError::Invalid {
                field: format!("requires[{r}]"),
                message: format!(
                    "feature {name:?} is not enforced by this proxy, which knows {}: upgrade \
                     the proxy before using it",
                    FEATURES.join(", ")
                ),
            });
        }
    }
    Ok(())
}

impl ProxyConfig {
    /// The features this document uses that restrict access (or, ignored, would lose its
    /// destinations), as `requires` names them.
    pub fn restricting_features(&self) -> Vec<String> {
        let inbound = &self.inbound;
        let mut features = Vec::new();
        if inbound.authorization.is_some()
            || inbound.default_authorization != crate::DefaultAuthorization::Allow
        {
            features.push(feature::AUTHORIZATION.to_string());
        }
        if inbound.rate_limit.is_some() {
            features.push(feature::RATE_LIMIT.to_string());
        }
        if self.shared_destinations {
            features.push(feature::SHARED_DESTINATIONS.to_string());
        }
        features
    }

    /// Sets `requires` to the features the document uses and `version` to the oldest that
    /// says so (rule 4 above): what the operator does before it writes a document.
    pub fn seal(mut self) -> Self {
        self.requires = self.restricting_features();
        self.version = if self.requires.is_empty() { 1 } else { VERSION };
        self
    }
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
        let (config, ignored) = match parse_noting_ignored::<Self>(bytes) {
            Ok(parsed) => parsed,
            Err(error) => {
                if let Ok(Versioned { version }) = serde_json::from_slice(bytes) {
                    check_version(version)?;
                }
                return Err(error);
            }
        };
        config.validate()?;
        Ok(Read { config, ignored })
    }
}

/// `bytes` parsed as a `T`, with the paths of the fields it ignored; an error names the field.
pub(crate) fn parse_noting_ignored<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, Vec<String>), ConfigError> {
    let mut ignored = Vec::new();
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    let mut note = |path: serde_ignored::Path<'_>| ignored.push(field_path(&path));
    let noting = serde_ignored::Deserializer::new(deserializer, &mut note);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(noting);
    match parsed {
        Ok(value) => Ok((value, ignored)),
        Err(error) => Err(ConfigError::Parse {
            field: error.path().to_string(),
            message: error.inner().to_string(),
        }),
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
        // A version-3 document whose shape also changed: the version is what is reported.
        let newer = document(|d| {
            d["version"] = 3.into();
            d["inbound"]["mtlsMode"] = serde_json::json!({"mode": "STRICT"});
        });
        let error = ProxyConfig::read(&newer).expect_err("refused");
        assert_eq!(error.field(), "version");
        assert!(
            error.to_string().contains("reads versions 1 to 2"),
            "{error}"
        );
        let older = document(|d| d["version"] = 0.into());
        assert_eq!(
            ProxyConfig::read(&older).expect_err("refused").field(),
            "version"
        );
    }

    #[test]
    fn a_restricting_feature_is_required_and_an_unknown_one_refused() {
        let plain = ProxyConfig::from_json(GOOD.as_bytes())
            .expect("valid")
            .seal();
        assert_eq!(plain.version, 1, "nothing required: every release reads it");
        assert!(plain.requires.is_empty());
        let mut restricted = plain.clone();
        restricted.inbound.authorization = Some(Vec::new());
        restricted.inbound.rate_limit = Some(crate::RateLimit {
            requests_per_second: 5,
            burst: 5,
            per_identity: Vec::new(),
        });
        let restricted = restricted.seal();
        assert_eq!(restricted.version, 2);
        assert_eq!(restricted.requires, ["authorization", "rateLimit"]);
        let mut json: serde_json::Value =
            serde_json::from_str(&restricted.to_json()).expect("JSON");
        assert_eq!(
            json["requires"],
            serde_json::json!(["authorization", "rateLimit"])
        );
        // A newer operator's document that requires what this proxy cannot enforce.
        json["requires"] = serde_json::json!(["authorization", "externalAuthz"]);
        let error = ProxyConfig::read(json.to_string().as_bytes()).expect_err("refused");
        assert_eq!(error.field(), "requires[1]");
        assert!(error.to_string().contains("\"externalAuthz\""), "{error}");
        // A release-1 document (no `requires`) is still read, and its rules enforced.
        let old = document(|d| d["inbound"]["authorization"] = serde_json::json!([]));
        let read = ProxyConfig::read(&old).expect("version 1 is read");
        assert_eq!(read.config.version, 1);
        assert_eq!(read.config.inbound.authorization, Some(Vec::new()));
    }

    #[test]
    fn what_this_release_writes_it_reads_back() {
        let config = ProxyConfig::from_json(GOOD.as_bytes()).expect("valid");
        assert_eq!(config.version, 1);
        let read = ProxyConfig::read(config.to_json().as_bytes()).expect("valid");
        assert_eq!(read.config, config);
        assert!(read.ignored.is_empty());
    }
}
