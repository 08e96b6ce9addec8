//! Conversions from the CRD types users write to the `proxy.json` types proxies read. Durations
//! are parsed here, so that a proxy never sees a duration string; a bad one is reported with the
//! field it sits in.

use braid_api::{MeshPolicySpec, RetryOn, duration};
use braid_proxy_config as config;

/// A spec value the operator cannot use, with the field it sits in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct SpecError {
    /// Path below `spec`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn millis(value: &str, field: &str) -> Result<u64, SpecError> {
    duration::parse(value)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|error| SpecError {
            field: field.into(),
            message: error.to_string(),
        })
}

fn optional_millis(value: Option<&String>, field: &str) -> Result<Option<u64>, SpecError> {
    value.map(|v| millis(v, field)).transpose()
}

/// The listener limits the Mesh asks for; unset fields take the proxy's defaults. The CRD
/// schema refuses a malformed duration, so one that still fails to parse keeps the default.
pub fn limits(mesh: &braid_api::ProxyLimits) -> config::Limits {
    let defaults = config::Limits::default();
    let ms = |value: &Option<String>, default: u64| {
        value
            .as_deref()
            .and_then(|v| duration::parse(v).ok())
            .map_or(default, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
            })
    };
    config::Limits {
        request_head_timeout_ms: ms(&mesh.request_head_timeout, defaults.request_head_timeout_ms),
        idle_timeout_ms: ms(&mesh.idle_timeout, defaults.idle_timeout_ms),
        max_connections: mesh
            .max_connections
            .map_or(defaults.max_connections, |n| n.max(1)),
    }
}

/// Whether `spec` sets anything the callers' proxies apply.
pub fn has_client_side(spec: &MeshPolicySpec) -> bool {
    spec.load_balancer.is_some()
        || spec.timeouts.is_some()
        || spec.retries.is_some()
        || spec.circuit_breaker.is_some()
        || spec.outlier_detection.is_some()
        || spec.fault.is_some()
}

/// The client-side policy a MeshPolicy asks for; unset fields take Braid's defaults.
pub fn client_policy(
    spec: &MeshPolicySpec,
    source: String,
) -> Result<config::ClientPolicy, SpecError> {
    let defaults = config::ClientPolicy::default();
    let timeouts = spec.timeouts.clone().unwrap_or_default();
    let breaker = spec.circuit_breaker.clone().unwrap_or_default();
    let default_breaker = config::CircuitBreaker::default();
    Ok(config::ClientPolicy {
        load_balancer: load_balancer(spec.load_balancer.unwrap_or_default()),
        connect_timeout_ms: optional_millis(timeouts.connect.as_ref(), "timeouts.connect")?
            .unwrap_or(defaults.connect_timeout_ms),
        request_timeout_ms: optional_millis(timeouts.request.as_ref(), "timeouts.request")?,
        idle_timeout_ms: optional_millis(timeouts.idle.as_ref(), "timeouts.idle")?
            .unwrap_or(defaults.idle_timeout_ms),
        retries: spec
            .retries
            .as_ref()
            .map(|r| retries(r, "retries"))
            .transpose()?,
        circuit_breaker: config::CircuitBreaker {
            max_connections: breaker
                .max_connections
                .unwrap_or(default_breaker.max_connections),
            max_pending_requests: breaker
                .max_pending_requests
                .unwrap_or(default_breaker.max_pending_requests),
            max_requests: breaker.max_requests.unwrap_or(default_breaker.max_requests),
        },
        outlier_detection: spec
            .outlier_detection
            .as_ref()
            .map(|o| -> Result<_, SpecError> {
                Ok(config::OutlierDetection {
                    consecutive_errors: o.consecutive_errors.unwrap_or(5),
                    base_ejection_ms: optional_millis(
                        o.base_ejection_time.as_ref(),
                        "outlierDetection.baseEjectionTime",
                    )?
                    .unwrap_or(30_000),
                    max_ejection_percent: o.max_ejection_percent.unwrap_or(50),
                })
            })
            .transpose()?,
        fault: spec.fault.as_ref().map(|f| fault(f, "fault")).transpose()?,
        source: Some(source),
    })
}

/// A retry policy; `at` is the field path for errors.
pub fn retries(retries: &braid_api::Retries, at: &str) -> Result<config::RetryPolicy, SpecError> {
    let on = if retries.on.is_empty() {
        vec![RetryOn::ConnectFailure, RetryOn::GatewayError]
    } else {
        retries.on.clone()
    };
    let budget = retries.budget.clone().unwrap_or_default();
    Ok(config::RetryPolicy {
        attempts: retries.attempts.unwrap_or(2),
        per_try_timeout_ms: optional_millis(
            retries.per_try_timeout.as_ref(),
            &format!("{at}.perTryTimeout"),
        )?,
        on_5xx: on.contains(&RetryOn::ServerError),
        on_gateway_error: on.contains(&RetryOn::GatewayError),
        on_connect_failure: on.contains(&RetryOn::ConnectFailure),
        on_reset: on.contains(&RetryOn::Reset),
        on_statuses: retries.status_codes.clone(),
        budget_percent: budget.percent.unwrap_or(20),
        budget_min_per_second: budget.min_per_second.unwrap_or(10),
    })
}

/// Injected faults; `at` is the field path for errors.
pub fn fault(fault: &braid_api::Fault, at: &str) -> Result<config::Fault, SpecError> {
    Ok(config::Fault {
        delay: fault
            .delay
            .as_ref()
            .map(|d| -> Result<_, SpecError> {
                Ok(config::DelayFault {
                    percent: d.percent,
                    duration_ms: millis(&d.duration, &format!("{at}.delay.duration"))?,
                })
            })
            .transpose()?,
        abort: fault.abort.as_ref().map(|a| config::AbortFault {
            percent: a.percent,
            status: a.status,
        }),
    })
}

/// The proxy's load balancer for the CRD's.
pub fn load_balancer(balancer: braid_api::LoadBalancer) -> config::LoadBalancer {
    match balancer {
        braid_api::LoadBalancer::RoundRobin => config::LoadBalancer::RoundRobin,
        braid_api::LoadBalancer::LeastConn => config::LoadBalancer::LeastConn,
        braid_api::LoadBalancer::Random => config::LoadBalancer::Random,
        braid_api::LoadBalancer::P2cEwma => config::LoadBalancer::P2cEwma,
    }
}

/// The proxy's mTLS mode for the CRD's.
pub fn mtls_mode(mode: braid_api::MtlsMode) -> config::MtlsMode {
    match mode {
        braid_api::MtlsMode::Strict => config::MtlsMode::Strict,
        braid_api::MtlsMode::Permissive => config::MtlsMode::Permissive,
        braid_api::MtlsMode::Disable => config::MtlsMode::Disable,
    }
}

/// Authorization rules, flattened to what the proxy matches.
pub fn authorization(rules: &[braid_api::AuthorizationRule]) -> Vec<config::AuthorizationRule> {
    rules
        .iter()
        .map(|rule| {
            let from = rule.from.clone().unwrap_or_default();
            let to = rule.to.clone().unwrap_or_default();
            config::AuthorizationRule {
                action: match rule.action.unwrap_or_default() {
                    braid_api::RuleAction::Allow => config::Action::Allow,
                    braid_api::RuleAction::Deny => config::Action::Deny,
                },
                identities: from.identities,
                namespaces: from.namespaces,
                paths: to.paths,
                methods: to.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
                ports: to
                    .ports
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect(),
            }
        })
        .collect()
}

/// The proxy's rate limit for the CRD's: a burst defaults to one second's worth.
pub fn rate_limit(limit: &braid_api::RateLimit) -> config::RateLimit {
    config::RateLimit {
        requests_per_second: limit.requests_per_second,
        burst: limit.burst.unwrap_or(limit.requests_per_second),
        per_identity: limit
            .per_identity
            .iter()
            .map(|entry| config::IdentityRateLimit {
                identities: entry.identities.clone(),
                requests_per_second: entry.requests_per_second,
                burst: entry.burst.unwrap_or(entry.requests_per_second),
            })
            .collect(),
    }
}

/// The proxy's default authorization for the Mesh's.
pub fn default_authorization(
    default: braid_api::DefaultAuthorization,
) -> config::DefaultAuthorization {
    match default {
        braid_api::DefaultAuthorization::Allow => config::DefaultAuthorization::Allow,
        braid_api::DefaultAuthorization::Mesh => config::DefaultAuthorization::Mesh,
        braid_api::DefaultAuthorization::Namespace => config::DefaultAuthorization::Namespace,
        braid_api::DefaultAuthorization::Deny => config::DefaultAuthorization::Deny,
    }
}
