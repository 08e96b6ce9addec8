//! `braid-proxy`: Braid's sidecar. It will carry every meshed connection (issue 5). What exists
//! now: its init step, `braid-proxy init`, which the injected `braid-init` container runs to send
//! the pod's TCP traffic through the proxy's ports ([`iptables`]); and, of `braid-proxy run`, the
//! hot reload of `proxy.json` ([`reload`]) and the admin server ([`admin`]). The data path
//! (listeners on 15001 and 15006, mTLS, routing, load balancing) is not written yet.

pub mod admin;
pub mod iptables;
pub mod reload;
