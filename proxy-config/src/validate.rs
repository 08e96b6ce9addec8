//! Checks that the types alone cannot express. Every error names the field, as a path from the
//! document's root, so a refused config says exactly what to fix.

use std::collections::HashSet;

use crate::{Destination, Fault, Inbound, ProxyConfig, RetryPolicy, Route};

/// Why a document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Not valid JSON, or not of the document's shape.
    #[error("{field}: {message}")]
    Parse {
        /// Path of the offending field (`.` for the root).
        field: String,
        /// What the parser said.
        message: String,
    },
    /// Well-formed but inconsistent.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The path of the field at fault.
    pub fn field(&self) -> &str {
        match self {
            Self::Parse { field, .. } | Self::Invalid { field, .. } => field,
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn check(holds: bool, field: impl FnOnce() -> String, message: &str) -> Result<(), ConfigError> {
    if holds {
        Ok(())
    } else {
        Err(invalid(field(), message))
    }
}

fn check_spiffe(id: &str, field: impl FnOnce() -> String) -> Result<(), ConfigError> {
    check(
        id.starts_with("spiffe://") && id.len() > "spiffe://".len(),
        field,
        "must be a spiffe:// ID",
    )
}

fn check_percent(value: u32, field: impl FnOnce() -> String) -> Result<(), ConfigError> {
    check(value <= 100, field, "a percentage is 0 to 100")
}

impl ProxyConfig {
    /// Validates the whole document; the first error found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::skew::check_version(self.version)?;
        crate::skew::check_requires(&self.requires)?;
        check_spiffe(&self.workload.identity, || "workload.identity".into())?;
        let limits = &self.limits;
        for (value, field) in [
            (limits.request_head_timeout_ms, "requestHeadTimeoutMs"),
            (limits.idle_timeout_ms, "idleTimeoutMs"),
            (u64::from(limits.max_connections), "maxConnections"),
        ] {
            check(
                value >= 1,
                || format!("limits.{field}"),
                "must be at least 1",
            )?;
        }
        validate_inbound(&self.inbound)?;
        let mut names = HashSet::new();
        for (d, destination) in self.destinations.iter().enumerate() {
            check(
                names.insert(destination.name.as_str()),
                || format!("destinations[{d}].name"),
                "is not unique",
            )?;
        }
        for (d, destination) in self.destinations.iter().enumerate() {
            validate_destination(destination, &format!("destinations[{d}]"), &names)?;
        }
        if let Some(tracing) = &self.tracing {
            check_percent(tracing.sampling_percent, || {
                "tracing.samplingPercent".into()
            })?;
        }
        Ok(())
    }
}

fn validate_inbound(inbound: &Inbound) -> Result<(), ConfigError> {
    if let Some(limit) = &inbound.rate_limit {
        check_bucket(limit.requests_per_second, limit.burst, "inbound.rateLimit")?;
        for (l, limit) in limit.per_identity.iter().enumerate() {
            let at = format!("inbound.rateLimit.perIdentity[{l}]");
            check(
                !limit.identities.is_empty(),
                || format!("{at}.identities"),
                "names no caller",
            )?;
            for (i, id) in limit.identities.iter().enumerate() {
                check_identity_pattern(id, || format!("{at}.identities[{i}]"))?;
            }
            check_bucket(limit.requests_per_second, limit.burst, &at)?;
        }
    }
    for (r, rule) in inbound.authorization.iter().flatten().enumerate() {
        let at = format!("inbound.authorization[{r}]");
        for (i, id) in rule.identities.iter().enumerate() {
            check_identity_pattern(id, || format!("{at}.identities[{i}]"))?;
        }
        for (n, namespace) in rule.namespaces.iter().enumerate() {
            check(
                !namespace.is_empty() && !namespace.contains('/'),
                || format!("{at}.namespaces[{n}]"),
                "a namespace name is not empty and has no '/'",
            )?;
        }
        for (p, path) in rule.paths.iter().enumerate() {
            check(
                path.starts_with('/') || path == "*",
                || format!("{at}.paths[{p}]"),
                "a path starts with '/' (or is \"*\")",
            )?;
            check(
                !path.trim_end_matches('*').contains('*'),
                || format!("{at}.paths[{p}]"),
                "'*' may only end a path",
            )?;
        }
        for (m, method) in rule.methods.iter().enumerate() {
            check(
                !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase()),
                || format!("{at}.methods[{m}]"),
                "a method is upper-case letters, e.g. GET",
            )?;
        }
        check(
            !rule.ports.contains(&0),
            || format!("{at}.ports"),
            "port 0 is not a port",
        )?;
    }
    Ok(())
}

/// A caller pattern: a SPIFFE ID, or its prefix ending in `*` (a lone `*` is any caller with an
/// identity).
fn check_identity_pattern(id: &str, field: impl FnOnce() -> String) -> Result<(), ConfigError> {
    if id == "*" {
        return Ok(());
    }
    let head = id.strip_suffix('*').unwrap_or(id);
    if head.contains('*') {
        return Err(invalid(field(), "'*' may only end an identity"));
    }
    if id.ends_with('*') {
        check(
            head.starts_with("spiffe://"),
            field,
            "must be a spiffe:// ID or prefix",
        )
    } else {
        check_spiffe(head, field)
    }
}

fn check_bucket(rate: u32, burst: u32, at: &str) -> Result<(), ConfigError> {
    check(
        rate >= 1,
        || format!("{at}.requestsPerSecond"),
        "must be at least 1",
    )?;
    check(burst >= 1, || format!("{at}.burst"), "must be at least 1")
}

fn validate_destination(
    destination: &Destination,
    at: &str,
    names: &HashSet<&str>,
) -> Result<(), ConfigError> {
    check(
        !destination.ports.is_empty(),
        || format!("{at}.ports"),
        "a destination needs a port",
    )?;
    for (p, port) in destination.ports.iter().enumerate() {
        check(
            port.port != 0,
            || format!("{at}.ports[{p}].port"),
            "port 0 is not a port",
        )?;
        for (e, endpoint) in port.endpoints.iter().enumerate() {
            let field = || format!("{at}.ports[{p}].endpoints[{e}]");
            check(
                endpoint.port != 0,
                || field() + ".port",
                "port 0 is not a port",
            )?;
            if let Some(identity) = &endpoint.identity {
                check_spiffe(identity, || field() + ".identity")?;
            }
        }
    }
    let policy = &destination.policy;
    check(
        policy.connect_timeout_ms > 0,
        || format!("{at}.policy.connectTimeoutMs"),
        "must be above 0",
    )?;
    if let Some(retries) = &policy.retries {
        validate_retries(
            retries,
            policy.request_timeout_ms,
            &format!("{at}.policy.retries"),
        )?;
    }
    if let Some(outlier) = &policy.outlier_detection {
        check(
            outlier.consecutive_errors >= 1,
            || format!("{at}.policy.outlierDetection.consecutiveErrors"),
            "must be at least 1",
        )?;
        check_percent(outlier.max_ejection_percent, || {
            format!("{at}.policy.outlierDetection.maxEjectionPercent")
        })?;
    }
    if let Some(fault) = &policy.fault {
        validate_fault(fault, &format!("{at}.policy.fault"))?;
    }
    for (r, route) in destination.routes.iter().enumerate() {
        validate_route(route, &format!("{at}.routes[{r}]"), names)?;
    }
    Ok(())
}

fn validate_route(route: &Route, at: &str, names: &HashSet<&str>) -> Result<(), ConfigError> {
    check(
        !route.backends.is_empty(),
        || format!("{at}.backends"),
        "a route needs a backend",
    )?;
    let total: u64 = route.backends.iter().map(|b| u64::from(b.weight)).sum();
    check(
        total > 0,
        || format!("{at}.backends"),
        "weights add up to 0",
    )?;
    for (b, backend) in route.backends.iter().enumerate() {
        check(
            names.contains(backend.destination.as_str()),
            || format!("{at}.backends[{b}].destination"),
            "names no destination of this document",
        )?;
        check(
            backend.port != Some(0),
            || format!("{at}.backends[{b}].port"),
            "port 0 is not a port",
        )?;
    }
    if let Some(retries) = &route.retries {
        validate_retries(retries, route.timeout_ms, &format!("{at}.retries"))?;
    }
    if let Some(fault) = &route.fault {
        validate_fault(fault, &format!("{at}.fault"))?;
    }
    Ok(())
}

fn validate_retries(
    retries: &RetryPolicy,
    request_timeout_ms: Option<u64>,
    at: &str,
) -> Result<(), ConfigError> {
    check(
        retries.attempts <= 10,
        || format!("{at}.attempts"),
        "at most 10",
    )?;
    if let (Some(per_try), Some(whole)) = (retries.per_try_timeout_ms, request_timeout_ms) {
        check(
            per_try <= whole,
            || format!("{at}.perTryTimeoutMs"),
            "exceeds the request timeout",
        )?;
    }
    for (i, status) in retries.on_statuses.iter().enumerate() {
        check(
            (100..=599).contains(status),
            || format!("{at}.onStatuses[{i}]"),
            "an HTTP status is 100 to 599",
        )?;
    }
    check_percent(retries.budget_percent, || format!("{at}.budgetPercent"))
}

fn validate_fault(fault: &Fault, at: &str) -> Result<(), ConfigError> {
    if let Some(delay) = &fault.delay {
        check_percent(delay.percent, || format!("{at}.delay.percent"))?;
    }
    if let Some(abort) = &fault.abort {
        check_percent(abort.percent, || format!("{at}.abort.percent"))?;
        check(
            (200..=599).contains(&abort.status),
            || format!("{at}.abort.status"),
            "an HTTP status is 200 to 599",
        )?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
