//! What the config decides, compiled for the data path: the routing table ([`routing`]), the
//! load balancers with each endpoint's live numbers ([`balance`]), and the inbound policy:
//! authorization ([`authz`]) and rate limits ([`rate_limit`]); and the client side's
//! resilience: retries and their budget ([`retry`]), outlier ejection ([`outlier`]), the
//! circuit breaker with each destination's live numbers ([`breaker`]).

pub mod authz;
pub mod balance;
pub mod breaker;
pub mod outlier;
pub mod rate_limit;
pub mod retry;
pub mod routing;
