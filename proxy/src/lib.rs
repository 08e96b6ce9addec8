//! `braid-proxy`: Braid's sidecar. `braid-proxy init` (the injected `braid-init` container)
//! sends the pod's TCP traffic through the proxy's ports ([`redirect`]); `braid-proxy run`
//! carries it. The layout follows a connection:
//!
//! - [`listener`]: the outbound (15001) and inbound (15006) listeners and their shared accept
//!   loop; they find the destination behind each connection and its protocol;
//! - [`transport`]: protocol detection, replayed prefixes, deadlines, byte copying;
//! - [`tls`]: workload identities and the mesh's mTLS;
//! - [`pipeline`]: the request driver, with its pure decisions, typed failures, the proxy's own
//!   replies and the record of each request — one order of steps for both directions and both
//!   codecs;
//! - [`h1`] (the HTTP/1.1 fast path and its codec) and [`hyper_glue`] (HTTP/2 and the rest of
//!   HTTP/1 with hyper): the two codecs the driver runs on;
//! - [`upstream`]: connections to peers and to the application, and their pools;
//! - [`policy`]: the compiled routing table and the load balancers;
//! - [`state`]: the shared context and the hot reload of config and identity;
//! - [`telemetry`]: the data path's counters; [`admin`]: the admin server (15020).

pub mod admin;
pub mod cli;
pub mod fuzzing;
pub mod h1;
pub mod hyper_glue;
pub mod listener;
pub mod pipeline;
pub mod policy;
pub mod redirect;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod upstream;
