//! `braid-proxy`: Braid's sidecar. `braid-proxy init` (the injected `braid-init` container)
//! sends the pod's TCP traffic through the proxy's ports ([`iptables`]); `braid-proxy run` carries
//! it: the outbound listener ([`outbound`]) finds the meshed destination behind each connection
//! ([`routing`]), detects its protocol ([`detect`]), routes and balances HTTP requests
//! ([`h1_forward`], [`http`], [`balance`]) and connects to the peer's proxy over mTLS ([`upstream`],
//! [`identity`]); the inbound listener ([`inbound`]) terminates mTLS and hands the bytes to the
//! application over loopback. Config and identity are hot-reloaded ([`reload`]); the admin server
//! ([`admin`]) answers probes and serves [`metrics`].

pub mod admin;
pub mod balance;
pub mod context;
pub mod deadline;
pub mod detect;
pub mod fuzzing;
pub mod h1_forward;
pub mod h1_message;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod iptables;
pub mod listen;
pub mod metrics;
pub mod outbound;
pub mod pipeline;
pub mod prefixed;
pub mod reload;
pub mod routing;
pub mod upstream;
