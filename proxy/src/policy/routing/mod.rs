//! The routing table compiled from a [`ProxyConfig`] when it is loaded (regexes compiled once, an
//! index by address), and the pure decisions made per connection and per request: which
//! destination an original address belongs to, which route a request matches, which weighted
//! backend it goes to.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use braid_proxy_config::{ClientPolicy, Fault, Protocol, ProxyConfig, RouteMatch, StringMatch};
use regex::Regex;

use crate::policy::authz::Authorizer;
use crate::policy::balance::{EndpointRegistry, EndpointStats};
use crate::policy::breaker::{ConnectionLimits, DestinationRegistry, DestinationState};
use crate::policy::rate_limit::RateLimiter;
use crate::policy::retry::RetryRule;
use crate::telemetry::policy::PolicyCounters;

/// A Service port of a destination, found from the address the application dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Index into [`Table::destinations`].
    pub destination: usize,
    /// The Service port.
    pub port: u16,
}

/// An endpoint ready for requests: where it is, who it must be, and its live numbers (shared
/// with every config that lists the same address, so that they survive reloads).
#[derive(Debug)]
pub struct CompiledEndpoint {
    /// Its address.
    pub addr: SocketAddr,
    /// The SPIFFE ID it must prove; `None`: not meshed, reached in plaintext.
    pub identity: Option<String>,
    /// Its load and latency.
    pub stats: Arc<EndpointStats>,
    /// Its destination's connection limits (none: the application on loopback).
    pub limits: Option<Arc<ConnectionLimits>>,
}

/// A Service port of a destination.
#[derive(Debug)]
pub struct CompiledPort {
    /// The Service port.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its endpoints.
    pub endpoints: Vec<Arc<CompiledEndpoint>>,
}

/// A destination ready for requests.
#[derive(Debug)]
pub struct CompiledDestination {
    /// `<service>.<namespace>`.
    pub name: String,
    /// How clients call it.
    pub policy: ClientPolicy,
    /// Its Service ports (a few: a scan beats hashing).
    pub ports: Vec<CompiledPort>,
    /// Its routes, in order.
    pub routes: Vec<CompiledRoute>,
    /// The round-robin counter of its balancer.
    pub cursor: AtomicUsize,
    /// Its retry rule (a route's own wins), compiled.
    pub retries: Option<Arc<RetryRule>>,
    /// Its live numbers (circuit breaker, retry budget), shared across reloads.
    pub state: Arc<DestinationState>,
}

/// A route with compiled matches.
#[derive(Debug)]
pub struct CompiledRoute {
    matches: Vec<CompiledMatch>,
    /// `(destination index, port override, weight)`.
    pub backends: Vec<(usize, Option<u16>, u32)>,
    /// Per-request timeout.
    pub timeout_ms: Option<u64>,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// The route's own retry rule, if it sets one.
    pub retries: Option<Arc<RetryRule>>,
}

#[derive(Debug)]
struct CompiledMatch {
    path: Option<Matcher>,
    method: Option<String>,
    headers: Vec<(String, Matcher)>,
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    fn compile(rule: &StringMatch, field: &str) -> Result<Self, String> {
        Ok(match rule {
            StringMatch::Exact(value) => Self::Exact(value.clone()),
            StringMatch::Prefix(value) => Self::Prefix(value.clone()),
            // Anchored: a regex matches the whole value, as in the Gateway API.
            StringMatch::Regex(pattern) => Self::Regex(
                Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| format!("{field}: invalid regex {pattern:?}: {e}"))?,
            ),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(expected) => value == expected,
            // A path prefix matches whole segments: `/api` matches `/api/x`, not `/apix`.
            Self::Prefix(prefix) => {
                value.starts_with(prefix.as_str())
                    && (prefix.ends_with('/')
                        || value.len() == prefix.len()
                        || value.as_bytes()[prefix.len()] == b'/')
            }
            Self::Regex(regex) => regex.is_match(value),
        }
    }
}

/// The request facts that routes match on.
pub struct RequestFacts<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The path without the query.
    pub path: &'a str,
    /// Header value by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
}

impl CompiledMatch {
    fn compile(rule: &RouteMatch, at: &str) -> Result<Self, String> {
        Ok(Self {
            path: rule
                .path
                .as_ref()
                .map(|p| Matcher::compile(p, &format!("{at}.path")))
                .transpose()?,
            method: rule.method.clone(),
            headers: rule
                .headers
                .iter()
                .enumerate()
                .map(|(h, header)| {
                    Matcher::compile(&header.value, &format!("{at}.headers[{h}].value"))
                        .map(|m| (header.name.to_ascii_lowercase(), m))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    fn matches(&self, request: &RequestFacts<'_>) -> bool {
        self.path.as_ref().is_none_or(|p| p.matches(request.path))
            && self
                .method
                .as_ref()
                .is_none_or(|m| m.eq_ignore_ascii_case(request.method))
            && self
                .headers
                .iter()
                .all(|(name, m)| (request.header)(name).is_some_and(|v| m.matches(v)))
    }
}

/// The compiled config.
#[derive(Debug)]
pub struct Table {
    /// Every destination, in config order (a request holds its backend's while it is under
    /// way, not the whole config).
    pub destinations: Vec<Arc<CompiledDestination>>,
    by_addr: HashMap<SocketAddr, Target>,
    opaque_ports: HashSet<u16>,
    /// Whether the workload's inbound policy decides on requests (HTTP fields in its
    /// authorization rules, or a rate limit), so that HTTP/2 must be parsed too.
    inbound_l7: bool,
    /// Who may call the workload.
    pub authorizer: Authorizer,
    /// The workload's rate limit, if it has one.
    pub rate_limiter: Option<RateLimiter>,
}

/// How the inbound side serves connections to one of the workload's ports, decided when the
/// config is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundParsing {
    /// Bytes copied to the application (an opaque port).
    Opaque,
    /// HTTP/1.1 served request by request (the fast path: about 1.15× the CPU of copying);
    /// HTTP/2 copied (served with hyper it costs several times as much: ARCHITECTURE.md).
    Http1,
    /// HTTP/1.1 and HTTP/2 served request by request: the policy needs every request.
    Http,
}

impl Table {
    /// Compiles `config` with endpoint numbers of their own; a regex that does not compile
    /// refuses the config, naming its field.
    pub fn compile(config: &ProxyConfig) -> Result<Self, String> {
        Self::compile_with(config, &Registries::default())
    }

    /// Compiles `config`, each endpoint's and destination's numbers and the policy's counters
    /// taken from `live` (so that what the previous config counted goes on).
    pub fn compile_with(config: &ProxyConfig, live: &Registries) -> Result<Self, String> {
        let (registry, counters) = (&live.endpoints, &live.policy);
        let index: HashMap<&str, usize> = config
            .destinations
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i))
            .collect();
        let inbound = &config.inbound;
        let authorizer = Authorizer::compile(inbound, &config.workload.namespace, counters);
        let policy = inbound.policy.as_deref().unwrap_or_default();
        let mut table = Self {
            destinations: Vec::new(),
            by_addr: HashMap::new(),
            opaque_ports: config.opaque_ports.iter().copied().collect(),
            inbound_l7: inbound.rate_limit.is_some() || authorizer.reads_requests(),
            authorizer,
            rate_limiter: inbound
                .rate_limit
                .as_ref()
                .map(|limit| RateLimiter::compile(limit, policy, counters)),
        };
        for (d, destination) in config.destinations.iter().enumerate() {
            let state = live.destinations.state(&destination.name);
            let breaker = &destination.policy.circuit_breaker;
            let limits = Arc::new(ConnectionLimits {
                name: destination.name.clone(),
                max_connections: breaker.max_connections,
                max_pending: breaker.max_pending_requests,
                state: state.clone(),
            });
            let mut ports = Vec::new();
            for port in &destination.ports {
                let target = Target {
                    destination: d,
                    port: port.port,
                };
                for ip in &destination.cluster_ips {
                    table
                        .by_addr
                        .insert(SocketAddr::new(*ip, port.port), target);
                }
                // Calls straight to a pod IP are meshed too.
                for endpoint in &port.endpoints {
                    table
                        .by_addr
                        .entry(SocketAddr::new(endpoint.ip, endpoint.port))
                        .or_insert(target);
                }
                if ports.iter().any(|p: &CompiledPort| p.port == port.port) {
                    continue;
                }
                ports.push(CompiledPort {
                    port: port.port,
                    protocol: port.protocol,
                    endpoints: port
                        .endpoints
                        .iter()
                        .map(|e| {
                            let addr = SocketAddr::new(e.ip, e.port);
                            Arc::new(CompiledEndpoint {
                                addr,
                                identity: e.identity.clone(),
                                stats: registry.stats(addr),
                                limits: Some(limits.clone()),
                            })
                        })
                        .collect(),
                });
            }
            let mut routes = Vec::new();
            for (r, route) in destination.routes.iter().enumerate() {
                let at = format!("destinations[{d}].routes[{r}]");
                routes.push(CompiledRoute {
                    matches: route
                        .matches
                        .iter()
                        .enumerate()
                        .map(|(m, rule)| {
                            CompiledMatch::compile(rule, &format!("{at}.matches[{m}]"))
                        })
                        .collect::<Result<_, _>>()?,
                    backends: route
                        .backends
                        .iter()
                        .filter_map(|b| {
                            index
                                .get(b.destination.as_str())
                                .map(|&i| (i, b.port, b.weight))
                        })
                        .collect(),
                    timeout_ms: route.timeout_ms,
                    fault: route
                        .fault
                        .clone()
                        .or_else(|| destination.policy.fault.clone()),
                    retries: route
                        .retries
                        .as_ref()
                        .map(|r| Arc::new(RetryRule::compile(r))),
                });
            }
            table.destinations.push(Arc::new(CompiledDestination {
                name: destination.name.clone(),
                policy: destination.policy.clone(),
                ports,
                routes,
                cursor: AtomicUsize::new(0),
                retries: destination
                    .policy
                    .retries
                    .as_ref()
                    .map(|r| Arc::new(RetryRule::compile(r))),
                state,
            }));
        }
        Ok(table)
    }

    /// The meshed destination behind an address the application dialled, if any.
    pub fn lookup(&self, addr: SocketAddr) -> Option<Target> {
        self.by_addr.get(&addr).copied()
    }

    /// How the inbound side serves connections to the workload's `port`.
    pub fn inbound(&self, port: u16) -> InboundParsing {
        if self.opaque_ports.contains(&port) {
            InboundParsing::Opaque
        } else if self.inbound_l7 {
            InboundParsing::Http
        } else {
            InboundParsing::Http1
        }
    }

    /// Whether connections to `target` skip protocol detection.
    pub fn is_opaque(&self, target: Target) -> bool {
        self.opaque_ports.contains(&target.port)
            || self
                .port(target)
                .is_some_and(|port| port.protocol == Protocol::Tcp)
    }

    /// The first route of the target's destination that matches, if any, with its index.
    pub fn route(
        &self,
        target: Target,
        request: &RequestFacts<'_>,
    ) -> Option<(usize, &CompiledRoute)> {
        self.destinations[target.destination]
            .routes
            .iter()
            .enumerate()
            .find(|(_, route)| {
                route.matches.is_empty() || route.matches.iter().any(|m| m.matches(request))
            })
    }

    /// The address of every endpoint of every destination.
    pub fn endpoint_addrs(&self) -> HashSet<SocketAddr> {
        self.destinations
            .iter()
            .flat_map(|d| &d.ports)
            .flat_map(|port| &port.endpoints)
            .map(|e| e.addr)
            .collect()
    }

    /// The target's Service port.
    fn port(&self, target: Target) -> Option<&CompiledPort> {
        self.destinations[target.destination].port(target.port)
    }

    /// The endpoints of a destination's port.
    pub fn endpoints(&self, target: Target) -> &[Arc<CompiledEndpoint>] {
        self.destinations[target.destination].endpoints(target.port)
    }

    /// The names of every destination.
    pub fn destination_names(&self) -> HashSet<&str> {
        self.destinations.iter().map(|d| d.name.as_str()).collect()
    }
}

impl CompiledDestination {
    /// Its Service port `port`.
    fn port(&self, port: u16) -> Option<&CompiledPort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The endpoints of its Service port `port`.
    pub fn endpoints(&self, port: u16) -> &[Arc<CompiledEndpoint>] {
        self.port(port)
            .map_or(&[], |port| port.endpoints.as_slice())
    }
}

/// The live numbers compiled configs hold handles to, kept across reloads.
#[derive(Debug, Default)]
pub struct Registries {
    /// Each endpoint's load, latency and outlier state, by address.
    pub endpoints: EndpointRegistry,
    /// Each destination's circuit breaker and retry budget, by name.
    pub destinations: DestinationRegistry,
    /// The inbound policy's counters.
    pub policy: PolicyCounters,
}

impl CompiledRoute {
    /// A route that matches every request and sends it to `backends`, with no timeout, fault
    /// or retry rule of its own (for tests of the decisions).
    #[cfg(test)]
    pub fn with_backends(backends: Vec<(usize, Option<u16>, u32)>) -> Self {
        Self {
            matches: Vec::new(),
            backends,
            timeout_ms: None,
            fault: None,
            retries: None,
        }
    }

    /// The backend for a roll in `0..total weight` (the caller draws it), as a target whose port
    /// is the backend's own or else the port the application dialled.
    pub fn backend(&self, roll: u32, dialled_port: u16) -> Option<Target> {
        self.backend_except(roll, dialled_port, None)
    }

    /// [`Self::backend`] among the backends whose destination is not `skip` (the roll is in
    /// `0..`[`Self::total_weight_except`]).
    pub fn backend_except(
        &self,
        roll: u32,
        dialled_port: u16,
        skip: Option<usize>,
    ) -> Option<Target> {
        let mut left = roll;
        for &(destination, port, weight) in self.backends.iter().filter(|b| Some(b.0) != skip) {
            if left < weight {
                return Some(Target {
                    destination,
                    port: port.unwrap_or(dialled_port),
                });
            }
            left -= weight;
        }
        None
    }

    /// The sum of the backends' weights.
    pub fn total_weight(&self) -> u32 {
        self.total_weight_except(None)
    }

    /// The sum of the weights of the backends whose destination is not `skip`.
    pub fn total_weight_except(&self, skip: Option<usize>) -> u32 {
        self.backends
            .iter()
            .filter(|b| Some(b.0) != skip)
            .map(|b| b.2)
            .sum()
    }
}

#[cfg(test)]
mod tests;
