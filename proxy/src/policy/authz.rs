//! Authorization: whether a caller may make a request (or open a TCP connection) to this
//! workload. The rules of `proxy.json`'s `inbound.authorization` are compiled when a config is
//! loaded ([`Authorizer::compile`]); [`Authorizer::decide`] is then a pure function of the rules
//! and the [`Access`] — a few comparisons, no allocation, no lock.
//!
//! The order is Istio's: a matching `DENY` rule denies; else, when the list has `ALLOW` rules,
//! one must match; an empty list denies everything. Where the workload has no rules (or only
//! `DENY` rules, none of which matched), the Mesh's default decides ([`DefaultAuthorization`]).
//! A caller without an mTLS identity (plaintext) matches no rule that names callers. A rule with
//! HTTP fields (paths, methods) never allows a TCP connection, and as a `DENY` rule denies TCP
//! connections its other fields match: neither way does TCP get past what HTTP may not.

use std::sync::Arc;

use braid_proxy_config::{
    Action, AuthorizationMode, AuthorizationRule, DefaultAuthorization, Inbound,
};

use crate::telemetry::policy::{AuthzCounters, PolicyCounters};

/// A caller proven by its mTLS handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its SPIFFE ID, e.g. `spiffe://cluster.local/ns/shop/sa/order`.
    pub id: String,
    /// The namespace its ID names (`/ns/<namespace>/`), if it names one.
    pub namespace: Option<String>,
}

impl Caller {
    /// The caller of SPIFFE ID `id`.
    pub fn new(id: String) -> Self {
        let namespace = id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once("/ns/"))
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default().to_string())
            .filter(|namespace| !namespace.is_empty());
        Self { id, namespace }
    }
}

/// What is asked: who calls, on which port of the workload, and for HTTP what.
#[derive(Clone, Copy, Debug)]
pub struct Access<'a> {
    /// The caller; `None`: plaintext, no identity.
    pub caller: Option<&'a Caller>,
    /// The workload's port the caller dialled.
    pub port: u16,
    /// The request, for HTTP; `None`: a TCP connection.
    pub http: Option<HttpAccess<'a>>,
}

/// The facts of an HTTP request that rules match.
#[derive(Clone, Copy, Debug)]
pub struct HttpAccess<'a> {
    /// The method, e.g. `POST`.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
}

/// Why a decision went as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The `DENY` rule of this index matched.
    DenyRule(usize),
    /// The `ALLOW` rule of this index matched.
    AllowRule(usize),
    /// There are `ALLOW` rules and none matched.
    NoAllowRule,
    /// The rule list is empty: nothing is allowed.
    NoRules,
    /// The Mesh's default decided.
    Default(DefaultAuthorization),
}

impl Reason {
    /// The metric label of the reason.
    pub fn label(self) -> &'static str {
        match self {
            Self::DenyRule(_) => "deny_rule",
            Self::AllowRule(_) => "allow_rule",
            Self::NoAllowRule => "no_allow_rule",
            Self::NoRules => "no_rules",
            Self::Default(DefaultAuthorization::Allow) => "default_allow",
            Self::Default(DefaultAuthorization::Mesh) => "default_mesh",
            Self::Default(DefaultAuthorization::Namespace) => "default_namespace",
            Self::Default(DefaultAuthorization::Deny) => "default_deny",
        }
    }

    /// The rule's index, if a rule decided.
    pub fn rule(self) -> Option<usize> {
        match self {
            Self::DenyRule(rule) | Self::AllowRule(rule) => Some(rule),
            _ => None,
        }
    }
}

/// A decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the access is allowed.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
}

impl Verdict {
    fn allow(reason: Reason) -> Self {
        Self {
            allowed: true,
            reason,
        }
    }

    fn deny(reason: Reason) -> Self {
        Self {
            allowed: false,
            reason,
        }
    }
}

/// A caller or path condition: a whole value, a prefix (a trailing `*`), or anything (`*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Any value.
    Any,
    /// This value.
    Exact(String),
    /// Values starting with this.
    Prefix(String),
}

impl Pattern {
    /// The pattern `*`, `prefix*` or `exact` stands for.
    pub fn new(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some("") => Self::Any,
            Some(prefix) => Self::Prefix(prefix.to_string()),
            None => Self::Exact(pattern.to_string()),
        }
    }

    /// Whether `value` fits.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => value == exact,
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
        }
    }
}

/// A rule ready to match.
#[derive(Debug)]
struct Rule {
    identities: Vec<Pattern>,
    namespaces: Vec<String>,
    paths: Vec<Pattern>,
    methods: Vec<String>,
    ports: Vec<u16>,
}

impl Rule {
    fn compile(rule: &AuthorizationRule) -> Self {
        Self {
            identities: rule.identities.iter().map(|id| Pattern::new(id)).collect(),
            namespaces: rule.namespaces.clone(),
            paths: rule.paths.iter().map(|path| Pattern::new(path)).collect(),
            methods: rule.methods.clone(),
            ports: rule.ports.clone(),
        }
    }

    fn has_http_fields(&self) -> bool {
        !self.paths.is_empty() || !self.methods.is_empty()
    }

    /// Whether the rule matches `access`; `deny` says how HTTP fields meet a TCP connection.
    /// The caller is looked at first: it tells most rules apart, and costs a length compare
    /// where it differs, so that a request is matched against the paths and methods of the
    /// rules about its caller alone.
    fn matches(&self, access: &Access<'_>, deny: bool) -> bool {
        self.caller_fits(access.caller)
            && (self.ports.is_empty() || self.ports.contains(&access.port))
            && self.request_fits(access.http, deny)
    }

    fn caller_fits(&self, caller: Option<&Caller>) -> bool {
        let Some(caller) = caller else {
            return self.identities.is_empty() && self.namespaces.is_empty();
        };
        (self.identities.is_empty() || self.identities.iter().any(|p| p.matches(&caller.id)))
            && (self.namespaces.is_empty()
                || caller
                    .namespace
                    .as_ref()
                    .is_some_and(|ns| self.namespaces.contains(ns)))
    }

    fn request_fits(&self, http: Option<HttpAccess<'_>>, deny: bool) -> bool {
        match http {
            Some(http) => {
                (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(http.path)))
                    && (self.methods.is_empty()
                        || self
                            .methods
                            .iter()
                            .any(|m| m.eq_ignore_ascii_case(http.method)))
            }
            None => deny || !self.has_http_fields(),
        }
    }
}

/// A rule list, split by action so that each pass reads only its own rules; each rule keeps
/// its index in the list, which names it in reasons and metrics.
#[derive(Debug, Default)]
struct Rules {
    deny: Vec<(usize, Rule)>,
    allow: Vec<(usize, Rule)>,
}

impl Rules {
    fn compile(rules: &[AuthorizationRule]) -> Self {
        let mut compiled = Self::default();
        for (i, rule) in rules.iter().enumerate() {
            let pass = match rule.action {
                Action::Deny => &mut compiled.deny,
                Action::Allow => &mut compiled.allow,
            };
            pass.push((i, Rule::compile(rule)));
        }
        compiled
    }

    fn all(&self) -> impl Iterator<Item = &Rule> {
        self.deny.iter().chain(&self.allow).map(|(_, rule)| rule)
    }
}

/// The workload's authorization, compiled, with handles to the counters of its outcomes.
#[derive(Debug)]
pub struct Authorizer {
    /// The MeshPolicy in force, `namespace/name` (empty: none).
    pub policy: Arc<str>,
    /// Whether decisions are only logged and counted.
    pub dry_run: bool,
    /// `None`: no rules, the default decides.
    rules: Option<Rules>,
    default: DefaultAuthorization,
    own_namespace: String,
    /// Counters by rule (in rule order), then one per other reason.
    rule_counters: Vec<Arc<AuthzCounters>>,
    other_counters: [Arc<AuthzCounters>; 3],
}

impl Authorizer {
    /// Compiles the workload's `inbound` section; counters are taken from `counters` (so that
    /// they survive reloads).
    pub fn compile(inbound: &Inbound, own_namespace: &str, counters: &PolicyCounters) -> Self {
        let policy: Arc<str> = inbound.policy.as_deref().unwrap_or_default().into();
        let rules = inbound.authorization.as_deref().map(Rules::compile);
        let rule_counters = inbound
            .authorization
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, rule)| {
                let reason = match rule.action {
                    Action::Allow => Reason::AllowRule(i),
                    Action::Deny => Reason::DenyRule(i),
                };
                counters.authz(&policy, reason.rule(), reason.label())
            })
            .collect();
        let default = inbound.default_authorization;
        Self {
            dry_run: inbound.authorization_mode == AuthorizationMode::DryRun,
            rules,
            default,
            own_namespace: own_namespace.to_string(),
            rule_counters,
            other_counters: [
                Reason::NoAllowRule,
                Reason::NoRules,
                Reason::Default(default),
            ]
            .map(|reason| counters.authz(&policy, None, reason.label())),
            policy,
        }
    }

    /// Whether every access is allowed whatever it is (no rules, default `allow`): nothing to
    /// decide or count.
    pub fn allows_all(&self) -> bool {
        self.rules.is_none() && self.default == DefaultAuthorization::Allow
    }

    /// Whether the rules look at HTTP fields, so that a connection's requests may be decided
    /// differently from the connection.
    pub fn reads_requests(&self) -> bool {
        self.rules
            .iter()
            .any(|rules| rules.all().any(Rule::has_http_fields))
    }

    /// The decision on `access`.
    pub fn decide(&self, access: &Access<'_>) -> Verdict {
        let Some(rules) = &self.rules else {
            return self.by_default(access);
        };
        if rules.deny.is_empty() && rules.allow.is_empty() {
            return Verdict::deny(Reason::NoRules);
        }
        if let Some((i, _)) = rules
            .deny
            .iter()
            .find(|(_, rule)| rule.matches(access, true))
        {
            return Verdict::deny(Reason::DenyRule(*i));
        }
        if rules.allow.is_empty() {
            return self.by_default(access);
        }
        match rules
            .allow
            .iter()
            .find(|(_, rule)| rule.matches(access, false))
        {
            Some((i, _)) => Verdict::allow(Reason::AllowRule(*i)),
            None => Verdict::deny(Reason::NoAllowRule),
        }
    }

    fn by_default(&self, access: &Access<'_>) -> Verdict {
        let reason = Reason::Default(self.default);
        let allowed = match self.default {
            DefaultAuthorization::Allow => true,
            DefaultAuthorization::Mesh => access.caller.is_some(),
            DefaultAuthorization::Namespace => access
                .caller
                .and_then(|caller| caller.namespace.as_deref())
                .is_some_and(|namespace| namespace == self.own_namespace),
            DefaultAuthorization::Deny => false,
        };
        Verdict { allowed, reason }
    }

    /// The counters of a decision's reason.
    pub fn counters(&self, reason: Reason) -> &AuthzCounters {
        match reason {
            Reason::AllowRule(rule) | Reason::DenyRule(rule) => &self.rule_counters[rule],
            Reason::NoAllowRule => &self.other_counters[0],
            Reason::NoRules => &self.other_counters[1],
            Reason::Default(_) => &self.other_counters[2],
        }
    }
}

#[cfg(test)]
mod tests;
