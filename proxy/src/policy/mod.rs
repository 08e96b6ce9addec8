//! What the config decides, compiled for the data path: the routing table ([`routing`]) and the
//! load balancers with each endpoint's live numbers ([`balance`]).

pub mod balance;
pub mod routing;
