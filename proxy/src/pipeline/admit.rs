//! The inbound side's admission step: whether a caller's request (or TCP connection) reaches
//! the application. Authorization first ([`crate::policy::authz`]: pure, compiled at reload),
//! then, for HTTP requests, the rate limit ([`crate::policy::rate_limit`]). Here the outcome is
//! counted, a dry-run denial logged and let through, an enforced one turned into the
//! [`Failure`] that [`super::respond`] answers (403, gRPC `PERMISSION_DENIED`; 429 with
//! `Retry-After`, gRPC `RESOURCE_EXHAUSTED`).

use super::failure::Failure;
use crate::policy::authz::{Access, Authorizer, Caller, HttpAccess};
use crate::policy::rate_limit::now_ns;
use crate::policy::routing::Table;
use crate::state::context::Context;
use crate::telemetry::policy::Outcome;

/// Admits one request (`http`) or opaque connection (`None`) of `caller` to the workload's
/// `port`, in the config in force: without one, nothing is known to be allowed.
pub fn check(
    context: &Context,
    caller: Option<&Caller>,
    port: u16,
    http: Option<HttpAccess<'_>>,
) -> Result<(), Failure> {
    let config = context.config.current().ok_or(Failure::NotReady)?;
    check_in(&config.table, caller, port, http)
}

/// Admits one request or opaque connection in `table` (the config its connection holds).
pub fn check_in(
    table: &Table,
    caller: Option<&Caller>,
    port: u16,
    http: Option<HttpAccess<'_>>,
) -> Result<(), Failure> {
    let access = Access { caller, port, http };
    authorize(&table.authorizer, &access)?;
    if let (Some(limiter), Some(_)) = (&table.rate_limiter, http) {
        limiter
            .admit(access.caller, now_ns())
            .map_err(Failure::RateLimited)?;
    }
    Ok(())
}

/// Decides `access`, counts the outcome and, in dry-run mode, logs a denial instead of making
/// it.
pub fn authorize(authorizer: &Authorizer, access: &Access<'_>) -> Result<(), Failure> {
    if authorizer.allows_all() {
        return Ok(());
    }
    let verdict = authorizer.decide(access);
    let http = access.http.is_some();
    let counters = authorizer.counters(verdict.reason);
    if verdict.allowed {
        counters.count(http, Outcome::Allow);
        return Ok(());
    }
    let failure = Failure::Denied {
        policy: authorizer.policy.clone(),
        reason: verdict.reason,
    };
    let caller = access
        .caller
        .map_or("a plaintext caller", |c| c.id.as_str());
    let what = || match access.http {
        Some(request) => format!(
            "{} {} on port {}",
            request.method, request.path, access.port
        ),
        None => format!("a connection to port {}", access.port),
    };
    if authorizer.dry_run {
        counters.count(http, Outcome::WouldDeny);
        tracing::info!("dry run: {} from {caller} would be {failure}", what());
        return Ok(());
    }
    counters.count(http, Outcome::Deny);
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!("{} from {caller}: {failure}", what());
    }
    Err(failure)
}

/// Whether a connection of `caller` to `port` is refused as a whole (decided, not counted):
/// what its HTTP/2 requests would be told one by one.
pub fn refuses_connection(context: &Context, caller: Option<&Caller>, port: u16) -> bool {
    context.config.current().is_none_or(|config| {
        let authorizer = &config.table.authorizer;
        let access = Access {
            caller,
            port,
            http: None,
        };
        !authorizer.allows_all() && !authorizer.dry_run && !authorizer.decide(&access).allowed
    })
}
