//! MeshRoutes: each route's rules are attached to the destination of its Service, with backends
//! resolved to other destinations of the same document.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use braid_api::{MatchType, MeshRoute};
use braid_proxy_config::{self as config, Destination};

use super::convert;
use super::destinations::destination_name;
use super::{ObjectKey, object_key};

/// What became of a MeshRoute.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteOutcome {
    /// `Err((reason, message))` when the route cannot take effect as written.
    pub accepted: Result<(), (String, String)>,
    /// The first rule's backends, `payment-v1=80,payment-v2=20`.
    pub backends: String,
    /// Whether any of its rules reached a proxy.
    pub in_effect: bool,
}

/// Attaches every route to its destination and reports each route's outcome.
pub fn apply_routes(
    routes: &[Arc<MeshRoute>],
    destinations: &mut [Destination],
) -> BTreeMap<ObjectKey, RouteOutcome> {
    let names: BTreeSet<String> = destinations.iter().map(|d| d.name.clone()).collect();
    let mut routes: Vec<&MeshRoute> = routes.iter().map(|r| r.as_ref()).collect();
    routes.sort_by_key(|r| object_key(&r.metadata));
    let mut outcomes = BTreeMap::new();
    for route in routes {
        let key = object_key(&route.metadata);
        let namespace = &key.0;
        let backends = route.spec.rules.first().map_or_else(String::new, |rule| {
            rule.backends
                .iter()
                .map(|b| format!("{}={}", b.service, b.weight))
                .collect::<Vec<_>>()
                .join(",")
        });
        let target = destination_name(namespace, &route.spec.service);
        let mut in_effect = false;
        let outcome = match convert_rules(route, namespace, &names) {
            Err(error) => Err(("InvalidSpec".to_owned(), error)),
            Ok(_) if !names.contains(&target) => Err((
                "ServiceNotFound".to_owned(),
                format!(
                    "Service {namespace}/{} does not exist or is not meshed",
                    route.spec.service
                ),
            )),
            Ok((rules, missing)) => {
                if let Some(destination) = destinations.iter_mut().find(|d| d.name == target) {
                    // Several routes for one Service: the first by name wins, as Gateway API does.
                    if destination.routes.is_empty() && !rules.is_empty() {
                        destination.routes = rules;
                        in_effect = true;
                    }
                }
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err((
                        "BackendNotFound".to_owned(),
                        format!(
                            "backend Services do not exist in {namespace}: {}",
                            missing.join(", ")
                        ),
                    ))
                }
            }
        };
        outcomes.insert(
            key,
            RouteOutcome {
                accepted: outcome,
                backends,
                in_effect,
            },
        );
    }
    outcomes
}

/// The route's rules in proxy form, and the backend Services that do not exist (left out).
fn convert_rules(
    route: &MeshRoute,
    namespace: &str,
    names: &BTreeSet<String>,
) -> Result<(Vec<config::Route>, Vec<String>), String> {
    let mut missing = Vec::new();
    let mut rules = Vec::new();
    for (index, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("rules[{index}]");
        let mut backends = Vec::new();
        for backend in &rule.backends {
            let destination = destination_name(namespace, &backend.service);
            if names.contains(&destination) {
                backends.push(config::WeightedBackend {
                    destination,
                    port: backend.port.and_then(|p| u16::try_from(p).ok()),
                    weight: backend.weight,
                });
            } else {
                missing.push(backend.service.clone());
            }
        }
        if backends.iter().all(|b| b.weight == 0) {
            continue; // nothing left to send to: the rule is dropped, the Service itself serves
        }
        rules.push(config::Route {
            matches: rule.matches.iter().map(route_match).collect(),
            backends,
            timeout_ms: rule
                .timeout
                .as_ref()
                .map(|t| {
                    braid_api::duration::parse(t)
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                })
                .transpose()
                .map_err(|e| format!("spec.{at}.timeout: {e}"))?,
            retries: rule
                .retries
                .as_ref()
                .map(|r| convert::retries(r, &format!("{at}.retries")))
                .transpose()
                .map_err(|e| e.to_string())?,
            fault: rule
                .fault
                .as_ref()
                .map(|f| convert::fault(f, &format!("{at}.fault")))
                .transpose()
                .map_err(|e| e.to_string())?,
        });
    }
    missing.sort();
    missing.dedup();
    Ok((rules, missing))
}

fn route_match(m: &braid_api::RouteMatch) -> config::RouteMatch {
    config::RouteMatch {
        path: m
            .path
            .as_ref()
            .map(|p| string_match(p.match_type, &p.value)),
        method: m.method.map(|method| {
            serde_json::to_value(method)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        }),
        headers: m
            .headers
            .iter()
            .map(|h| config::HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: string_match(h.match_type, &h.value),
            })
            .collect(),
    }
}

fn string_match(match_type: MatchType, value: &str) -> config::StringMatch {
    match match_type {
        MatchType::Exact => config::StringMatch::Exact(value.into()),
        MatchType::PathPrefix => config::StringMatch::Prefix(value.into()),
        MatchType::RegularExpression => config::StringMatch::Regex(value.into()),
    }
}
