//! The mesh's mTLS: workload identities, their certificates and the SPIFFE ID checks
//! ([`identity`]).

pub mod identity;
