//! `braid-webhook`: the mutating admission webhook that puts pods in the mesh. For each new pod
//! in a namespace labelled `braid.dev/inject=enabled` the API server sends an AdmissionReview;
//! the answer is a JSON patch that adds the `braid-init` init container (iptables), the
//! `braid-proxy` sidecar, the config volume (the workload's `proxy.json` and the namespace's
//! `destinations.json`, projected together), the identity volume and the
//! `braid.dev/workload` label. The same pure function ([`inject::inject`]) backs the
//! `braid-webhook inject -f` command for GitOps users.

pub mod cli;
pub mod inject;
pub mod probes;
pub mod review;
pub mod server;
pub mod tls;
