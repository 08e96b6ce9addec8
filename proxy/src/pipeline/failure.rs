//! Why a request failed, with its cause kept: a retry must tell a refused connection from a
//! reset, the metrics' response flags and the access log must name the cause, and the reply
//! ([`super::respond`]) depends on it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;

use crate::policy::authz::Reason;
use crate::policy::rate_limit::Limited;

/// Why the proxy answered a request itself, or could not finish it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No `proxy.json` loaded yet.
    #[error("no proxy config loaded yet")]
    NotReady,
    /// The destination left the config while the connection was open.
    #[error("{0} is no longer a meshed destination")]
    Gone(SocketAddr),
    /// The route's backends all have weight 0 (or name destinations the config lacks).
    #[error("route of {0} has no backend with weight")]
    NoBackend(String),
    /// The backend has no endpoint on the port, and the next config did not bring one in time.
    #[error("{name} has no endpoint on port {port}")]
    NoEndpoints {
        /// The backend.
        name: String,
        /// Its port.
        port: u16,
    },
    /// Reaching the peer failed.
    #[error("upstream: {0}")]
    Upstream(UpstreamError),
    /// No response head within the route's or policy's timeout.
    #[error("no response within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// An abort fault was injected.
    #[error("fault injected")]
    Abort(u16),
    /// The client's request was malformed (its body, for one): the client's fault, not the
    /// peer's.
    #[error("malformed request: {0}")]
    BadRequest(String),
    /// The client went away before its response was complete: nobody to answer.
    #[error("the client closed its connection")]
    ClientGone,
    /// The workload's authorization denied the request.
    #[error("denied by {}: {}", policy_text(policy), denial_text(*reason))]
    Denied {
        /// The MeshPolicy, `namespace/name` (empty: the Mesh's default).
        policy: Arc<str>,
        /// Why.
        reason: Reason,
    },
    /// The destination's circuit breaker refused the request. Never retried.
    #[error("overloaded: {name}: {limit}")]
    Overloaded {
        /// The destination.
        name: String,
        /// The limit it is at.
        limit: Overload,
    },
    /// The workload's rate limit refused the request.
    #[error("rate limited ({} bucket), retry after {} ms", limit_scope(.0), .0.retry_after.as_millis())]
    RateLimited(Limited),
}

/// Which of a destination's circuit breaker limits refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Overload {
    /// `maxRequests` are in flight.
    #[error("{0} requests in flight (circuit breaker maxRequests)")]
    Requests(u32),
    /// `maxConnections` are open and `maxPendingRequests` wait for one already.
    #[error("{0} requests waiting for a connection (circuit breaker maxPendingRequests)")]
    Pending(u32),
    /// `maxConnections` were open, and none went idle or closed within the connect timeout.
    #[error(
        "no connection free within {} ms ({max} open, circuit breaker maxConnections)",
        waited.as_millis()
    )]
    Connections {
        /// Its `maxConnections`.
        max: u32,
        /// How long the request waited.
        waited: Duration,
    },
}

fn policy_text(policy: &str) -> String {
    if policy.is_empty() {
        "the mesh default".into()
    } else {
        format!("policy {policy}")
    }
}

fn denial_text(reason: Reason) -> String {
    match reason {
        Reason::DenyRule(rule) => format!("DENY rule {rule} matches"),
        Reason::NoAllowRule => "no ALLOW rule matches".into(),
        Reason::NoRules => "the rule list is empty".into(),
        Reason::Default(default) => format!("default {default:?}").to_lowercase(),
        Reason::AllowRule(rule) => format!("ALLOW rule {rule} matches"),
    }
}

fn limit_scope(limited: &Limited) -> &'static str {
    match limited.scope {
        crate::telemetry::policy::LimitScope::Pod => "pod",
        crate::telemetry::policy::LimitScope::Identity => "caller",
    }
}

/// Why a peer could not be reached or did not answer, by cause.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {cause}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// What failed.
        cause: ConnectCause,
    },
    /// The TLS handshake failed or timed out.
    #[error("mTLS handshake with {addr}: {message}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// What failed.
        message: String,
    },
    /// The peer presented another identity than the config expects.
    #[error("{addr} is {found}, expected {expected}")]
    WrongPeer {
        /// The endpoint.
        addr: SocketAddr,
        /// Its SPIFFE ID.
        found: String,
        /// The config's.
        expected: String,
    },
    /// No identity is loaded yet, so no mTLS is possible.
    #[error("no workload identity loaded yet")]
    NoIdentity,
    /// The destination's circuit breaker refused a new connection (a request past
    /// `maxPendingRequests`, or one that found none free in time).
    #[error("overloaded: {name}: {limit}")]
    Overloaded {
        /// The destination.
        name: String,
        /// The limit it is at.
        limit: Overload,
    },
    /// HTTP failed on the connection (hyper's client).
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// The exchange with the peer failed (HTTP/1.1 fast path).
    #[error("{addr}: {cause}")]
    Exchange {
        /// The endpoint.
        addr: SocketAddr,
        /// What failed.
        cause: ExchangeCause,
    },
}

/// Why a TCP connect failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectCause {
    /// Nothing listens there (RST).
    #[error("connection refused")]
    Refused,
    /// No answer within the connect timeout.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// Anything else (no route, ...).
    #[error("{0}")]
    Other(io::Error),
}

impl From<io::Error> for ConnectCause {
    fn from(error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => Self::Refused,
            _ => Self::Other(error),
        }
    }
}

/// Why an exchange on an open connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeCause {
    /// The peer reset the connection, or it broke under a write.
    #[error("connection reset")]
    Reset,
    /// The peer closed the connection before the response head was complete.
    #[error("closed {0}")]
    Closed(&'static str),
    /// The peer's proxy did not pass the request on: its application refused the connection
    /// (it is stopping, or not started yet), or it refused the stream. Nothing of the request
    /// reached an application, so it may go to another endpoint.
    #[error("not processed: {0}")]
    Unprocessed(&'static str),
    /// The peer's response does not parse.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// Another I/O error.
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for ExchangeCause {
    fn from(error: io::Error) -> Self {
        if is_reset(error.kind()) {
            Self::Reset
        } else {
            Self::Io(error)
        }
    }
}

/// Whether an I/O error of this kind means the peer reset the connection or it broke.
fn is_reset(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// A failure's cause, for the decisions and records that depend on it (retries, the response
/// flag of metrics and access logs, the reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No config yet.
    NotReady,
    /// No route: the destination is not in the config (any more).
    NoRoute,
    /// No backend with weight.
    NoBackend,
    /// No endpoint.
    NoEndpoint,
    /// TCP connect refused.
    ConnectRefused,
    /// TCP connect timed out.
    ConnectTimeout,
    /// TCP connect failed otherwise.
    ConnectFailed,
    /// TLS handshake failed (or no identity of our own to make one with).
    Tls,
    /// The peer is not who the config says.
    IdentityMismatch,
    /// The connection was reset or closed before the response head.
    Reset,
    /// The peer's proxy said its application did not get the request (stopping, not started)
    /// or refused the stream.
    Unprocessed,
    /// The peer's response was malformed, or HTTP failed otherwise.
    BadResponse,
    /// The request timeout passed.
    Timeout,
    /// An abort fault.
    Fault,
    /// The client's request was malformed.
    BadRequest,
    /// The client went away.
    ClientGone,
    /// Authorization denied the request.
    Denied,
    /// The rate limit refused the request.
    RateLimited,
    /// The circuit breaker refused the request.
    Overloaded,
}

impl Kind {
    /// The Envoy/Istio response flag for this cause (`response_flags` of Istio's metrics and
    /// access log).
    pub fn response_flag(self) -> &'static str {
        match self {
            Self::NotReady | Self::NoRoute | Self::NoBackend => "NR",
            Self::NoEndpoint => "UH",
            Self::ConnectRefused | Self::ConnectTimeout | Self::ConnectFailed => "UF",
            Self::Tls | Self::IdentityMismatch => "UF",
            Self::Reset => "UC",
            Self::Unprocessed => "UF",
            Self::BadResponse => "UPE",
            Self::Timeout => "UT",
            Self::Fault => "FI",
            Self::BadRequest => "DPE",
            Self::ClientGone => "DC",
            // Envoy has no flag for an RBAC denial (its response details say
            // `rbac_access_denied`): Braid names it so.
            Self::Denied => "RBAC",
            Self::RateLimited => "RL",
            Self::Overloaded => "UO",
        }
    }
}

impl Failure {
    /// Its cause.
    pub fn kind(&self) -> Kind {
        match self {
            Self::NotReady => Kind::NotReady,
            Self::Gone(_) => Kind::NoRoute,
            Self::NoBackend(_) => Kind::NoBackend,
            Self::NoEndpoints { .. } => Kind::NoEndpoint,
            Self::Upstream(error) => error.kind(),
            Self::Timeout(_) => Kind::Timeout,
            Self::Abort(_) => Kind::Fault,
            Self::BadRequest(_) => Kind::BadRequest,
            Self::ClientGone => Kind::ClientGone,
            Self::Denied { .. } => Kind::Denied,
            Self::RateLimited(_) => Kind::RateLimited,
            Self::Overloaded { .. } => Kind::Overloaded,
        }
    }

    /// The HTTP status the proxy answers it with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotReady
            | Self::NoBackend(_)
            | Self::NoEndpoints { .. }
            | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Gone(_) | Self::Upstream(_) | Self::ClientGone => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Denied { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Abort(status) => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// The failure of sending a request with hyper's client: the client's when reading the
    /// client's request body failed (a malformed chunk, a body cut short), else the peer's.
    pub fn of_upstream(error: UpstreamError) -> Self {
        match &error {
            UpstreamError::Http(e) if request_body_failed(e) => Self::BadRequest(e.to_string()),
            _ => Self::from(error),
        }
    }
}

impl From<UpstreamError> for Failure {
    /// The upstream failure, but the circuit breaker's refusal of a connection: that is the
    /// destination's overload, whatever layer found it.
    fn from(error: UpstreamError) -> Self {
        match error {
            UpstreamError::Overloaded { name, limit } => Self::Overloaded { name, limit },
            error => Self::Upstream(error),
        }
    }
}

impl UpstreamError {
    /// Its cause.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Connect { cause, .. } => match cause {
                ConnectCause::Refused => Kind::ConnectRefused,
                ConnectCause::TimedOut(_) => Kind::ConnectTimeout,
                ConnectCause::Other(_) => Kind::ConnectFailed,
            },
            Self::Handshake { .. } | Self::NoIdentity => Kind::Tls,
            Self::WrongPeer { .. } => Kind::IdentityMismatch,
            Self::Overloaded { .. } => Kind::Overloaded,
            Self::Http(error) if never_sent(error) => Kind::Unprocessed,
            Self::Http(error) if closed_before_response(error) => Kind::Reset,
            Self::Http(_) => Kind::BadResponse,
            Self::Exchange { cause, .. } => match cause {
                ExchangeCause::Reset | ExchangeCause::Closed(_) => Kind::Reset,
                ExchangeCause::Unprocessed(_) => Kind::Unprocessed,
                ExchangeCause::Malformed(_) | ExchangeCause::Io(_) => Kind::BadResponse,
            },
        }
    }
}

/// Whether hyper's client failed because the request body it was sending did: that body is
/// the application's request as hyper's server reads it, so its error is a hyper error too.
fn request_body_failed(error: &hyper::Error) -> bool {
    std::error::Error::source(error).is_some_and(|cause| cause.is::<hyper::Error>())
}

/// Whether hyper's client never sent the request: it was cancelled on a connection that
/// closed first, or the peer refused its HTTP/2 stream (`REFUSED_STREAM`, which a server sends
/// for streams past its GOAWAY: RFC 9113 §8.7 says they were not processed).
pub fn never_sent(error: &hyper::Error) -> bool {
    if error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = cause.source();
    }
    false
}

/// Whether the connection was closed under a request before any response came.
pub fn closed_before_response(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() || error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return is_reset(io.kind());
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "10.244.0.7:8080".parse().expect("addr")
    }

    #[test]
    fn causes_are_kept_through_the_layers() {
        let refused = Failure::from(UpstreamError::Connect {
            addr: addr(),
            cause: io::Error::from(io::ErrorKind::ConnectionRefused).into(),
        });
        assert_eq!(refused.kind(), Kind::ConnectRefused);
        assert_eq!(
            refused.to_string(),
            "upstream: connect to 10.244.0.7:8080: connection refused"
        );
        let timed_out = Failure::from(UpstreamError::Connect {
            addr: addr(),
            cause: ConnectCause::TimedOut(Duration::from_secs(1)),
        });
        assert_eq!(timed_out.kind(), Kind::ConnectTimeout);
        let reset = Failure::from(UpstreamError::Exchange {
            addr: addr(),
            cause: io::Error::from(io::ErrorKind::ConnectionReset).into(),
        });
        assert_eq!(reset.kind(), Kind::Reset);
        let mismatch = Failure::from(UpstreamError::WrongPeer {
            addr: addr(),
            found: "spiffe://cluster.local/ns/shop/sa/evil".into(),
            expected: "spiffe://cluster.local/ns/shop/sa/payment".into(),
        });
        assert_eq!(mismatch.kind(), Kind::IdentityMismatch);
    }

    #[test]
    fn each_cause_has_its_status_and_response_flag() {
        let cases = [
            (Failure::NotReady, 503, "NR"),
            (
                Failure::NoEndpoints {
                    name: "payment.shop".into(),
                    port: 80,
                },
                503,
                "UH",
            ),
            (Failure::Timeout(Duration::from_millis(250)), 504, "UT"),
            (Failure::Abort(418), 418, "FI"),
            (Failure::BadRequest("bad chunk".into()), 400, "DPE"),
            (Failure::Gone(addr()), 502, "NR"),
            (
                Failure::Upstream(UpstreamError::Exchange {
                    addr: addr(),
                    cause: ExchangeCause::Unprocessed("its application is not listening"),
                }),
                502,
                "UF",
            ),
            (
                Failure::Denied {
                    policy: "shop/payment".into(),
                    reason: Reason::NoAllowRule,
                },
                403,
                "RBAC",
            ),
            (
                Failure::RateLimited(Limited {
                    retry_after: Duration::from_millis(20),
                    scope: crate::telemetry::policy::LimitScope::Pod,
                }),
                429,
                "RL",
            ),
        ];
        for (failure, status, flag) in cases {
            assert_eq!(failure.status().as_u16(), status, "{failure}");
            assert_eq!(failure.kind().response_flag(), flag, "{failure}");
        }
        assert_eq!(
            Failure::Timeout(Duration::from_millis(250)).to_string(),
            "no response within 250 ms"
        );
        assert_eq!(
            Failure::Denied {
                policy: "shop/payment".into(),
                reason: Reason::NoAllowRule
            }
            .to_string(),
            "denied by policy shop/payment: no ALLOW rule matches"
        );
        assert_eq!(
            Failure::Denied {
                policy: "".into(),
                reason: Reason::Default(braid_proxy_config::DefaultAuthorization::Namespace)
            }
            .to_string(),
            "denied by the mesh default: default namespace"
        );
    }
}
