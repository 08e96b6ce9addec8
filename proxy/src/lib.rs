//! `braid-proxy`: Braid's sidecar. It will carry every meshed connection (issue 5); what exists
//! now is its init step, `braid-proxy init`, which the injected `braid-init` container runs to
//! send the pod's TCP traffic through the proxy's ports (see [`iptables`]).

pub mod iptables;
