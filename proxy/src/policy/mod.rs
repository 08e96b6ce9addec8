//! What the config decides, compiled for the data path: the routing table ([`routing`]), the
//! load balancers with each endpoint's live numbers ([`balance`]), and the inbound policy:
//! authorization ([`authz`]) and rate limits ([`rate_limit`]).

pub mod authz;
pub mod balance;
pub mod rate_limit;
pub mod routing;
