//! The proxy's shared state ([`context`]) and the hot reload of its config and identity
//! ([`reload`]).

pub mod context;
pub mod reload;
