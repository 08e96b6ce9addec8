//! The proxy's shared state ([`context`]), the hot reload of its config and identity
//! ([`reload`]), what a connection keeps of the config between its requests ([`follow`]), and
//! the end of a pod ([`drain`]).

pub mod context;
pub mod drain;
pub mod follow;
pub mod reload;
