//! Counters of the inbound policy's decisions: authorization outcomes by policy, rule and
//! reason, and rate-limited requests. Compiled configs hold handles to them (taken from
//! [`PolicyCounters`] by their labels, so that a reload keeps counting where the last config
//! stopped); the hot path only bumps an atomic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What became of an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed.
    Allow = 0,
    /// Refused.
    Deny = 1,
    /// Denied by the rules, let through by dry-run mode.
    WouldDeny = 2,
}

const OUTCOMES: [&str; 3] = ["allow", "deny", "would_deny"];
const PROTOCOLS: [&str; 2] = ["http", "tcp"];

/// The outcomes of one (policy, rule, reason), for HTTP requests and TCP connections.
#[derive(Debug, Default)]
pub struct AuthzCounters {
    counts: [[AtomicU64; 3]; 2],
}

impl AuthzCounters {
    /// Counts an outcome of an HTTP request (`http`) or a TCP connection.
    pub fn count(&self, http: bool, outcome: Outcome) {
        self.counts[usize::from(!http)][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many outcomes were counted.
    pub fn get(&self, http: bool, outcome: Outcome) -> u64 {
        self.counts[usize::from(!http)][outcome as usize].load(Ordering::Relaxed)
    }
}

/// Where rate-limited requests are counted: which bucket ran dry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitScope {
    /// The pod's.
    Pod,
    /// A caller's own (`perIdentity`).
    Identity,
}

type AuthzKey = (String, String, &'static str);

/// Every policy counter, by label, for as long as the proxy runs.
#[derive(Debug, Default)]
pub struct PolicyCounters {
    authz: Mutex<BTreeMap<AuthzKey, Arc<AuthzCounters>>>,
    limited: Mutex<BTreeMap<(String, LimitScope), Arc<AtomicU64>>>,
}

impl PolicyCounters {
    /// The counters of `policy`'s decisions by `rule` (its index, if a rule decided) for the
    /// reason labelled `reason` (taken when a config is compiled).
    pub fn authz(
        &self,
        policy: &str,
        rule: Option<usize>,
        reason: &'static str,
    ) -> Arc<AuthzCounters> {
        let rule = rule.map(|r| r.to_string()).unwrap_or_default();
        let key = (policy.to_string(), rule, reason);
        let mut map = self.authz.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().clone()
    }

    /// The counter of requests `policy`'s rate limit refused in `scope`.
    pub fn limited(&self, policy: &str, scope: LimitScope) -> Arc<AtomicU64> {
        let mut map = self.limited.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((policy.to_string(), scope)).or_default().clone()
    }

    /// Appends the Prometheus text of every counter to `out`.
    pub fn render(&self, out: &mut String) {
        let name = "braid_proxy_inbound_authz_total";
        let _ = writeln!(
            out,
            "# HELP {name} Inbound authorization decisions (requests for http, connections for \
             tcp) by policy, rule and reason; would_deny: denied in dry-run mode, let through.\n\
             # TYPE {name} counter"
        );
        let authz = self.authz.lock().unwrap_or_else(|e| e.into_inner());
        for ((policy, rule, reason), counters) in authz.iter() {
            for (p, protocol) in PROTOCOLS.iter().enumerate() {
                for (o, outcome) in OUTCOMES.iter().enumerate() {
                    let count = counters.counts[p][o].load(Ordering::Relaxed);
                    if count > 0 {
                        let _ = writeln!(
                            out,
                            "{name}{{protocol=\"{protocol}\",decision=\"{outcome}\",policy=\"{policy}\",rule=\"{rule}\",reason=\"{reason}\"}} {count}"
                        );
                    }
                }
            }
        }
        drop(authz);
        let name = "braid_proxy_inbound_rate_limited_total";
        let _ = writeln!(
            out,
            "# HELP {name} Inbound requests answered 429 by the rate limit, by the bucket that ran dry.\n\
             # TYPE {name} counter"
        );
        let limited = self.limited.lock().unwrap_or_else(|e| e.into_inner());
        for ((policy, scope), count) in limited.iter() {
            let scope = match scope {
                LimitScope::Pod => "pod",
                LimitScope::Identity => "identity",
            };
            let _ = writeln!(
                out,
                "{name}{{policy=\"{policy}\",scope=\"{scope}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
    }
}
